"""Continuations (issue 16): a session sealed by an end its broker did not sign keeps recording into
a continuation part, sealed at the broker's end and linked to the first part; and the attacks on
that link, each with the decision it must get. (The same on the real stack: tests/broker/test_continuation_e2e.py.)"""
from __future__ import annotations

import asyncio
import json
import shutil

import pytest

from broker import continuation as broker_continuation
from broker.recorder import Recorder, SpoolUploader, _write_state
from jitgate.backends import open_backends
from jitgate.recording.audit import audit, verify_session
from jitgate.recording.closing import sign_closing
from jitgate.recording.continuation import CONTINUED, NO_END, continuation_id
from jitgate.recording.finalize import MANIFEST, RECORDING, finalize_session
from jitgate.recording.seal import Chain, iter_lines, parse_events, seal
from jitgate.recording.spool import Spool
from jitgate.settings import Settings

ALICE = {"username": "alice@example.com", "groups": ["sre"]}


@pytest.fixture()
def setup(tmp_path):
    def make(upload_seconds: float):
        settings = Settings.from_env({"JITGATE_HOME": str(tmp_path), "JITGATE_POLICY": str(tmp_path / "p.yaml"),
                                      "JITGATE_SPOOL_UPLOAD_SECONDS": str(upload_seconds)})
        return settings, open_backends(settings)

    return make


def seal_what_is_stored(b, session_id: str):
    """The unrequested seal: someone holding a broker session-closed key signs an end over the chunks
    stored so far (an operator's manual seal, a second broker of the group) and hands it to finalize."""
    chain = Chain(session_id)
    for index in b.recordings.list_chunks(session_id):
        for line in iter_lines([b.recordings.get_chunk(session_id, index)]):
            chain.add(line)
    result = finalize_session(b, sign_closing(b.closing_signer, session_id, events=chain.count, chain_head=chain.head))
    assert result.status == "sealed", result.reason
    return chain.count


def statements(b, *session_ids) -> list[str]:
    out = []
    for session_id in session_ids:
        out += [e["sql"] for e in parse_events(b.recordings.get_object(session_id, RECORDING)) if e["type"] == "statement"]
    return out


async def _upload_now(recorder: Recorder) -> None:
    recorder.flush()
    recorder._start_upload()
    await recorder._upload_task


def _start(recorder: Recorder) -> None:
    recorder.event("session.start", session=recorder.session_id, principal=ALICE, target="demo", kind="postgres",
                   client="127.0.0.1:1", broker="b1")


def test_a_live_session_sealed_by_someone_else_continues_into_a_linked_part(setup):
    settings, b = setup(0.0)  # the broker checks for a seal after every upload

    async def run():
        recorder = Recorder(settings, b, "live1")
        _start(recorder)
        for i in range(5):
            recorder.event("statement", id=i, sql=f"SELECT {i}", decision="allow")
        await _upload_now(recorder)  # chunks stored; the seal check finds nothing yet
        assert recorder.spool.path.stem == "live1"
        sealed = seal_what_is_stored(b, "live1")
        for i in range(5, 30):  # after the seal, before the broker notices
            recorder.event("statement", id=i, sql=f"SELECT {i}", decision="allow")
        await _upload_now(recorder)  # notices the seal: the rest moves to the continuation
        assert recorder.spool.path.stem == "live1-c1"
        for i in range(30, 55):
            recorder.event("statement", id=i, sql=f"SELECT {i}" if i < 54 else "DELETE FROM orders", decision="allow")
        await recorder.close("client closed")
        return sealed

    sealed = asyncio.run(run())
    assert b.index.get_session("live1")["end_reason"] == NO_END
    assert statements(b, "live1", "live1-c1") == [f"SELECT {i}" for i in range(54)] + ["DELETE FROM orders"]
    part = parse_events(b.recordings.get_object("live1-c1", RECORDING))
    assert part[0]["type"] == CONTINUED and part[0]["previous"]["events"] == sealed and part[-1]["type"] == "session.end"
    first, second = verify_session(b, "live1"), verify_session(b, "live1-c1")
    assert first.ok and second.ok, (first, second)
    assert any("has a continuation: session live1-c1" in n for n in first.notes), str(first)
    assert any("continues session live1" in n for n in second.notes), str(second)
    assert second.manifest["continues"]["session_id"] == "live1"
    report = audit(b, spool_dir=settings.spool_dir)
    assert report.ok, report.problems
    assert not list(settings.spool_dir.glob("*.jsonl")), "spools are removed once both parts are sealed"


