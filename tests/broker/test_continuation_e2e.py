"""A live psql session sealed by an end its broker did not sign (someone holding the broker's
session-closed key signs one over the uploaded chunks and hands it to finalize) keeps recording into
a continuation: nothing is lost, both parts verify, and a tampered link is named. Both backend sets."""
from __future__ import annotations

import time

import psycopg

from jitgate.recording.closing import sign_closing
from jitgate.recording.continuation import CONTINUED, NO_END
from jitgate.recording.finalize import MANIFEST, RECORDING
from jitgate.recording.seal import Chain, iter_lines, parse_events, seal
from tests.broker.test_recording_evidence import _backends, _overwrite, _post_closing, jitgate
from tests.conftest import wait_sealed
from tests.review.test_console import REVIEWER


def _wait(what: str, check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout}s")


def _seal_uploaded(stack, backends, session_id: str) -> int:
    """An operator's manual seal (or a second broker's): the broker's own key over what is stored."""
    chain = Chain(session_id)
    for index in backends.recordings.list_chunks(session_id):
        for line in iter_lines([backends.recordings.get_chunk(session_id, index)]):
            chain.add(line)
    closing = sign_closing(backends.closing_signer, session_id, events=chain.count, chain_head=chain.head)
    assert _post_closing(stack, closing) == 200
    _wait("the unrequested seal", lambda: backends.recordings.object_exists(session_id, MANIFEST))
    return chain.count


def test_a_session_sealed_behind_its_brokers_back_continues_and_both_parts_verify(stack, broker_dsn, sign_in):
    backends = _backends(stack)
    sent_after_seal = []
    with psycopg.connect(broker_dsn(), autocommit=True) as conn:
        session_id = conn.info.parameter_status("jitgate_session_id")
        part = f"{session_id}-c1"
        conn.execute("SELECT 'before the seal'").fetchall()
        _wait("the first chunk upload", lambda: backends.recordings.list_chunks(session_id))
        sealed_events = _seal_uploaded(stack, backends, session_id)
        number = 0

        def send_one():
            nonlocal number
            sql = f"SELECT {number} AS after_seal"
            conn.execute(sql).fetchall()
            sent_after_seal.append(sql)
            number += 1

        for _ in range(25):
            send_one()

        def switched():  # the broker notices at an upload and records on into the continuation
            if backends.recordings.list_chunks(part):
                return True
            send_one()
            return False

        _wait("the continuation's first chunk", switched, timeout=90)
        while number < 50:
            send_one()
        conn.execute("DELETE FROM orders WHERE id = -16")
        sent_after_seal.append("DELETE FROM orders WHERE id = -16")
    wait_sealed(stack, part, timeout=90)

    first = parse_events(backends.recordings.get_object(session_id, RECORDING))
    second = parse_events(backends.recordings.get_object(part, RECORDING))
    assert len(first) == sealed_events and first[-1]["type"] != "session.end"
    assert second[0]["type"] == CONTINUED and second[0]["previous"]["session_id"] == session_id
    in_second = [e["sql"] for e in second if e["type"] == "statement"]
    in_first = [e["sql"] for e in first if e["type"] == "statement"]
    for sql in sent_after_seal:  # no statement lost, none recorded twice
        assert (sql in in_first) + (sql in in_second) == 1, sql
    assert second[-1]["type"] == "session.end" and not second[-1]["reason"].startswith("crash")

    verify_first = jitgate(stack, "verify", session_id)
    assert verify_first.returncode == 0, verify_first.stdout + verify_first.stderr
    assert f"has a continuation: session {part}" in verify_first.stdout
    verify_second = jitgate(stack, "verify", part)
    assert verify_second.returncode == 0 and f"continues session {session_id}" in verify_second.stdout, verify_second.stdout
    assert backends.index.get_session(session_id)["end_reason"] == NO_END
    audit = jitgate(stack, "audit")
    assert session_id not in audit.stdout, audit.stdout  # neither part is an orphan or a problem

    reviewer = sign_in(*REVIEWER)  # the review console shows the two parts linked both ways
    reviewer.goto(f"/sessions/{part}")
    meta = reviewer.page.locator("dl.meta").first.inner_text()
    assert "Continues" in meta and session_id in meta, meta
    assert "badge ok" in reviewer.page.locator("#verification").get_attribute("class")
    reviewer.goto(f"/sessions/{session_id}")
    meta = reviewer.page.locator("dl.meta").first.inner_text()
    assert "Continued in" in meta and part in meta, meta

    # The key holder re-seals the first part shorter: the continuation's link names what changed.
    originals = {name: backends.recordings.get_object(session_id, name) for name in (RECORDING, MANIFEST)}
    events = [{k: v for k, v in e.items() if k != "chain"} for e in first[:1]]
    recording, manifest = seal(session_id, events, backends.signer)
    try:
        _overwrite(backends, session_id, RECORDING, recording)
        _overwrite(backends, session_id, MANIFEST, manifest)
        broken = jitgate(stack, "verify", part)
        assert broken.returncode == 1, broken.stdout
        assert f"broken continuation link: the link names manifest SHA-256" in broken.stdout
        assert f"of session {session_id}, but its manifest is" in broken.stdout
        audit = jitgate(stack, "audit")
        assert audit.returncode == 1 and f"session {part}: " in audit.stdout, audit.stdout
    finally:
        for name, data in originals.items():
            _overwrite(backends, session_id, name, data)
    assert jitgate(stack, "verify", part).returncode == 0


def test_a_seal_racing_the_sessions_end_loses_nothing(stack, broker_dsn):
    """Sealed between the broker's last upload and its end: the broker's end is refused as a
    different end, and what the seal does not hold is sealed as the continuation."""
    backends = _backends(stack)
    with psycopg.connect(broker_dsn(), autocommit=True) as conn:
        session_id = conn.info.parameter_status("jitgate_session_id")
        conn.execute("SELECT 'sealed part'").fetchall()
        _wait("the first chunk upload", lambda: backends.recordings.list_chunks(session_id))
        _seal_uploaded(stack, backends, session_id)
        conn.execute("DELETE FROM orders WHERE id = -17")
    part = f"{session_id}-c1"
    wait_sealed(stack, part, timeout=120)
    second = parse_events(backends.recordings.get_object(part, RECORDING))
    assert any(e.get("sql") == "DELETE FROM orders WHERE id = -17" for e in second)
    assert jitgate(stack, "verify", part).returncode == 0
