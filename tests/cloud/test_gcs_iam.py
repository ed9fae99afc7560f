"""The recording path with exactly the Cloud Storage permissions infra/ grants.

The broker uploads chunks and the finalize function seals them, each through the
permission-enforcing proxy acting as its own service account (grants read from infra/).
"""
from __future__ import annotations

import json

import pytest
from google.api_core import exceptions as gexc

from jitgate.backends.gcp import GcsRecordingStore
from tests.cloud import iam_model
from tests.cloud.gcs_iam import GcsIamProxy, condition_holds

EVENTS = [{"seq": 0, "ts": 1.0, "type": "session.start", "target": "demo", "kind": "postgres",
           "principal": {"username": "alice@example.com", "groups": ["sre"]}},
          {"seq": 1, "ts": 2.0, "type": "statement", "text": "SELECT 1"},
          {"seq": 2, "ts": 3.0, "type": "session.end", "reason": "client closed"}]
DATA = b"".join(json.dumps(e).encode() + b"\n" for e in EVENTS)


def refused(proxy) -> list[str]:
    """Refusals that matter. google-cloud-storage also reads bucket metadata in the background
    for its telemetry and caches a fallback on 403 (_bucket_metadata_cache.py): as in production,
    where no jitgate account holds storage.buckets.get, that refusal is harmless."""
    return [d for d in proxy.denied if "storage.buckets.get" not in d]


@pytest.fixture
def bucket(gcp_emulators, gcp_project, monkeypatch):
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcp_emulators.env()["STORAGE_EMULATOR_HOST"])
    name = f"{gcp_project}-jitgate-recordings"
    storage.Client(project=gcp_project).create_bucket(name)
    return name


@pytest.fixture
def acting_as(gcp_emulators, gcp_project, bucket, monkeypatch):
    """acting_as(identity) -> (GcsRecordingStore through a proxy with that identity's grants, proxy)."""
    proxies = []

    def make(identity: str):
        grants = iam_model.bucket_grants(identity, {"recordings": bucket})
        proxy = GcsIamProxy(gcp_emulators.env()["STORAGE_EMULATOR_HOST"], grants, identity=identity).start()
        proxies.append(proxy)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        store = GcsRecordingStore(bucket, gcp_project, retry_deadline=2.0)
        store.bucket  # the client binds to the proxy now
        return store, proxy

    yield make
    for proxy in proxies:
        proxy.stop()


def test_broker_uploads_chunks_with_its_grants_and_reads_nothing_else(acting_as):
    broker, proxy = acting_as("broker")
    broker.put_chunk("s1", 0, DATA[:60])
    broker.put_chunk("s1", 0, DATA[:60])  # re-upload after a crash: compared, not overwritten
    broker.put_chunk("s1", 0, DATA[:90])  # more bytes since: a continuation object
    broker.put_chunk("s1", 1, DATA[90:])
    assert broker.get_chunk("s1", 0) == DATA[:90]
    assert not refused(proxy), refused(proxy)
    finalize, fproxy = acting_as("fn:finalize_recording")
    finalize.put_object("s1", "recording.jsonl", DATA)
    # The broker can neither read a sealed object nor delete or overwrite anything.
    with pytest.raises(gexc.Forbidden):
        broker.bucket.blob("s1/recording.jsonl").download_as_bytes()
    with pytest.raises(gexc.Forbidden):
        broker.bucket.blob("s1/chunks/000000.jsonl").delete()
    with pytest.raises(gexc.Forbidden):
        broker.bucket.blob("s1/chunks/000001.jsonl").upload_from_string(b"forged\n")
    assert len(refused(proxy)) == 3
    # Nor can it seal a session before finalize does (a forged recording, and the real seal blocked).
    for name in ("s2/recording.jsonl", "s2/manifest.json", "s2/chunks.jsonl", "ledger/s2.json"):
        with pytest.raises(gexc.Forbidden):
            broker.bucket.blob(name).upload_from_string(b"{}\n", if_generation_match=0)
    assert len(refused(proxy)) == 7


def test_finalize_seals_with_its_grants(acting_as, gcp_env):
    from jitgate.backends import open_backends
    from jitgate.recording.finalize import finalize_session
    from jitgate.settings import Settings

    broker, _ = acting_as("broker")
    broker.put_chunk("f1", 0, DATA[:70])
    broker.put_chunk("f1", 1, DATA[70:])
    finalize_store, proxy = acting_as("fn:finalize_recording")
    backends = open_backends(Settings.from_env(gcp_env))
    backends.recordings = finalize_store
    from jitgate.recording.closing import sign_closing
    from jitgate.recording.seal import Chain

    chain = Chain("f1")
    for line in DATA.splitlines():
        chain.add(line)
    closing = sign_closing(backends.closing_signer, "f1", events=chain.count, chain_head=chain.head)
    result = finalize_session(backends, closing)
    assert result.status == "sealed" and result.entry["recording_uri"].startswith("gs://")
    assert result.entry["ledger_entry"] == 0
    # The broker reads the seal back (before it deletes its spool) with its own grants: from the index.
    from broker.recorder import _sealed_covers

    broker_view = open_backends(Settings.from_env(gcp_env))
    broker_view.recordings = broker
    assert _sealed_covers(broker_view, "f1", chain.count, chain.head)
    assert not _sealed_covers(broker_view, "f1", chain.count + 1, chain.head)
    assert finalize_store.get_object("f1", "recording.jsonl").count(b"\n") >= 3
    # What finalize was refused (if anything) must be what it is designed to live without.
    assert all("storage.objects.delete" in d for d in refused(proxy)), refused(proxy)


def test_conditions_are_evaluated_not_assumed():
    condition = ('resource.name == "projects/_/buckets/b" || '
                 'resource.name.extract("projects/_/buckets/b/objects/{session}/chunks/") != ""')
    assert condition_holds(condition, "projects/_/buckets/b", "storage.googleapis.com/Bucket")
    assert condition_holds(condition, "projects/_/buckets/b/objects/s1/chunks/000000.jsonl", "storage.googleapis.com/Object")
    assert not condition_holds(condition, "projects/_/buckets/b/objects/s1/recording.jsonl", "storage.googleapis.com/Object")
    assert not condition_holds(condition, "projects/_/buckets/other/objects/s1/chunks/0", "storage.googleapis.com/Object")
    with pytest.raises(ValueError):
        condition_holds('request.time < timestamp("2030-01-01T00:00:00Z")', "x", "y")
