"""The SQL bypass corpus (tests/guardrails/sql_corpus.py), twice:

1. the decision `jitgate policy explain` gives on the demo target's policy is the one each
   entry states (``measured`` entries: allowed by the classifier, and marked as writing rows);
2. end to end through the broker against PostgreSQL: allowed entries are not refused by the
   gateway; every other entry is refused or held and the data is unchanged (a digest of the
   corpus schema, sequences, roles, settings, large objects and databases). The end-to-end
   target denies at once what the demo target would hold for approval, so the run does not
   wait for approvers; the decision itself is checked in (1). Row-limit holds do wait (1 s).
"""
from __future__ import annotations

import textwrap

import psycopg
import pytest

from jitgate.policy import parse_policy
from jitgate.policy_explain import explain_sql
from tests.guardrails.sql_corpus import CORPUS, FINGERPRINT, SETUP

DEMO_POLICY = textwrap.dedent("""\
    identity: {issuer: "https://idp.example.com", audience: jitgate}
    targets:
      demo:
        kind: postgres
        address: 127.0.0.1:5432
        database: demo
        username: jitgate_broker
        credential: env:X
        allow: {groups: [sre]}
        guardrails: {ddl: approve, dml_unbounded: approve, drop_database: deny}
    """)

CORPUS_TARGET = """
  demo-corpus:
    kind: postgres
    address: 127.0.0.1:{pg_port}
    database: demo
    username: jitgate_broker
    credential: env:JITGATE_DEMO_DB_PASSWORD
    allow:
      groups: [sre]
    guardrails: {{ddl: deny, dml_unbounded: deny, privilege: deny, server_admin: deny, procedural: deny,
                 side_effect_function: deny}}
    max_rows_changed: 100
    approvals:
      approver_groups: [dba]
      wait: 1s
"""


def _id(case) -> str:
    return f"{case.decision}:{case.sql[:70]!r}"


def test_corpus_is_large():
    assert len(CORPUS) >= 130
    assert {c.decision for c in CORPUS} == {"allow", "approve", "deny", "measured"}


@pytest.mark.parametrize("case", CORPUS, ids=[_id(c) for c in CORPUS])
def test_policy_explain_gives_each_entry_its_decision(case):
    policy = parse_policy(DEMO_POLICY)
    answer = explain_sql(policy, "demo", "alice@example.com", frozenset({"sre"}), case.sql.replace("%s", "$1"))
    if case.decision == "measured":
        assert answer["decision"] == "allow" and answer["writes_rows"], answer
    else:
        assert answer["decision"] == case.decision, answer


@pytest.fixture(scope="module")
def corpus_target(stack):
    stack.add_targets(CORPUS_TARGET)
    stack.pg.psql(SETUP, "demo")
    return "demo-corpus"


def test_corpus_end_to_end_through_the_broker(stack, broker_dsn, corpus_target):
    admin = psycopg.connect(stack.pg.dsn("demo"), autocommit=True)  # the superuser, beside the gateway

    def fingerprint() -> str | None:
        try:
            return admin.execute(FINGERPRINT).fetchone()[0]
        except psycopg.Error as exc:  # a table of the digest is gone: that is a change too
            return f"error: {exc}"

    baseline = fingerprint()
    failures = []
    notices: list[str] = []
    conn = None
    for case in CORPUS:
        if conn is None or conn.closed or conn.broken:
            conn = psycopg.connect(broker_dsn(corpus_target), autocommit=True)
            conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("SET search_path = corpus, public")
        notices.clear()
        error = None
        try:
            if case.params is None:
                psycopg.ClientCursor(conn).execute(case.sql)  # simple protocol, multi-statement allowed
            else:
                conn.execute(case.sql, case.params)  # extended protocol
        except psycopg.Error as exc:
            error = str(exc)
        if not conn.broken and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        refused = error is not None and error.startswith("jitgate:")
        after = fingerprint()
        if case.decision == "allow":
            if refused:
                failures.append(f"{case.sql!r}: refused by the gateway: {error}")
            if not case.changes and after != baseline:
                failures.append(f"{case.sql!r}: allowed and expected harmless, but the data changed")
        else:
            if not refused:
                failures.append(f"{case.sql!r}: expected {case.decision}, the gateway let it through ({error or 'no error'})")
            elif case.decision == "measured" and not any("over the limit of 100" in n for n in notices):
                failures.append(f"{case.sql!r}: expected a measured hold, got: {error} / notices {notices}")
            if after != baseline:
                failures.append(f"{case.sql!r}: {case.decision}, but the data changed")
        if after != baseline:
            admin.execute(SETUP)
            conn.close()
            conn = None
    if conn is not None:
        conn.close()
    admin.close()
    assert not failures, "\n".join(failures)
