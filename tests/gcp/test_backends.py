"""GCP backends against the emulators: Firestore store, Pub/Sub bus, Cloud Storage recordings,
finalize through a Pub/Sub push subscription into functions-framework; Secret Manager and KMS
reference handling (no emulator exists for those two)."""
from __future__ import annotations

import base64
import json
import logging
import sys
import threading
import time

import httpx
import pytest

from jitgate.backends import open_backends
from jitgate.backends.base import TOPIC_APPROVAL_DECIDED, TOPIC_SESSION_CLOSED, BackendUnavailable
from jitgate.backends.gcp import (GcsRecordingStore, KmsSigner, PubSubBus, SecretManagerSecrets, parse_secret_ref,
                                  provision, recordings_bucket)
from jitgate.backends.embedded import EnvFileSecrets
from jitgate.recording.finalize import MANIFEST, RECORDING, finalize_session
from jitgate.recording.seal import verify
from jitgate.settings import Settings


def _approval(approval_id: str, **kw) -> dict:
    now = time.time()
    return {"approval_id": approval_id, "target": kw.get("target", "demo"), "status": kw.get("status", "pending"),
            "created_at": kw.get("created_at", now), "expires_at": now + 3600, "nested": [[1, 2], {"a": [3]}]}


def test_first_decision_wins_in_a_firestore_transaction(gcp_backends):
    store = gcp_backends.approvals
    store.create_approval(_approval("ap1"))
    with pytest.raises(Exception):
        store.create_approval(_approval("ap1"))  # ids are unique, like the embedded INSERT
    applied, answered = [], []
    barrier = threading.Barrier(4)

    def decide(who: str) -> None:
        def change(record):
            if record["status"] != "pending":
                answered.append(who)
                return None
            return {**record, "status": "approved", "decided_by": who}

        barrier.wait()
        if store.update_approval("ap1", change) is not None:
            applied.append(who)

    threads = [threading.Thread(target=decide, args=(f"approver{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(applied) == 1, (applied, answered)
    record = store.get_approval("ap1")
    assert record["status"] == "approved" and record["decided_by"] == applied[0]
    assert record["nested"] == [[1, 2], {"a": [3]}]
    assert store.update_approval("missing", lambda r: r) is None

    class Refused(Exception):
        pass

    def refuse(record):
        raise Refused()

    with pytest.raises(Refused):
        store.update_approval("ap1", refuse)
    assert store.get_approval("ap1")["status"] == "approved"


def test_list_approvals_by_status_and_target(gcp_backends):
    store = gcp_backends.approvals
    store.create_approval(_approval("a", target="demo", created_at=1))
    store.create_approval(_approval("b", target="demo", created_at=2, status="approved"))
    store.create_approval(_approval("c", target="other", created_at=3))
    assert [r["approval_id"] for r in store.list_approvals()] == ["c", "b", "a"]
    assert [r["approval_id"] for r in store.list_approvals(status="pending")] == ["c", "a"]
    assert [r["approval_id"] for r in store.list_approvals(target="demo")] == ["b", "a"]
    assert [r["approval_id"] for r in store.list_approvals(status="approved", target="demo")] == ["b"]
    assert store.list_approvals(limit=1)[0]["approval_id"] == "c"


def test_session_index_filters_order_and_mark_finalized(gcp_backends):
    index = gcp_backends.index
    rows = [("s1", "demo", "alice", 10.0), ("s2", "demo", "bob", 30.0), ("s3", "other", "alice", 20.0),
            ("s4", "demo", "alice", 40.0)]
    for sid, target, principal, started in rows:
        assert index.mark_finalized(sid) is True
        index.put_session({"session_id": sid, "target": target, "principal": principal, "started_at": started,
                           "statements": 1, "approvals": [{"id": "x", "by": ["dana"]}]})
    assert index.mark_finalized("s1") is False  # duplicate delivery
    assert index.mark_finalized("only-marked") is True  # no entry yet: not listed
    assert [r["session_id"] for r in index.list_sessions()] == ["s4", "s2", "s3", "s1"]
    assert [r["session_id"] for r in index.list_sessions(target="demo")] == ["s4", "s2", "s1"]
    assert [r["session_id"] for r in index.list_sessions(principal="alice")] == ["s4", "s3", "s1"]
    assert [r["session_id"] for r in index.list_sessions(target="demo", principal="alice", limit=1)] == ["s4"]
    assert index.get_session("s2")["approvals"] == [{"id": "x", "by": ["dana"]}]
    assert index.get_session("only-marked") is None and index.get_session("nope") is None


def test_each_broker_has_its_own_subscription_and_sees_every_event(gcp_env, gcp_project):
    settings = Settings.from_env(gcp_env)
    open_backends(settings)  # provisions the topics on the emulator
    got: dict[str, list] = {"one": [], "two": []}
    one, two, publisher = PubSubBus(gcp_project, "broker-one"), PubSubBus(gcp_project, "broker-two"), PubSubBus(gcp_project)
    try:
        one.subscribe(TOPIC_APPROVAL_DECIDED, got["one"].append)
        two.subscribe(TOPIC_APPROVAL_DECIDED, got["two"].append)
        sub = one.subscriber.get_subscription(subscription=one.subscription_path(TOPIC_APPROVAL_DECIDED))
        assert sub.expiration_policy.ttl.total_seconds() == 86400  # idle subscriptions of gone VMs expire
        publisher.publish(TOPIC_APPROVAL_DECIDED, {"approval_id": "ap9", "status": "approved"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (got["one"] and got["two"]):
            time.sleep(0.1)
        assert got["one"] == [{"approval_id": "ap9", "status": "approved"}]
        assert got["two"] == [{"approval_id": "ap9", "status": "approved"}]
    finally:
        one.close()
        two.close()
        publisher.close()


def test_chunks_and_sealed_objects_are_never_overwritten(gcp_backends):
    store = gcp_backends.recordings
    store.put_chunk("s1", 0, b'{"seq":0}\n')
    store.put_chunk("s1", 0, b'{"seq":0}\n')  # re-upload of the same chunk: idempotent
    # A crash between upload and state write: the chunk comes again with more bytes -> continuation object.
    store.put_chunk("s1", 0, b'{"seq":0}\n{"seq":1}\n')
    assert store.get_chunk("s1", 0) == b'{"seq":0}\n{"seq":1}\n'
    store.put_chunk("s1", 1, b'{"seq":2}\n')
    assert store.list_chunks("s1") == [0, 1]
    with pytest.raises(RuntimeError):
        store.put_chunk("s1", 1, b'{"seq":99}\n')
    uri = store.put_object("s1", "manifest.json", b"{}")
    assert uri == f"gs://{store.bucket_name}/s1/manifest.json"
    with pytest.raises(FileExistsError):
        store.put_object("s1", "manifest.json", b"{\"forged\": true}")
    assert store.get_object("s1", "manifest.json") == b"{}"
    assert store.object_exists("s1", "manifest.json") and not store.object_exists("s1", RECORDING)
    with pytest.raises(FileNotFoundError):
        store.get_object("s1", RECORDING)


def test_large_objects_resumable_and_composed_from_at_most_32_sources(gcp_env):
    settings = Settings.from_env(gcp_env)
    open_backends(settings)
    store = GcsRecordingStore(recordings_bucket(settings), settings.project, part_bytes=100, resumable_bytes=1024)
    big = b"".join(b'{"seq":%d,"pad":"%s"}\n' % (i, b"x" * (i % 50)) for i in range(3000))
    store.put_chunk("big", 0, big)  # > resumable_bytes: resumable upload
    assert store.get_chunk("big", 0) == big
    lines = b"".join(b'{"seq":%06d}\n' % i for i in range(1200))  # ~1200 parts of <=100 bytes: two compose levels
    store.put_object("big", RECORDING, lines)
    assert store.get_object("big", RECORDING) == lines
    names = [b.name for b in store.bucket.client.list_blobs(store.bucket_name, prefix="big/")]
    assert not [n for n in names if "/.compose/" in n], "compose scratch objects are removed"
    with pytest.raises(FileExistsError):
        store.put_object("big", RECORDING, lines)


def _chunks(session_id: str, statements: int = 3) -> bytes:
    events = [{"seq": 0, "ts": 1.0, "type": "session.start", "target": "demo", "kind": "postgres",
               "principal": {"username": "alice@example.com", "groups": ["sre"]}}]
    events += [{"seq": i, "ts": 1.0 + i, "type": "statement", "text": f"SELECT {i}"} for i in range(1, statements + 1)]
    events.append({"seq": statements + 1, "ts": 9.0, "type": "session.end", "reason": "client closed"})
    return b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in events)


def _closing(backends, session_id: str, data: bytes) -> dict:
    """The broker's signed end for chunks holding ``data``."""
    from jitgate.recording.closing import sign_closing
    from jitgate.recording.seal import Chain

    chain = Chain(session_id)
    for line in data.splitlines():
        chain.add(line)
    return sign_closing(backends.closing_signer, session_id, events=chain.count, chain_head=chain.head)


def test_finalize_is_idempotent_on_firestore_and_gcs(gcp_backends):
    from jitgate.recording.audit import audit, verify_session

    data = _chunks("f1")
    cut = data.index(b"\n", 150) + 1
    gcp_backends.recordings.put_chunk("f1", 0, data[:cut])
    gcp_backends.recordings.put_chunk("f1", 1, data[cut:])
    closing = _closing(gcp_backends, "f1", data)
    result = finalize_session(gcp_backends, {"session_id": "f1"})  # unsigned: refused
    assert result.status == "refused" and not gcp_backends.recordings.object_exists("f1", MANIFEST)
    result = finalize_session(gcp_backends, closing)
    assert result.status == "sealed" and result.entry["statements"] == 3 and result.entry["recording_uri"].startswith("gs://")
    generation = gcp_backends.recordings.bucket.get_blob("f1/" + MANIFEST).generation
    assert finalize_session(gcp_backends, closing).status == "duplicate"  # redelivered: nothing rewritten
    assert gcp_backends.recordings.bucket.get_blob("f1/" + MANIFEST).generation == generation
    recording = gcp_backends.recordings.get_object("f1", RECORDING)
    assert verify(recording, gcp_backends.recordings.get_object("f1", MANIFEST), gcp_backends.public_keys).ok
    assert [r["session_id"] for r in gcp_backends.index.list_sessions()] == ["f1"]
    assert gcp_backends.recordings.list_chunks("f1") == [0, 1]  # kept: infra/ grants no delete (retention)
    gcp_backends.recordings.may_delete_chunks = True  # JITGATE_GCS_DELETE_CHUNKS=true
    assert finalize_session(gcp_backends, closing).status == "duplicate"
    assert gcp_backends.recordings.list_chunks("f1") == []  # removed once the seal verified
    check = verify_session(gcp_backends, "f1")
    assert check.ok and check.ledger_entry == 0, check.problems
    assert gcp_backends.recordings.get_ledger("entries/000000000000.json")
    assert audit(gcp_backends).ok, audit(gcp_backends).problems


def test_a_large_recording_streams_into_gcs(gcp_backends):
    """Sealing reads chunk by chunk and uploads in one resumable stream (several STREAM_BLOCKs)."""
    line = json.dumps({"seq": 1, "ts": 1.0, "type": "result", "pad": "y" * 1000}, separators=(",", ":")).encode()
    data = _chunks("big")
    gcp_backends.recordings.put_chunk("big", 0, data)
    body = (line + b"\n") * 1024  # 1 MiB chunks, 10 MiB in all
    for i in range(1, 11):
        gcp_backends.recordings.put_chunk("big", i, body)
    closing = _closing(gcp_backends, "big", data + body * 10)
    assert finalize_session(gcp_backends, closing).status == "sealed"
    from jitgate.recording.audit import verify_session

    check = verify_session(gcp_backends, "big")
    assert check.ok and check.events == 5 + 10 * 1024, check.problems


def test_session_closed_is_pushed_to_the_function_as_eventarc_would(gcp_env, gcp_project, tmp_path):
    """The emulator's push subscription delivers the raw Pub/Sub push body; functions-framework turns it
    into the CloudEvent Eventarc sends (google.cloud.pubsub.topic.v1.messagePublished, data.message.data).
    A duplicate delivery does not seal twice."""
    from jitgate.devstack import base_env, free_port, function_server

    port = free_port()
    env = base_env(tmp_path, tmp_path / "policy.yaml", **gcp_env,
                   JITGATE_PUSH_ENDPOINTS=f"{TOPIC_SESSION_CLOSED}=http://127.0.0.1:{port}")
    settings = Settings.from_env(env)
    provision(settings)
    backends = open_backends(settings)
    fn = function_server("finalize_recording", port, env, tmp_path / "logs", signature="cloudevent")
    try:
        sub = backends.bus.subscriber.get_subscription(
            subscription=f"projects/{gcp_project}/subscriptions/jitgate-session-closed-push")
        assert sub.push_config.push_endpoint.endswith(f"/projects/{gcp_project}/topics/jitgate-session-closed")
        assert sub.dead_letter_policy.dead_letter_topic.endswith("/topics/jitgate-dead-letter")
        backends.recordings.put_chunk("p1", 0, _chunks("p1"))
        closing = _closing(backends, "p1", _chunks("p1"))
        backends.bus.publish(TOPIC_SESSION_CLOSED, closing)
        backends.bus.publish(TOPIC_SESSION_CLOSED, closing)  # duplicate
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not backends.index.list_sessions():
            time.sleep(0.2)
        assert [r["session_id"] for r in backends.index.list_sessions()] == ["p1"], fn.tail()
        generation = backends.recordings.bucket.get_blob("p1/" + MANIFEST).generation
        deadline = time.monotonic() + 60  # the duplicate is delivered and answered as one
        while time.monotonic() < deadline and "duplicate delivery ignored" not in fn.log_path.read_text():
            time.sleep(0.2)
        assert "duplicate delivery ignored" in fn.log_path.read_text(), fn.tail()
        assert backends.recordings.bucket.get_blob("p1/" + MANIFEST).generation == generation
        assert "Traceback" not in fn.log_path.read_text(), fn.tail()
        assert verify(backends.recordings.get_object("p1", RECORDING), backends.recordings.get_object("p1", MANIFEST),
                      backends.public_keys).ok
        # The same body that the emulator pushes, sent by hand, is accepted as a CloudEvent (no ce-* headers).
        body = {"subscription": f"projects/{gcp_project}/subscriptions/x", "message": {
            "data": base64.b64encode(json.dumps(closing).encode()).decode(), "messageId": "42", "attributes": {}}}
        response = httpx.post(f"http://127.0.0.1:{port}/projects/{gcp_project}/topics/jitgate-session-closed", json=body)
        assert response.status_code == 200, response.text
        # An unsigned event sent the same way is answered (acknowledged) and refused in the log.
        body["message"]["data"] = base64.b64encode(b'{"session_id":"p1"}').decode()
        response = httpx.post(f"http://127.0.0.1:{port}/projects/{gcp_project}/topics/jitgate-session-closed", json=body)
        assert response.status_code == 200 and "not signed by a broker" in fn.log_path.read_text(), fn.tail()
    finally:
        fn.stop()
        backends.close()


# --- Secret Manager and KMS: no emulator; reference parsing, error messages, checksums ----------


def test_secret_references_parse_with_clear_errors():
    assert parse_secret_ref("gcp-secret:db-pass", "p1") == "projects/p1/secrets/db-pass/versions/latest"
    assert parse_secret_ref("gcp-secret:db-pass/versions/3", "p1") == "projects/p1/secrets/db-pass/versions/3"
    assert parse_secret_ref("gcp-secret:projects/other/secrets/x_y/versions/latest", "p1") == \
        "projects/other/secrets/x_y/versions/latest"
    for bad in ("gcp-secret:", "gcp-secret:a/b", "gcp-secret:x/versions/0", "gcp-secret:projects/p/secrets/"):
        with pytest.raises(ValueError, match="gcp-secret:NAME"):
            parse_secret_ref(bad, "p1")
    with pytest.raises(ValueError, match="GOOGLE_CLOUD_PROJECT"):
        parse_secret_ref("gcp-secret:db-pass", "")


class _Payload:
    def __init__(self, data: bytes, crc: int | None):
        self.data, self.data_crc32c = data, crc

    def HasField(self, name):  # noqa: N802 - protobuf's name
        return self.data_crc32c is not None


class _SecretClient:
    """Stands in for the Secret Manager API (which has no emulator) in this unit test only."""

    def __init__(self, values):
        self.values, self.calls = values, 0

    def access_secret_version(self, request, timeout):
        from google.api_core import exceptions as gexc

        self.calls += 1
        if request["name"] not in self.values:
            raise gexc.NotFound("no")
        data, crc = self.values[request["name"]]
        return type("R", (), {"payload": _Payload(data, crc)})()


def test_secret_manager_store_messages_checksums_and_cache(monkeypatch):
    from jitgate.backends.gcp import _crc32c

    good = b"s3cret\n"
    client = _SecretClient({"projects/p1/secrets/db/versions/latest": (good, _crc32c(good)),
                            "projects/p1/secrets/bad/versions/latest": (good, 1)})
    secrets = SecretManagerSecrets("p1", EnvFileSecrets(), client=client)
    assert secrets.get("gcp-secret:db") == b"s3cret"
    assert secrets.get("gcp-secret:db") == b"s3cret" and client.calls == 1  # cached
    with pytest.raises(BackendUnavailable, match="does not exist"):
        secrets.get("gcp-secret:missing")
    with pytest.raises(BackendUnavailable, match="CRC32C"):
        secrets.get("gcp-secret:bad")
    with pytest.raises(BackendUnavailable, match="unknown reference scheme"):
        secrets.get("vault:x")
    monkeypatch.setenv("JITGATE_T_SECRET", "from-env")
    assert secrets.get("env:JITGATE_T_SECRET") == b"from-env"


def test_kms_signer_checks_names_and_checksums():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from jitgate.backends.gcp import _crc32c

    with pytest.raises(ValueError, match="cryptoKeyVersions"):
        KmsSigner("projects/p/locations/l/keyRings/r/cryptoKeys/k")
    name = "projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1"
    key = Ed25519PrivateKey.generate()

    class Client:  # the KMS API has no emulator; this stands in for asymmetricSign only
        corrupt = False

        def asymmetric_sign(self, request, timeout):
            signature = key.sign(request["data"])
            return type("R", (), {"name": name, "signature": signature, "verified_data_crc32c": True,
                                  "signature_crc32c": _crc32c(signature) + (1 if self.corrupt else 0)})()

    client = Client()
    signer = KmsSigner(name, client=client)
    assert signer.key_id == name
    key.public_key().verify(signer.sign(b"manifest"), b"manifest")  # Ed25519 over the raw data
    client.corrupt = True
    with pytest.raises(BackendUnavailable, match="CRC32C"):
        signer.sign(b"manifest")


def test_without_kms_key_the_local_key_signs_and_says_so(gcp_env, caplog):
    import jitgate.backends.gcp as gcp

    gcp._warned_local_key.clear()
    with caplog.at_level(logging.WARNING, logger="jitgate.backends.gcp"):
        backends = open_backends(Settings.from_env(gcp_env))
    assert backends.name == "gcp" and backends.signer.key_id.startswith("ed25519:")
    assert backends.signer.key_id in backends.public_keys
    assert any("JITGATE_KMS_KEY is not set" in r.getMessage() for r in caplog.records)
    assert sys.modules["jitgate.backends.gcp"] is gcp
