"""Sealed recordings: chain, signature, tamper detection, crash recovery, idempotent finalize."""
from __future__ import annotations

import asyncio
import json

import pytest

from broker.recorder import SpoolUploader
from jitgate.backends import open_backends
from jitgate.recording.finalize import MANIFEST, RECORDING, finalize_session
from jitgate.recording.seal import parse_events, seal, verify
from jitgate.recording.spool import Spool
from jitgate.settings import Settings


@pytest.fixture()
def backends(tmp_path):
    settings = Settings.from_env({"JITGATE_HOME": str(tmp_path), "JITGATE_POLICY": str(tmp_path / "p.yaml")})
    return settings, open_backends(settings)


EVENTS = [
    {"seq": 0, "ts": 1.0, "type": "session.start", "principal": {"username": "alice@example.com", "groups": ["sre"]}, "target": "demo"},
    {"seq": 1, "ts": 1.5, "type": "statement", "id": 1, "sql": "SELECT 1", "decision": "allow"},
    {"seq": 2, "ts": 1.6, "type": "result", "id": 1, "rows": 1, "error": None},
    {"seq": 3, "ts": 2.0, "type": "session.end", "reason": "client closed"},
]


def test_seal_then_verify_and_every_single_byte_change_is_caught(backends):
    _, b = backends
    recording, manifest = seal("s1", EVENTS, b.signer)
    assert verify(recording, manifest, b.public_keys).ok
    for position in range(0, len(recording), 7):
        flipped = bytearray(recording)
        flipped[position] ^= 0x01
        assert not verify(bytes(flipped), manifest, b.public_keys).ok, position


def test_verify_names_the_altered_line_and_detects_truncation(backends):
    _, b = backends
    recording, manifest = seal("s1", EVENTS, b.signer)
    lines = recording.split(b"\n")
    lines[2] = lines[2].replace(b'"rows":1', b'"rows":9')
    result = verify(b"\n".join(lines), manifest, b.public_keys)
    assert not result.ok and any("line 3" in p for p in result.problems)
    truncated = b"\n".join(recording.split(b"\n")[:2]) + b"\n"
    assert not verify(truncated, manifest, b.public_keys).ok


def test_manifest_signature_is_checked(backends):
    _, b = backends
    recording, manifest = seal("s1", EVENTS, b.signer)
    doc = json.loads(manifest)
    doc["events"] = 3
    result = verify(recording, json.dumps(doc).encode(), b.public_keys)
    assert not result.ok and any("signature does not verify" in p for p in result.problems)
    assert not verify(recording, manifest, {}).ok  # unknown key


def test_finalize_is_idempotent(backends):
    _, b = backends
    data = b"".join(json.dumps(e).encode() + b"\n" for e in EVENTS)
    b.recordings.put_chunk("s2", 0, data[:100])
    b.recordings.put_chunk("s2", 1, data[100:])
    entry = finalize_session(b, "s2")
    assert entry["statements"] == 1 and entry["principal"] == "alice@example.com"
    assert finalize_session(b, "s2") is None  # duplicate delivery
    assert verify(b.recordings.get_object("s2", RECORDING), b.recordings.get_object("s2", MANIFEST), b.public_keys).ok
    with pytest.raises(FileExistsError):
        b.recordings.put_object("s2", RECORDING, b"overwrite attempt")


def test_orphaned_spool_is_sealed_as_crashed_with_torn_tail_dropped(backends):
    settings, b = backends
    spool = Spool(settings.spool_dir, "crashed1")
    from broker.recorder import _write_state

    _write_state(spool.path, {"offset": 0, "chunk": 0, "closed": False})
    spool.append("session.start", principal={"username": "bob@example.com", "groups": []}, target="demo")
    spool.append("statement", id=1, sql="UPDATE t SET x = 1 WHERE id = 2", decision="allow")
    spool._fh.write(b'{"seq": 2, "ts": 3.0, "type": "res')  # torn write at the moment of the kill
    spool._fh.close()
    sealed = asyncio.run(SpoolUploader(settings, b, live=set()).sweep())
    assert sealed == 1
    events = parse_events(b.recordings.get_object("crashed1", RECORDING))
    assert [e["type"] for e in events] == ["session.start", "statement", "session.end"]
    assert events[-1]["reason"].startswith("crash")
    assert b.index.get_session("crashed1")["end_reason"].startswith("crash")
    assert not spool.path.exists()
