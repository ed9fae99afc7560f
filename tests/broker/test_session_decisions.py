"""The per-statement decision of a session (issue 18): what it remembers between statements, and
the attacks on what it remembers. Each statement still gets its own verdict from its own
classification under the session's target; a remembered decision is keyed by everything the
decision reads (classes, reasons, kind of request) and dropped when the target changes."""
from __future__ import annotations

import asyncio
import json

import pytest

from broker.pg import masking_step
from broker.session import DECISION_CACHE_ENTRIES, Session
from jitgate.backends import open_backends
from jitgate.identity.oidc import Principal
from jitgate.masking.lineage import StatementLineage
from jitgate.policy import parse_policy
from jitgate.settings import Settings

POLICY = """
version: 1
identity:
  issuer: http://127.0.0.1:1
  audience: jitgate
  groups_claim: groups
targets:
  db:
    kind: postgres
    address: 127.0.0.1:5432
    database: app
    username: app
    credential: env:X
    allow:
      groups: [sre]
    guardrails:
      ddl: approve
      dml_unbounded: approve
      drop_database: deny
  strict:
    kind: postgres
    address: 127.0.0.1:5432
    database: app
    username: app
    credential: env:X
    allow:
      groups: [sre]
    guardrails:
      read: deny
  lenient:
    kind: postgres
    address: 127.0.0.1:5432
    database: app
    username: app
    credential: env:X
    allow:
      groups: [sre]
    guardrails:
      unclassified: allow
"""


def _session(tmp_path, target="db") -> Session:
    settings = Settings.from_env({"JITGATE_HOME": str(tmp_path), "JITGATE_POLICY": str(tmp_path / "p.yaml")})
    principal = Principal("s", "alice@example.com", frozenset({"sre"}), "iss", 2**40)

    async def open_session():
        return Session.open(principal=principal, target_name=target, policy=parse_policy(POLICY), client="t",
                            kind="postgres", settings=settings, backends=open_backends(settings))

    return _LOOP.run_until_complete(open_session())


def _decide(session: Session, sql: str):
    return _LOOP.run_until_complete(session.decide_sql_async(sql))


_LOOP: asyncio.AbstractEventLoop


@pytest.fixture(autouse=True)
def _loop():
    """A running loop for the session's recorder (its upload timer), as in the broker."""
    global _LOOP
    _LOOP = asyncio.new_event_loop()
    asyncio.set_event_loop(_LOOP)
    yield
    _LOOP.close()
    asyncio.set_event_loop(None)


def test_every_statement_is_decided_on_its_own_classification(tmp_path):
    session = _session(tmp_path)
    # (statement, action): the same shape with other constants, and statements that share classes
    # but not reasons, must not borrow each other's decision.
    cases = [
        ("SELECT abalance FROM accounts WHERE aid = 1", "allow"),
        ("DELETE FROM accounts", "approve"),
        ("SELECT abalance FROM accounts WHERE aid = 2", "allow"),
        ("DELETE FROM accounts WHERE aid = 3", "allow"),
        ("DELETE FROM accounts", "approve"),
        ("DROP DATABASE app", "deny"),
        # The setting a literal names decides: a pinned lexing setting is refused, another is not.
        ("SELECT set_config('standard_conforming_strings', 'off', false)", "deny"),
        ("SELECT set_config('application_name', 'x', false)", "allow"),
        ("SELECT set_config('standard_conforming_strings', 'on', false)", "allow"),  # its pinned value
        ("SELECT set_config('standard_conforming_strings', 'off', false)", "deny"),
        ("SELECT set_config('application_name', 'y', false)", "allow"),
        # Quoting that moves where a statement ends: E'' escapes, standard strings, dollar quotes.
        ("SELECT E'\\'' ; DROP DATABASE app", "deny"),
        ("SELECT '\\'' ; DROP DATABASE app", "deny"),  # unterminated: unclassified
        ("SELECT '\\' ; SELECT 2", "allow"),
        ("SELECT U&'\\0041' FROM accounts", "allow"),
        ("SELECT $q$ ; DROP DATABASE app; $q$", "allow"),  # a dollar-quoted string, not a statement
        ("SELECT 1; DROP DATABASE app", "deny"),
        ("SELEC 1", "deny"),  # unparsable: unclassified, refused by default
        ("SELECT abalance FROM accounts WHERE aid = 4", "allow"),
    ]
    for _ in range(2):  # the second round answers from what the session remembers
        for sql, action in cases:
            verdict = _decide(session, sql)
            fresh = _decide(_session(tmp_path / f"fresh{len(sql)}"), sql)
            assert (verdict.action, verdict.classes, verdict.reasons) == (fresh.action, fresh.classes, fresh.reasons), sql
            assert verdict.action == action, sql
    denied = _decide(session, "DROP DATABASE app")
    assert "drop_database" in denied.message and denied.classes == ("drop_database",)


