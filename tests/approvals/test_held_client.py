"""A held statement belongs to its client (issue 15 item 4, issue 21 "found in the soak").

- The client disconnects while its statement waits: the request becomes `withdrawn`, a later
  approval is refused, nothing runs, and the recording says so.
- Two sessions of the same person hold the same statement: they share one request, but a cancel
  withdraws only the cancelling session's wait; the other still runs once approved.
- A cancel that the broker answered itself (a held statement) is not forwarded to PostgreSQL.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
import types
import uuid

import psycopg
import pytest

from jitgate import approvals as ap
from jitgate.approvals_client import DecisionRefused
from jitgate.backends import open_backends
from jitgate.recording.finalize import RECORDING
from jitgate.recording.seal import parse_events
from jitgate.settings import Settings
from tests.approval_helpers import decide_via_service
from tests.conftest import wait_sealed


def _backends(stack):
    return open_backends(Settings.from_env(stack.env))


def _wait_record(backends, predicate, what: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in backends.approvals.list_approvals(target="demo", limit=200):
            if predicate(record):
                return record
        time.sleep(0.1)
    raise AssertionError(f"no approval request {what}")


def _column_exists(stack, column: str) -> bool:
    return stack.pg.psql(f"SELECT count(*) FROM information_schema.columns WHERE column_name = '{column}'", "demo") == "1"


def test_disconnected_client_withdraws_its_request_and_a_later_approval_runs_nothing(stack, token):
    backends = _backends(stack)
    column = f"gone_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PGPASSWORD": token("alice@example.com", ["sre"])}
    psql = subprocess.Popen(
        ["psql", "-X", f"host=127.0.0.1 port={stack.broker_port} dbname=demo user=alice@example.com sslmode=require",
         "-c", f"ALTER TABLE orders ADD COLUMN {column} int"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = _wait_record(backends, lambda r: column in r.get("statement", "") and r["status"] == ap.PENDING, "pending")
    psql.send_signal(signal.SIGKILL)
    psql.wait(10)
    withdrawn = _wait_record(backends, lambda r: r["approval_id"] == record["approval_id"] and r["status"] == ap.WITHDRAWN,
                             "withdrawn")
    assert "disconnected" in withdrawn["reason"]
    with pytest.raises(DecisionRefused) as refused:
        decide_via_service(stack, record["approval_id"])
    assert refused.value.code == "already_decided" and "withdrawn" in str(refused.value)
    assert not _column_exists(stack, column)
    wait_sealed(stack, record["session_id"], timeout=60)
    events = parse_events(backends.recordings.get_object(record["session_id"], RECORDING))
    gone = [e for e in events if e["type"] == "approval.withdrawn"]
    assert gone and gone[0]["approval_id"] == record["approval_id"], [e["type"] for e in events]
    assert not any(e["type"] == "approval.decided" and e.get("status") == ap.APPROVED for e in events)


def test_cancel_in_one_session_leaves_the_other_sessions_wait(stack, broker_dsn):
    backends = _backends(stack)
    column = f"shared_{uuid.uuid4().hex[:8]}"
    statement = f"ALTER TABLE orders ADD COLUMN {column} int"
    conns = [psycopg.connect(broker_dsn("demo"), autocommit=True) for _ in range(2)]
    results: list = [None, None]

    def run(i):
        try:
            conns[i].execute(statement)
            results[i] = "ok"
        except Exception as exc:  # noqa: BLE001
            results[i] = exc

    try:
        first = threading.Thread(target=run, args=(0,), daemon=True)
        first.start()
        record = _wait_record(backends, lambda r: column in r.get("statement", "") and r["status"] == ap.PENDING, "pending")
        second = threading.Thread(target=run, args=(1,), daemon=True)
        second.start()
        shared = _wait_record(backends, lambda r: r["approval_id"] == record["approval_id"] and len(r.get("waiters", [])) == 2,
                              "with two waiters")
        assert shared["status"] == ap.PENDING  # one request for both sessions
        conns[0].cancel_safe()
        first.join(30)
        assert isinstance(results[0], psycopg.errors.QueryCanceled), results[0]
        left = _wait_record(backends, lambda r: r["approval_id"] == record["approval_id"] and len(r.get("waiters", [])) == 1,
                            "with one waiter left")
        assert left["status"] == ap.PENDING and second.is_alive()
        decide_via_service(stack, record["approval_id"])
        second.join(30)
        assert results[1] == "ok", results[1]
        assert _column_exists(stack, column)
        # The cancelled session's connection is fine: its next statement runs (nothing was forwarded upstream).
        assert conns[0].execute("SELECT 41 + 1").fetchone()[0] == 42
    finally:
        for c in conns:
            c.close()


def test_cancel_of_a_held_statement_is_not_forwarded_upstream():
    """broker_cancel against a real TCP listener standing in for PostgreSQL's cancel port."""
    from broker.pg import codec
    from broker.pg.server import CancelRoute, PgConnection

    async def scenario():
        seen: list[bytes] = []
        got = asyncio.Event()

        async def upstream(reader, writer):
            seen.append(await reader.read(64))
            got.set()
            writer.close()

        server = await asyncio.start_server(upstream, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        held = asyncio.ensure_future(asyncio.sleep(3600))
        target = types.SimpleNamespace(hold=held)
        broker = types.SimpleNamespace(cancel_routes={(7, b"k" * 4): CancelRoute("127.0.0.1", port, 99, b"s" * 4, target)})
        conn = object.__new__(PgConnection)
        conn.broker = broker
        await conn.broker_cancel(codec.CancelRequest(7, b"k" * 4))
        await asyncio.sleep(0)
        assert held.cancelled()
        assert not seen  # answered by the broker alone
        # Without a held statement the cancel goes upstream, as before.
        target.hold = None
        await conn.broker_cancel(codec.CancelRequest(7, b"k" * 4))
        await asyncio.wait_for(got.wait(), 10)
        assert seen == [codec.build_cancel_request(99, b"s" * 4)]
        server.close()

    asyncio.run(scenario())