def test_a_seal_that_races_the_broker_end_leaves_the_rest_to_a_continuation(setup):
    settings, b = setup(3600.0)  # no seal check while live: the broker learns of it only at its end

    async def run():
        recorder = Recorder(settings, b, "race1")
        _start(recorder)
        recorder.event("statement", id=1, sql="SELECT 'sealed part'", decision="allow")
        await _upload_now(recorder)
        seal_what_is_stored(b, "race1")
        recorder.event("statement", id=2, sql="DELETE FROM orders WHERE id = 1", decision="allow")
        await recorder.close("client closed")  # its end is refused as a different end; the rest is split off

    asyncio.run(run())
    assert statements(b, "race1", "race1-c1") == ["SELECT 'sealed part'", "DELETE FROM orders WHERE id = 1"]
    assert verify_session(b, "race1-c1").ok and verify_session(b, "race1").ok
    assert audit(b, spool_dir=settings.spool_dir).ok


def test_a_continued_continuation_gets_the_next_part_number():
    assert continuation_id("abc") == "abc-c1"
    assert continuation_id("abc-c1") == "abc-c2" and continuation_id("abc-c9") == "abc-c10"


def _sealed_first_part(settings, b, session_id="first1") -> bytes:
    """A first part sealed without its end (as the unrequested seal leaves it)."""
    spool = Spool(settings.spool_dir, session_id)
    spool.append("session.start", session=session_id, principal=ALICE, target="demo", kind="postgres")
    spool.append("statement", id=1, sql="SELECT 1", decision="allow")
    spool.close()
    b.recordings.put_chunk(session_id, 0, spool.path.read_bytes())
    seal_what_is_stored(b, session_id)
    spool.path.unlink()
    return b.recordings.get_object(session_id, MANIFEST)


def _forge_part(settings, b, part_id: str, previous_bytes: bytes, **changes) -> dict:
    """A continuation spool built as the broker builds one, then altered; stored and closed with the
    broker's own key (the attacker holds it)."""
    manifest = json.loads(previous_bytes)
    source = settings.spool_dir / f"{manifest['session_id']}.jsonl"
    Spool(settings.spool_dir, manifest["session_id"]).append(
        "session.start", principal=ALICE, target="demo", kind="postgres")
    part = broker_continuation.begin(source, manifest, previous_bytes)
    broker_continuation.release(part.lock)
    lines = part.path.read_bytes().splitlines()
    first = json.loads(lines[0])
    for key, value in changes.items():
        if key == "previous":
            first["previous"].update(value)
        else:
            first[key] = value
    data = json.dumps(first, separators=(",", ":")).encode() + b"\n" + \
        json.dumps({"seq": 9, "ts": 9.0, "type": "statement", "sql": "DELETE FROM orders", "decision": "allow"},
                   separators=(",", ":")).encode() + b"\n"
    part.path.unlink()
    source.unlink()
    b.recordings.put_chunk(part_id, 0, data)
    chain = Chain(part_id)
    for line in data.splitlines():
        chain.add(line)
    return finalize_session(b, sign_closing(b.closing_signer, part_id, events=chain.count, chain_head=chain.head))


@pytest.mark.parametrize("attack, changes, part, refusal", [
    ("a forged link (wrong manifest digest)", {"previous": {"manifest_sha256": "0" * 64}}, "first1-c1",
     "the link names manifest SHA-256 0000000000000000... of session first1, but its manifest is"),
    ("a link to a session that was never sealed", {"previous": {"session_id": "nobody"}}, "nobody-c1",
     "the part it continues, session nobody, has no sealed manifest"),
    ("a continuation claiming another session", {}, "stolen-name",
     "stolen-name claims to continue session first1, whose continuation can only be first1-c1"),
    ("another principal continuing alice's session", {"principal": {"username": "mallory@example.com"}}, "first1-c1",
     "the continuation's principal 'mallory@example.com' is not the principal 'alice@example.com'"),
    ("another target", {"target": "prod"}, "first1-c1", "the continuation's target 'prod' is not the target 'demo'"),
    ("a link with another event count", {"previous": {"events": 1}}, "first1-c1",
     "event count and chain head differ from the seal"),
])
def test_finalize_refuses_a_continuation_whose_link_does_not_hold(setup, attack, changes, part, refusal):
    settings, b = setup(5.0)
    previous = _sealed_first_part(settings, b)
    result = _forge_part(settings, b, part, previous, **changes)
    assert result.status == "refused" and refusal in result.reason, (attack, result.reason)
    assert not b.recordings.object_exists(part, MANIFEST) and b.recordings.list_chunks(part), "nothing sealed or removed"