def test_a_remembered_decision_is_a_verdict_of_its_own(tmp_path):
    session = _session(tmp_path)
    first = _decide(session, "DELETE FROM accounts WHERE aid = 1")
    first.approval_id, first.writes_rows = "a1", False  # what the relay adds to its verdict
    second = _decide(session, "DELETE FROM accounts WHERE aid = 2")
    assert second is not first and second.approval_id is None and second.writes_rows is True


def test_a_new_target_drops_the_remembered_decisions(tmp_path):
    session = _session(tmp_path)
    assert _decide(session, "SELECT 1").action == "allow"
    session.target = session.policy.targets["strict"]
    assert _decide(session, "SELECT 1").action == "deny"


def test_what_a_session_remembers_is_bounded(tmp_path):
    session = _session(tmp_path)
    for i in range(3 * DECISION_CACHE_ENTRIES):
        assert _decide(session, f"SELECT c{i} FROM accounts").action == "allow"
    assert len(session._decisions) <= DECISION_CACHE_ENTRIES + 2


class _Masker:
    def __init__(self, masked: set[str]):
        self.masked, self.asked = masked, 0

    def sensitive(self, sources, non_text=frozenset()) -> list[str]:
        self.asked += 1
        return sorted(f"{t}.{c}" for t, c in sources if c in self.masked)


def test_masked_predicate_columns_are_remembered_per_set_of_sources(tmp_path):
    session = _session(tmp_path)
    masker = _Masker({"email"})
    session.masker = type("SessionMasker", (), {"masker": masker})()
    plain = session.decide_sql("SELECT id FROM customers WHERE id = 1")
    on_email = [StatementLineage(columns=(), predicate_sources=frozenset({("public.customers", "email")}))]
    on_id = [StatementLineage(columns=(), predicate_sources=frozenset({("public.customers", "id")}))]
    both = [on_email[0], on_id[0]]

    def classes(lineages):
        return masking_step.masking_verdict(session, plain, lineages).classes

    for _ in range(3):
        assert "sensitive_predicate" in classes(on_email)
        assert "sensitive_predicate" not in classes(on_id)
        assert "sensitive_predicate" in classes(both)  # a masked source among plain ones still counts
    assert masker.asked == 3  # once per set of sources
    assert "sensitive_predicate" not in classes([StatementLineage(columns=())])


def test_spool_times_keep_their_format(tmp_path):
    session = _session(tmp_path)

    async def record():
        statement_id = session.record_statement("SELECT 1", protocol="simple", verdict=session.decide_sql("SELECT 1"))
        session.record_result(statement_id, started=0.0, rows=1, tag="SELECT 1", error=None)
        session.recorder.flush()

    _LOOP.run_until_complete(record())
    for line in session.recorder.spool.path.read_bytes().splitlines():
        event = json.loads(line)
        assert round(event["ts"], 6) == event["ts"]
        if event["type"] == "result":
            assert round(event["duration_ms"], 3) == event["duration_ms"] and event["duration_ms"] > 0


def test_a_statement_recorded_again_is_masked_every_time(tmp_path):
    """The recording holds no masked value in clear when the same text is recorded again (an
    extended-protocol statement at every Execute), nor when masking came on after it was recorded
    once; values in comments, dollar quotes and quoted identifiers are masked like plain literals."""
    from broker.masking import SessionMasker
    from jitgate.masking import Masker
    from jitgate.policy import MaskingConfig

    session = _session(tmp_path)
    config = MaskingConfig.model_validate({"rules": [{"detectors": ["email", "card"], "strategy": "redact"}]})
    texts = [
        "SELECT * FROM accounts WHERE owner = 'bob@example.com'",
        "SELECT 1 /* card 4111 1111 1111 1111 */",
        "SELECT $x$bob@example.com$x$",
        'SELECT "bob@example.com" FROM accounts',  # an identifier that looks like a value
    ]

    async def record():
        verdict = session.decide_sql(texts[0])
        session.record_statement(texts[0], protocol="simple", verdict=verdict)  # before masking is on
        session.use_masking(lambda target, principal: SessionMasker(Masker(config, b"k" * 32), target, None))
        for _ in range(2):
            for text in texts:
                session.record_statement(text, protocol="extended", verdict=verdict, params=["bob@example.com"])
        session.recorder.flush()

    _LOOP.run_until_complete(record())
    lines = session.recorder.spool.path.read_text().splitlines()
    statements = [json.loads(line) for line in lines if '"type":"statement"' in line]
    assert len(statements) == 1 + 2 * len(texts)
    after = "\n".join(lines[[i for i, line in enumerate(lines) if '"type":"statement"' in line][1]:])
    assert "bob@example.com" not in after and "4111 1111 1111 1111" not in after
    assert all(e["sha256"] == statements[1 + i % len(texts)]["sha256"] for i, e in enumerate(statements[1:]))


# --- what the client sends is recorded whole (masked) or refused -------------------------------------------

