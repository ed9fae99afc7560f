"""Emulator fixtures (a pytest plugin loaded by tests/conftest.py): the official Pub/Sub and
Firestore emulators and fake-gcs-server, started once per test session, only when a test needs them."""
from __future__ import annotations

import uuid

import pytest


@pytest.fixture(scope="session")
def gcp_emulators(tmp_path_factory):
    from jitgate.backends.gcp.emulators import Emulators
    from jitgate.devstack import StackError

    try:
        emulators = Emulators(tmp_path_factory.mktemp("emulators")).start()
    except StackError as exc:
        pytest.fail(f"GCP emulators unavailable: {exc}", pytrace=False)
    yield emulators
    emulators.stop()


@pytest.fixture
def gcp_project(gcp_emulators):
    """A fresh project per test; its Firestore documents, topics, subscriptions and objects are removed after."""
    project = f"t-{uuid.uuid4().hex[:10]}"
    yield project
    gcp_emulators.reset(project, buckets=[f"{project}-jitgate-recordings"])


@pytest.fixture
def gcp_env(gcp_emulators, gcp_project, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\n")
    return {**gcp_emulators.env(gcp_project), "JITGATE_HOME": str(tmp_path), "JITGATE_BACKENDS": "gcp",
            "JITGATE_POLICY": str(policy)}


@pytest.fixture
def gcp_backends(gcp_env):
    from jitgate.backends import open_backends
    from jitgate.settings import Settings

    backends = open_backends(Settings.from_env(gcp_env))
    yield backends
    backends.close()
