"""Fixtures of tests/infra (see infra_support.py)."""

import pytest

from infra_support import Terraform, load_cloudbuild, load_terraform


@pytest.fixture(scope="session")
def tf() -> Terraform:
    return load_terraform()


@pytest.fixture(scope="session")
def cloudbuild() -> dict:
    return load_cloudbuild()
