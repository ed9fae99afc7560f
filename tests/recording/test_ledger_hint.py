"""Verifying one session (`jitgate verify`, every review-console page view) follows the marker in
the session's folder to its ledger entry, which the seal key signed: a few reads whatever the
ledger's size. The marker is only a hint: a fake one, an altered entry or a bad checkpoint
never makes a session verify that reading the whole ledger would not."""
from __future__ import annotations

import base64
import hashlib
import json

import pytest

from jitgate.backends import open_backends
from jitgate.keys import LocalSigner
from jitgate.recording import ledger
from jitgate.recording.audit import audit, verify_session
from jitgate.recording.finalize import MANIFEST, RECORDING, finalize_session
from jitgate.recording.seal import seal
from jitgate.settings import Settings
from tests.recording.helpers import EVENTS, StoreCalls, store_and_close


@pytest.fixture()
def backends(tmp_path):
    settings = Settings.from_env({"JITGATE_HOME": str(tmp_path), "JITGATE_POLICY": str(tmp_path / "p.yaml")})
    return settings, open_backends(settings)


def seal_all(b, names, **kwargs):
    for sid in names:
        assert finalize_session(b, store_and_close(b, sid), **kwargs).status == "sealed"


def rewrite(path, data: bytes) -> None:
    """Someone with write access to the store replaces a created-once file (possible on a local disk)."""
    path.chmod(0o644)
    path.write_bytes(data)


def test_verifying_one_session_reads_the_same_few_objects_whatever_the_ledger_size(backends):
    """Before: one read per sealed session (the whole ledger), for every page view."""
    _, b = backends
    seal_all(b, ["v0", "v1", "v2"])
    calls = StoreCalls(b.recordings)
    result = verify_session(b, "v1")
    assert result.ok and result.ledger_entry == 1 and not result.notes, result
    small = calls.take()
    seal_all(b, [f"w{i}" for i in range(40)])
    calls.take()
    result = verify_session(b, "v1")
    assert result.ok and result.ledger_entry == 1, result
    large = calls.take()
    assert large == small, (small, large)
    # the marker, its entry (signed by the seal key itself: no checkpoint to read); the manifest and the recording
    assert large["get_ledger"] == 1 and large["list_ledger"] == 0 and large["get_object"] == 2, large
    # The newest session too (its checkpoint is the newest object).
    assert verify_session(b, "w39").ledger_entry == 42
    calls.take()
    assert audit(b).verified_size == 43  # audit still reads every entry and checks every checkpoint
    assert calls.calls["get_ledger"] == 2 * 43, calls.calls


def test_a_fake_marker_puts_no_unledgered_session_in_the_ledger(backends, tmp_path):
    """f1 is sealed with the seal key but outside finalize (so not in the ledger). Whoever writes
    the bucket adds a marker naming another session's entry, an entry that does not exist, or junk:
    the entry decides, and the whole ledger is read to say the session is not in it."""
    settings, b = backends
    seal_all(b, ["a0", "a1"])
    recording, manifest = seal("f1", EVENTS, b.signer)
    b.recordings.put_object("f1", RECORDING, recording)
    b.recordings.put_object("f1", MANIFEST, manifest)
    marker = settings.recordings_dir / "f1" / ledger.MARKER
    for fake in (b'{"entry": 1}\n', b'{"entry": 999}\n', b'{"entry": -1}\n', b"not json"):
        if marker.exists():
            rewrite(marker, fake)
        else:
            b.recordings.put_object("f1", ledger.MARKER, fake)
        result = verify_session(b, "f1")
        assert not result.ok and result.status == "tampered", (fake, result)
        assert "the session is not in the seal ledger" in " ".join(result.problems), (fake, result.problems)
        assert result.ledger_entry is None
    # An entry copied from a1 under the marker's number changes nothing: it names a1's manifest.
    rewrite(marker, b'{"entry": 1}\n')
    assert "not the seal of this manifest" in " ".join(verify_session(b, "f1").notes)