def test_nothing_continues_a_session_that_ended_and_a_second_continuation_is_refused(setup):
    settings, b = setup(5.0)
    recording, manifest = seal("ended1", [{"seq": 0, "ts": 1.0, "type": "session.start", "principal": ALICE,
                                           "target": "demo", "kind": "postgres"},
                                          {"seq": 1, "ts": 2.0, "type": "session.end", "reason": "client closed"}],
                               b.signer)
    b.recordings.put_object("ended1", RECORDING, recording)
    b.recordings.put_object("ended1", MANIFEST, manifest)
    Spool(settings.spool_dir, "ended1").close()
    (settings.spool_dir / "ended1.jsonl").write_bytes(recording)
    result = _forge_part(settings, b, "ended1-c1", manifest)
    assert result.status == "refused" and "sealed with its own end ('client closed')" in result.reason

    previous = _sealed_first_part(settings, b, "twice1")
    assert _forge_part(settings, b, "twice1-c1", previous).status == "sealed"
    again = _forge_part(settings, b, "twice1-c1", previous)  # a second, different part in the same slot
    assert again.status == "refused" and "already sealed with a different end" in again.reason


def test_a_link_event_anywhere_but_first_is_refused(setup):
    settings, b = setup(5.0)
    events = [{"seq": 0, "ts": 1.0, "type": "session.start", "principal": ALICE, "target": "demo", "kind": "postgres"},
              {"seq": 1, "ts": 1.0, "type": CONTINUED, "previous": {"session_id": "x"}}]
    data = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in events)
    b.recordings.put_chunk("mid1", 0, data)
    chain = Chain("mid1")
    for line in data.splitlines():
        chain.add(line)
    result = finalize_session(b, sign_closing(b.closing_signer, "mid1", events=2, chain_head=chain.head))
    assert result.status == "refused" and "only a continuation's first event may link it" in result.reason


def _two_parts(setup):
    settings, b = setup(0.0)

    async def run():
        recorder = Recorder(settings, b, "pair1")
        _start(recorder)
        recorder.event("statement", id=1, sql="SELECT 1", decision="allow")
        await _upload_now(recorder)
        seal_what_is_stored(b, "pair1")
        recorder.event("statement", id=2, sql="DELETE FROM orders", decision="allow")
        await _upload_now(recorder)
        await recorder.close("client closed")

    asyncio.run(run())
    assert verify_session(b, "pair1-c1").ok
    return settings, b


def test_deleting_the_continuation_is_named_by_verify_and_audit(setup):
    settings, b = _two_parts(setup)
    shutil.rmtree(b.recordings.root / "pair1-c1")
    first = verify_session(b, "pair1")
    assert not first.ok and "its continuation, session pair1-c1 (ledger entry" in str(first) and "is gone" in str(first)
    report = audit(b, spool_dir=settings.spool_dir)
    assert any("session pair1-c1 (ledger entry" in p and "is gone" in p for p in report.problems), report.problems


def test_a_replaced_first_part_breaks_the_link_and_verify_names_it(setup):
    settings, b = _two_parts(setup)
    events = [{k: v for k, v in e.items() if k != "chain"} for e in parse_events(b.recordings.get_object("pair1", RECORDING))]
    recording, manifest = seal("pair1", events[:1], b.signer)  # re-sealed by the key holder, shorter
    for name, data in ((RECORDING, recording), (MANIFEST, manifest)):
        (b.recordings.root / "pair1" / name).unlink()
        (b.recordings.root / "pair1" / name).write_bytes(data)
    result = verify_session(b, "pair1-c1")
    assert not result.ok and "broken continuation link: the link names manifest SHA-256" in str(result), str(result)
    assert "the first part was replaced or re-sealed" in str(result)


def test_a_link_edited_in_the_continuation_is_named(setup):
    settings, b = _two_parts(setup)
    path = b.recordings.root / "pair1-c1" / MANIFEST
    manifest = json.loads(path.read_bytes())
    manifest["continues"]["session_id"] = "someone-else"
    path.write_text(json.dumps(manifest))
    result = verify_session(b, "pair1-c1")
    assert not result.ok and "manifest signature does not verify" in str(result)
    assert "the manifest's continuation link is not the one the recording's first event holds" in str(result)


def test_audit_names_a_part_sealed_short_of_its_end_with_nothing_after_it(setup):
    settings, b = setup(5.0)
    _sealed_first_part(settings, b, "cut1")  # and the broker's spool with the rest is gone with the VM
    report = audit(b, spool_dir=settings.spool_dir)
    assert any("session cut1 was sealed without its session end" in p and "no continuation follows it" in p
               for p in report.problems), report.problems
    assert "not in the ledger yet" in str(verify_session(b, "cut1"))


def test_another_broker_process_sweeping_the_folder_leaves_a_live_spool_alone(setup):
    settings, b = setup(5.0)

    async def run():
        recorder = Recorder(settings, b, "held1")
        _start(recorder)
        stranger = SpoolUploader(settings, b, live=set())  # knows nothing of this session
        assert await stranger.sweep() == 0
        assert not b.recordings.object_exists("held1", MANIFEST), "a live session must not be sealed as a crash"
        assert await stranger.settle(1.0) == 0, "a stopping broker does not wait for another's live sessions"
        recorder.event("statement", id=1, sql="SELECT 'still here'", decision="allow")
        await recorder.close("client closed")

    asyncio.run(run())
    events = parse_events(b.recordings.get_object("held1", RECORDING))
    assert events[-1]["reason"] == "client closed" and any(e.get("sql") == "SELECT 'still here'" for e in events)


