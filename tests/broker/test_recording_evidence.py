"""Recordings hold up in an investigation (issue 16), end to end on both backend sets:
a forged session-closed loses no statement; a cross-session swap, a re-seal with a key nobody
configured and a deleted session are each named by `jitgate verify` / `jitgate audit`."""
from __future__ import annotations

import json
import subprocess
import sys

import httpx
import psycopg

from jitgate.backends import open_backends
from jitgate.backends.base import TOPIC_SESSION_CLOSED
from jitgate.events import pubsub_envelope
from jitgate.keys import LocalSigner
from jitgate.recording.closing import sign_closing
from jitgate.recording.finalize import MANIFEST, RECORDING
from jitgate.recording.seal import parse_events, seal
from jitgate.settings import Settings
from tests.conftest import wait_sealed


def jitgate(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jitgate.cli", "--home", str(stack.home), *args], env=stack.env,
                          capture_output=True, text=True, timeout=120)


def _backends(stack):
    return open_backends(Settings.from_env(stack.env))


def _finalize_url(stack) -> str:
    return Settings.from_env(stack.env).push_endpoints[TOPIC_SESSION_CLOSED]


def _post_closing(stack, payload: dict) -> int:
    headers, body = pubsub_envelope(TOPIC_SESSION_CLOSED, payload, project=stack.env["GOOGLE_CLOUD_PROJECT"])
    return httpx.post(_finalize_url(stack), headers=headers, content=body, timeout=60).status_code


def _overwrite(backends, session_id: str, name: str, data: bytes) -> None:
    """What someone with delete rights on the store (or root on the host) can do."""
    if backends.name == "gcp":
        backends.recordings.bucket.blob(f"{session_id}/{name}").upload_from_string(data)
    else:
        path = backends.recordings.root / session_id / name
        path.unlink()
        path.write_bytes(data)


def _delete_session(backends, session_id: str) -> None:
    if backends.name == "gcp":
        for blob in backends.recordings.bucket.client.list_blobs(backends.recordings.bucket_name, prefix=f"{session_id}/"):
            blob.delete()
        backends.index.sessions.document(session_id).delete()
    else:
        import shutil

        shutil.rmtree(backends.recordings.root / session_id)
        backends.index._conn().execute("DELETE FROM sessions WHERE session_id=?", (session_id,))


def _session(broker_dsn, *statements: str) -> str:
    with psycopg.connect(broker_dsn(), autocommit=True) as conn:
        session_id = conn.info.parameter_status("jitgate_session_id")
        for sql in statements:
            conn.execute(sql)
    return session_id


def test_a_forged_session_closed_seals_nothing_and_loses_no_statement(stack, broker_dsn, tmp_path):
    backends = _backends(stack)
    with psycopg.connect(broker_dsn(), autocommit=True) as conn:
        session_id = conn.info.parameter_status("jitgate_session_id")
        conn.execute("SELECT 'before the forgery'").fetchall()
        stranger = LocalSigner(tmp_path / "stranger.pem")
        for forged in ({"session_id": session_id},
                       sign_closing(stranger, session_id, events=2, chain_head="0" * 64)):
            assert _post_closing(stack, forged) == 200  # answered, so the sender learns nothing to retry
        for i in range(50):
            conn.execute(f"SELECT {i} AS after_forgery").fetchall()
        conn.execute("DELETE FROM orders WHERE id = -1")
        assert not backends.recordings.object_exists(session_id, MANIFEST)
    wait_sealed(stack, session_id, timeout=60)
    events = parse_events(backends.recordings.get_object(session_id, RECORDING))
    sql = [e.get("sql", "") for e in events if e["type"] == "statement"]
    assert all(any(f"SELECT {i} AS after_forgery" in s for s in sql) for i in range(50))
    assert any("DELETE FROM orders" in s for s in sql)
    assert events[-1]["type"] == "session.end" and not events[-1]["reason"].startswith("crash")
    verify = jitgate(stack, "verify", session_id)
    assert verify.returncode == 0 and verify.stdout.startswith("OK:"), verify.stdout + verify.stderr
    log = (stack.home / "logs" / "fn-finalize_recording.log").read_text()
    assert "not signed by a broker" in log and f"{stranger.key_id!r}, which is not a trusted broker key" in log


def test_verify_names_a_cross_session_swap(stack, broker_dsn):
    backends = _backends(stack)
    a = _session(broker_dsn, "SELECT 'session a'")
    b = _session(broker_dsn, "SELECT 'session b'")
    wait_sealed(stack, a)
    wait_sealed(stack, b)
    originals = {name: backends.recordings.get_object(a, name) for name in (RECORDING, MANIFEST)}
    try:
        for name in (RECORDING, MANIFEST):
            _overwrite(backends, a, name, backends.recordings.get_object(b, name))
        result = jitgate(stack, "verify", a)
        assert result.returncode == 1, result.stdout
        assert f"the manifest is for session '{b}', not '{a}'" in result.stdout
        as_json = json.loads(jitgate(stack, "verify", a, "--json").stdout)
        assert as_json["status"] == "tampered" and as_json["key_id"] and as_json["problems"]
    finally:
        for name, data in originals.items():
            _overwrite(backends, a, name, data)
    assert jitgate(stack, "verify", a).returncode == 0


def test_a_reseal_with_an_unconfigured_key_is_named(stack, broker_dsn, tmp_path):
    backends = _backends(stack)
    session_id = _session(broker_dsn, "SELECT 'kept'", "DELETE FROM orders WHERE id = -2")
    wait_sealed(stack, session_id)
    originals = {name: backends.recordings.get_object(session_id, name) for name in (RECORDING, MANIFEST)}
    events = [{k: v for k, v in e.items() if k != "chain"} for e in parse_events(originals[RECORDING])
              if "DELETE" not in e.get("sql", "")]
    rogue = LocalSigner(tmp_path / "rogue.pem")  # a key made on the broker host, never configured
    recording, manifest = seal(session_id, events, rogue)
    try:
        _overwrite(backends, session_id, RECORDING, recording)
        _overwrite(backends, session_id, MANIFEST, manifest)
        result = jitgate(stack, "verify", session_id)
        assert result.returncode == 1 and result.stdout.startswith("UNTRUSTED"), result.stdout
        assert f"signed by key '{rogue.key_id}', which is not a configured seal key" in result.stdout
        assert "differs from the one the ledger recorded" in result.stdout
        audit = jitgate(stack, "audit")
        assert audit.returncode == 1 and f"session {session_id}:" in audit.stdout, audit.stdout
    finally:
        for name, data in originals.items():
            _overwrite(backends, session_id, name, data)


def test_audit_names_a_deleted_session(stack, broker_dsn):
    backends = _backends(stack)
    session_id = _session(broker_dsn, "SELECT 'soon gone'")
    wait_sealed(stack, session_id)
    entry = json.loads(backends.recordings.get_object(session_id, "ledger-entry.json"))["entry"]
    _delete_session(backends, session_id)
    result = jitgate(stack, "verify", session_id)
    assert result.returncode == 1 and "no sealed recording" in result.stdout
    audit = jitgate(stack, "audit")
    assert audit.returncode == 1
    assert f"session {session_id} (ledger entry {entry}) is gone: its manifest was deleted" in audit.stdout, audit.stdout
