"""Time-boxed access on the PostgreSQL path: a target whose every session needs an approval."""
from __future__ import annotations

import threading
import time

import psycopg
import pytest

from jitgate import approvals as ap
from jitgate.backends import open_backends
from jitgate.settings import Settings
from tests.approval_helpers import decide_via_service

JIT_TARGET = """
  demo-jit:
    kind: postgres
    address: 127.0.0.1:{pg_port}
    database: demo
    username: jitgate_broker
    credential: env:JITGATE_DEMO_DB_PASSWORD
    session_approval: true
    allow:
      groups: [sre]
    approvals:
      approver_groups: [dba]
      wait: 4s
      session_access: 1h
"""


@pytest.fixture(scope="module")
def jit_target(stack):
    stack.add_targets(JIT_TARGET)
    return "demo-jit"


def _pending_session_request(backends, session_id: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in backends.approvals.list_approvals(status=ap.PENDING, target="demo-jit"):
            if record.get("session_id") == session_id:
                return record
        time.sleep(0.1)
    raise AssertionError("no pending session approval appeared")


def test_first_statement_waits_for_the_session_approval(stack, broker_dsn, jit_target):
    backends = open_backends(Settings.from_env(stack.env))
    with psycopg.connect(broker_dsn(jit_target)) as conn:
        session_id = conn.info.parameter_status("jitgate_session_id")
        notices = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))

        def approve():
            record = _pending_session_request(backends, session_id)
            decide_via_service(stack, record["approval_id"])

        approver = threading.Thread(target=approve)
        approver.start()
        assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] == 5
        approver.join(30)
        # the whole session is open now: a second statement runs without asking again
        assert conn.execute("SELECT 41 + 1").fetchone()[0] == 42
    assert any("approval" in n for n in notices), notices


def test_session_refused_when_nobody_decides(broker_dsn, jit_target):
    with psycopg.connect(broker_dsn(jit_target)) as conn:
        with pytest.raises(psycopg.OperationalError) as err:
            conn.execute("SELECT 1")
    text = str(err.value)
    assert "access to target 'demo-jit' waits for approval request apr_" in text and "connect again" in text