def test_a_starting_session_spool_never_shows_in_the_folder_unlocked(setup):
    """The spool takes its name only once it is locked and its state written: a sweeper of another
    broker process that lists the folder at any moment takes it for a live session, never a crash."""
    settings, b = setup(5.0)
    seen_while_preparing = []

    def prepare(path):
        seen_while_preparing.append(sorted(p.name for p in settings.spool_dir.glob("*.jsonl")))
        _write_state(path, {"offset": 0, "chunk": 0, "closed": False})

    path = settings.spool_dir / "fresh1.jsonl"
    lock = broker_continuation.hold_new(path, prepare)
    try:
        assert seen_while_preparing == [[]], "the spool was visible before it was locked"
        assert path.exists() and broker_continuation.held_elsewhere(path)
        assert asyncio.run(SpoolUploader(settings, b, live=set()).sweep()) == 0
        assert path.read_bytes() == b"", "a sweeper wrote a crash end into a starting session"
    finally:
        broker_continuation.release(lock)


def test_a_spool_sealed_and_removed_by_another_broker_mid_sweep_does_not_stop_the_sweep(setup, monkeypatch):
    """Two broker processes share the folder (CI saw this: the second broker died at start). One
    finishes a session and removes its spool between the other's listing and its recovery."""
    settings, b = setup(5.0)
    gone = Spool(settings.spool_dir, "gone1")
    gone.append("session.start", principal=ALICE, target="demo")
    gone._fh.close()
    crashed = Spool(settings.spool_dir, "zcrash1")  # listed after gone1, a genuine orphan
    _write_state(crashed.path, {"offset": 0, "chunk": 0, "closed": False})
    crashed.append("session.start", principal=ALICE, target="demo")
    crashed._fh.close()
    real_try_hold = broker_continuation.try_hold

    def try_hold_then_other_broker_removes(path):
        lock = real_try_hold(path)
        if path.stem == "gone1":
            path.unlink()  # the other broker read its seal back and removed the spool (it takes no lock)
        return lock

    monkeypatch.setattr(broker_continuation, "try_hold", try_hold_then_other_broker_removes)
    assert asyncio.run(SpoolUploader(settings, b, live=set()).sweep()) == 1
    events = parse_events(b.recordings.get_object("zcrash1", RECORDING))
    assert events[-1]["type"] == "session.end" and events[-1]["reason"].startswith("crash")


def test_a_spool_that_cannot_be_recovered_is_logged_and_kept_and_the_others_are_sealed(setup, caplog):
    settings, b = setup(5.0)
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    (settings.spool_dir / "bad1.jsonl").mkdir()  # not a file: cannot be opened for recovery
    crashed = Spool(settings.spool_dir, "crash2")
    crashed.append("session.start", principal=ALICE, target="demo")
    crashed._fh.close()
    assert asyncio.run(SpoolUploader(settings, b, live=set()).sweep()) == 1
    assert verify_session(b, "crash2").ok
    assert (settings.spool_dir / "bad1.jsonl").exists()
    assert any("could not sweep a spool; it is kept for the next sweep" in r.getMessage()
               and "bad1" in str(getattr(r, "__dict__", {})) for r in caplog.records), \
        [r.getMessage() for r in caplog.records]


def test_a_seal_signed_by_no_trusted_key_does_not_move_the_recording(setup, tmp_path):
    """Someone who can write where the broker reads seals back (the index) but holds no seal key
    cannot make the broker split or drop its spool."""
    from jitgate.keys import LocalSigner

    settings, b = setup(0.0)

    async def run():
        recorder = Recorder(settings, b, "fake1")
        _start(recorder)
        recorder.event("statement", id=1, sql="SELECT 1", decision="allow")
        await _upload_now(recorder)
        _, manifest = seal("fake1", [{"type": "session.start", "principal": ALICE, "target": "demo"}],
                           LocalSigner(tmp_path / "rogue.pem"))
        b.index.put_session({"session_id": "fake1", "principal": "alice@example.com", "target": "demo",
                             "started_at": 1.0, "ended_at": 1.0, "end_reason": "", "statements": 0, "errors": 0,
                             "manifest": manifest.decode()})
        await _upload_now(recorder)
        assert recorder.spool.path.stem == "fake1"
        await recorder.close("client closed")

    asyncio.run(run())
    assert verify_session(b, "fake1").ok and not b.recordings.object_exists("fake1-c1", MANIFEST)