# Past masker.MAX_FREE_TEXT: the recording once showed only this padding, never the statement's end.
PAD = " " * 200_000
TAIL = "DELETE FROM accounts WHERE owner = 'bob@example.com'"


def _masked_session(tmp_path, monkeypatch, target="db", time_limit=600.0):
    """A session on a masked target whose long text is masked by a private worker pool."""
    from broker import sql_worker
    from broker.masking import SessionMasker
    from jitgate.masking import Masker
    from jitgate.policy import MaskingConfig

    pool = sql_worker.ClassifierPool(workers=1, time_limit=time_limit)
    monkeypatch.setattr(sql_worker, "pool", lambda: pool)
    session = _session(tmp_path, target)
    config = MaskingConfig.model_validate({"rules": [{"detectors": ["email", "card"], "strategy": "redact"}]})
    session.use_masking(lambda target, principal: SessionMasker(Masker(config, b"k" * 32), target, None, owner="alice"))
    return session, pool


def _recorded(session) -> list[dict]:
    session.recorder.flush()
    return [json.loads(line) for line in session.recorder.spool.path.read_text().splitlines()]


@pytest.mark.parametrize("padding", [f"/*{PAD}*/ ", f"--{PAD}\n", PAD, f"SELECT '{PAD}'; "],
                         ids=["comment", "line-comment", "whitespace", "literal"])
def test_a_padded_statement_is_recorded_whole_and_masked(tmp_path, monkeypatch, padding):
    """Attack: pad an allowed statement past the free-text cut (64 KB) so the recording never shows
    its end. Decision: allowed, and the recording holds every character, masked."""
    from jitgate.masking.masker import MAX_FREE_TEXT, TRUNCATED_MARKER

    session, pool = _masked_session(tmp_path, monkeypatch)
    sql = padding + TAIL
    assert len(sql) > 3 * MAX_FREE_TEXT

    async def run():
        try:
            verdict = await session.decide_sql_async(sql)
            assert verdict.action == "allow", verdict.message
            param = "x" * 100_000 + " carol@example.com"  # a Bind parameter past the cut too
            session.record_statement(sql, protocol="extended", verdict=verdict, params=[param])
            assert pool.served >= 1  # masked in a worker, not on the loop
        finally:
            await pool.aclose()

    _LOOP.run_until_complete(run())
    (event,) = [e for e in _recorded(session) if e["type"] == "statement"]
    assert event["sql"] == sql.replace("bob@example.com", "[email]")
    assert event["params"] == ["x" * 100_000 + " [email]"]
    assert TRUNCATED_MARKER not in json.dumps(event)
    import hashlib

    assert event["sha256"] == hashlib.sha256(sql.encode()).hexdigest()


def test_a_statement_the_worker_cannot_mask_is_refused_and_withheld(tmp_path, monkeypatch):
    """Attack: text that makes the masking worker overrun its time limit (or crash), hoping the
    statement runs with its recording withheld. Decision: refused, recorded as withheld with its hash."""
    from broker.session import WITHHELD_STATEMENT

    session, pool = _masked_session(tmp_path, monkeypatch, time_limit=0.001)
    sql = "/*" + "@" * 100_000 + "*/ " + TAIL

    async def run():
        try:
            verdict = await session.decide_sql_async(sql)
            session.record_statement(sql, protocol="simple", verdict=verdict)
            return verdict
        finally:
            await pool.aclose()

    verdict = _LOOP.run_until_complete(run())
    assert verdict.action == "deny" and "could not mask it for the session recording" in verdict.message
    (event,) = [e for e in _recorded(session) if e["type"] == "statement"]
    assert event["sql"] == WITHHELD_STATEMENT and event["decision"] == "deny" and "bob@example.com" not in json.dumps(event)


def test_text_longer_than_the_recording_holds_is_refused_whatever_the_policy(tmp_path, monkeypatch):
    """Attack: a statement over the recording's limit on a target whose policy allows what the
    classifier cannot read (unclassified: allow). Decision: refused; a shorter one still runs."""
    from broker.session import MAX_RECORDED_TEXT

    session, pool = _masked_session(tmp_path, monkeypatch, target="lenient")

    async def run():
        try:
            over = await session.decide_sql_async("SELECT 1 /*" + " " * MAX_RECORDED_TEXT + "*/")
            fits = await session.decide_sql_async("SELEC 1 /*" + " " * (MAX_RECORDED_TEXT // 2) + "*/")
            command = await session.decide_command_async("echo " + "a" * MAX_RECORDED_TEXT)
            return over, fits, command
        finally:
            await pool.aclose()

    over, fits, command = _LOOP.run_until_complete(run())
    assert over.action == "deny" and "over the 262144 the session recording holds" in over.message
    assert fits.action == "allow"  # unparsable, and the policy allows unclassified
    assert command.action == "deny" and "the session recording holds" in command.message
