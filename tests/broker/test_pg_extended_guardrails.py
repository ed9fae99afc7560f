"""Guardrails see every Parse of the extended protocol, not only simple queries."""
from __future__ import annotations

import time

import psycopg
import pytest

HOLD_TARGET = """
  demo-hold:
    kind: postgres
    address: 127.0.0.1:{pg_port}
    database: demo
    username: jitgate_broker
    credential: env:JITGATE_DEMO_DB_PASSWORD
    allow:
      groups: [sre]
    guardrails:
      drop_database: deny
    approvals:
      approver_groups: [dba]
      wait: 2s
"""


@pytest.fixture(scope="module")
def hold_target(stack):
    stack.add_targets(HOLD_TARGET)
    return "demo-hold"


def test_unbounded_delete_with_parameters_is_held_and_never_runs(broker_dsn, hold_target):
    with psycopg.connect(broker_dsn(hold_target)) as conn:
        before = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
        notices = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        started = time.monotonic()
        with pytest.raises(psycopg.Error) as err:
            conn.execute("DELETE FROM orders WHERE %s", (True,))  # extended protocol: Parse/Bind/Execute
        conn.rollback()
        assert time.monotonic() - started >= 1.5  # it waited for an approver first
        assert "still pending" in str(err.value)
        assert any("approval request" in n for n in notices), notices
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == before


def test_denied_class_through_a_prepared_statement(broker_dsn, hold_target):
    with psycopg.connect(broker_dsn(hold_target), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as err:
            conn.execute("DROP SCHEMA IF EXISTS public CASCADE", prepare=True)
        assert "refused by policy" in str(err.value) and "drop_database" in str(err.value)
        assert conn.execute("SELECT count(*) FROM customers", prepare=True).fetchone()[0] >= 5