def test_a_marker_naming_another_entry_falls_back_to_the_whole_ledger(backends):
    settings, b = backends
    seal_all(b, ["m0", "m1", "m2"])
    rewrite(settings.recordings_dir / "m1" / ledger.MARKER, b'{"entry": 0}\n')
    calls = StoreCalls(b.recordings)
    result = verify_session(b, "m1")
    assert result.ok and result.ledger_entry == 1, result  # found by reading every entry
    assert calls.calls["list_ledger"] == 1 and calls.calls["get_ledger"] >= 3
    assert "its ledger marker names entry 0, which is not the seal of this manifest" in " ".join(result.notes)
    (settings.recordings_dir / "m2" / ledger.MARKER).unlink()  # no marker at all: the same walk, nothing to note
    result = verify_session(b, "m2")
    assert result.ok and result.ledger_entry == 2 and not result.notes, result


def test_an_altered_entry_is_caught_on_the_marker_path(backends):
    settings, b = backends
    seal_all(b, ["e0", "e1", "e2"])
    entry = settings.ledger_dir / ledger.entry_name(1)
    original = json.loads(entry.read_bytes())
    # Another manifest's hash, or the same hash and another byte (its time): the seal key's
    # signature over the entry no longer verifies, so the entry vouches for nothing.
    for changed in ({"manifest_sha256": "0" * 64}, {"appended_at": 1.0}):
        rewrite(entry, json.dumps({**original, **changed}).encode() + b"\n")
        result = verify_session(b, "e1")
        problems = " ".join(result.problems)
        assert not result.ok and result.ledger_entry is None, (changed, result)
        assert "its only ledger entry (1) was not written by finalize: ledger entry 1: signature does not verify" \
            in problems, (changed, result.problems)
        report = " ".join(audit(b).problems)
        assert "ledger entry 1: signature does not verify" in report and "ledger chain breaks at entry 2" in report


def test_a_bad_checkpoint_leaves_signed_entries_verified_and_audit_names_it(backends, tmp_path):
    settings, b = backends
    seal_all(b, ["c0", "c1", "c2"])
    forged = json.loads((settings.ledger_dir / ledger.checkpoint_name(2)).read_bytes())
    forged["signature"] = base64.b64encode(b"\0" * 64).decode()
    rewrite(settings.ledger_dir / ledger.checkpoint_name(2), json.dumps(forged).encode())
    rewrite(settings.ledger_dir / ledger.checkpoint_name(3), b"{}")
    for sid, number in (("c1", 1), ("c2", 2)):  # each entry carries the seal key's own signature
        result = verify_session(b, sid)
        assert result.ok and result.ledger_entry == number, result
    problems = " ".join(audit(b).problems)
    assert "ledger checkpoint 2: signature does not verify" in problems, problems
    assert "ledger checkpoint checkpoints/000000000003.json is unreadable" in problems, problems


def test_an_entry_appended_with_a_key_of_ones_own_is_refused(backends, tmp_path):
    """Whoever writes the ledger can append an entry chained onto the newest, and sign it and its
    checkpoint with a key of their own: no configured seal key signed it, so the session is not
    verified on either path, and audit names the entry and the checkpoint."""
    settings, b = backends
    seal_all(b, ["n0", "n1"])
    recording, manifest = seal("f2", EVENTS, b.signer)
    b.recordings.put_object("f2", RECORDING, recording)
    b.recordings.put_object("f2", MANIFEST, manifest)
    stranger = LocalSigner(tmp_path / "stranger.pem")
    number = ledger.append(b.recordings, stranger, session_id="f2", manifest_sha256=hashlib.sha256(manifest).hexdigest())
    b.recordings.put_object("f2", ledger.MARKER, json.dumps({"entry": number}).encode())
    result = verify_session(b, "f2")
    assert not result.ok and result.ledger_entry is None, result
    assert f"signed by key '{stranger.key_id}', which is not a configured seal key" in " ".join(result.notes), result
    assert f"its only ledger entry ({number}) was not written by finalize" in " ".join(result.problems), result
    report = audit(b)
    problems = " ".join(report.problems)
    assert f"ledger entry {number} is signed by key '{stranger.key_id}', which is not a configured seal key" in problems
    assert f"ledger checkpoint {number + 1} is signed by key '{stranger.key_id}'" in problems
    assert report.unsigned_tail == []
