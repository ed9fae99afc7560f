"""The guardrail classes masking adds (sensitive_predicate, sensitive_write), end to end, through
psql (the relay) and the agent API, which must decide alike.

Attacks they close:
- a DELETE whose WHERE reads a masked column skipped the measured row limit on the relay (adding
  the class rebuilt the verdict without ``writes_rows``): ``delete from t where note <> 'x'``
  removed every row with no approval;
- the agent API never applied the masking classes, so ``sensitive_predicate: deny`` held on psql
  and not over HTTP/MCP;
- ``update t set note = translate(email, ...)`` copies a masked value, in a shape no detector
  knows, into a column that other sessions and identities read as plain text.
"""
from __future__ import annotations

import subprocess

import pytest

from tests.agent.conftest import assert_problem


def _target(name: str, extra: str = "") -> str:
    """A demo-database target with a column rule on email and detectors on every text column."""
    return f"""
  {name}:
    kind: postgres
    address: 127.0.0.1:{{pg_port}}
    database: demo
    username: jitgate_broker
    credential: env:JITGATE_DEMO_DB_PASSWORD
    allow:
      groups: [sre]
{extra}    approvals:
      approver_groups: [dba]
      wait: 2s
    masking:
      rules:
        - columns: [email]
          strategy: redact
        - detectors: [email, phone]
          strategy: redact
"""


TARGETS = (_target("demo-mc", "    max_rows_changed: 100\n")
           + _target("demo-mc-strict", "    guardrails:\n      sensitive_predicate: deny\n      sensitive_write: deny\n"))

ROWS = 200


@pytest.fixture(scope="module")
def targets(stack):
    stack.add_targets(TARGETS)


@pytest.fixture()
def table(stack, targets):
    stack.pg.psql("DROP VIEW IF EXISTS mc_stash_view; DROP TABLE IF EXISTS mc_notes; CREATE TABLE mc_notes (id int PRIMARY KEY, email text, note text); "
                  f"INSERT INTO mc_notes SELECT g, 'user' || g || '@example.com', 'note ' || g "
                  f"FROM generate_series(1, {ROWS}) g; ALTER TABLE mc_notes OWNER TO jitgate_broker", "demo")


def _state(stack) -> str:
    return stack.pg.psql("SELECT count(*) || ':' || md5(string_agg(email || note, ',' ORDER BY id)) FROM mc_notes", "demo")


def _psql(dsn: str, sql: str) -> subprocess.CompletedProcess:
    return subprocess.run(["psql", "-X", "-A", "-t", dsn, "-c", sql], capture_output=True, text=True, timeout=90)


@pytest.mark.parametrize("sql", [
    "delete from mc_notes where note <> 'x'",  # a column detectors scan
    "delete from mc_notes where email like '%'",  # a column under a column rule
    "update mc_notes set id = id + 1000 where upper(note) is not null",
])
def test_a_predicate_on_a_masked_column_does_not_skip_the_measured_row_limit(broker_dsn, stack, table, sql):
    before = _state(stack)
    result = _psql(broker_dsn("demo-mc"), sql)
    assert result.returncode != 0, result.stdout
    assert f"{ROWS} rows" in result.stderr and "over the limit of 100" in result.stderr, result.stderr
    assert _state(stack) == before


def test_agent_api_measures_it_too(api, stack, table):
    before = _state(stack)
    body = assert_problem(api().post("/v1/targets/demo-mc/query", json={"sql": "DELETE FROM mc_notes WHERE note <> 'x'"}),
                          202, "approval_required")
    assert f"would delete {ROWS} rows" in body["detail"], body
    assert _state(stack) == before


WRITES = [
    "update mc_notes set note = translate(email, '@.', '#,') where id = 1",
    "update mc_notes set note = note || ' seen' where id = 1",
    "insert into mc_notes select 1000, 'x', upper(email) from mc_notes where id = 2",
]


@pytest.mark.parametrize("sql", WRITES)
def test_writing_a_masked_value_into_a_table_waits_for_approval(broker_dsn, stack, table, sql):
    before = _state(stack)
    result = _psql(broker_dsn("demo-mc"), sql)
    assert result.returncode != 0, result.stdout
    assert "sensitive_write" in result.stderr, result.stderr
    assert _state(stack) == before
    # A write of plain values is not held.
    plain = _psql(broker_dsn("demo-mc"), "update mc_notes set note = 'plain' where id = 3")
    assert plain.returncode == 0 and plain.stdout.strip() == "UPDATE 1", plain.stderr


def test_agent_api_holds_the_write_and_runs_it_once_approved(api, stack, table, decide):
    client = api()
    sql = "UPDATE mc_notes SET note = translate(email, '@', '#') WHERE id = 1"
    body = assert_problem(client.post("/v1/targets/demo-mc/query", json={"sql": sql}), 202, "approval_required")
    assert "sensitive_write" in body["detail"] and "mc_notes.email" in body["detail"], body
    assert stack.pg.psql("SELECT note FROM mc_notes WHERE id = 1", "demo") == "note 1"  # nothing was sent
    decide(body["approval_id"], "approve")
    r = client.post("/v1/targets/demo-mc/query", json={"sql": sql, "wait_seconds": 5})
    assert r.status_code == 200 and r.json()["command_tag"] == "UPDATE 1", r.text
    assert stack.pg.psql("SELECT note FROM mc_notes WHERE id = 1", "demo") == "user1#example.com"


@pytest.mark.parametrize("sql, klass", [
    ("SELECT id FROM mc_notes WHERE email LIKE 'user1%' ORDER BY id", "sensitive_predicate"),
    ("SELECT id FROM mc_notes WHERE note = 'note 7'", "sensitive_predicate"),
    ("UPDATE mc_notes SET note = lower(email) WHERE id = 4", "sensitive_write"),
])
def test_deny_holds_on_both_interfaces(api, broker_dsn, stack, table, sql, klass):
    result = _psql(broker_dsn("demo-mc-strict"), sql)
    assert result.returncode != 0 and klass in result.stderr and "refused by policy" in result.stderr, result
    body = assert_problem(api().post("/v1/targets/demo-mc-strict/query", json={"sql": sql}), 403, "refused")
    assert klass in body["classes"] and klass in body["detail"], body
    # A predicate and a write on plain columns pass on both.
    assert _psql(broker_dsn("demo-mc-strict"), "SELECT count(*) FROM mc_notes WHERE id < 5").stdout.strip() == "4"
    r = api().post("/v1/targets/demo-mc-strict/query", json={"sql": "SELECT count(*) FROM mc_notes WHERE id < $1",
                                                             "params": [5]})
    assert r.status_code == 200 and r.json()["rows"] == [[4]], r.text


# A function that is not built in can write what it is given, or what its body reads itself, into
# a table that every other session and identity reads in clear: lineage cannot follow it (the
# result is masked whole), so the measured row limit counts what it changed, and any changed row
# is sensitive_write. Each entry: (statement, whether it changes rows: held / refused, or passes).
FUNCTION_WRITES = [
    ("select mc_stash(translate(email, '@.', '#,')) from mc_notes where id <= 3", True),  # given the value
    ("select mc_copy()", True),  # its body reads the masked column itself
    ("select id from mc_notes where id = 1 and mc_stash(note) = 1", True),  # called from a predicate
    ("select public.mc_stash(note) from mc_notes where id = 1", True),  # schema-qualified
    ("select * from mc_stash_view", True),  # inside a view: the statement names no function
    ("begin; select count(*) from mc_stash_view; commit", True),  # cannot be measured: held up front
    ("copy (select mc_stash(note) from mc_notes where id <= 3) to stdout", True),  # COPY TO runs it too
    ("select mc_pure(id) from mc_notes where id <= 3", False),  # writes nothing: measured 0 rows, runs
    ("copy (select mc_pure(id) from mc_notes where id <= 3) to stdout", False),
]


@pytest.fixture()
def functions(stack, table):
    stack.pg.psql(
        "DROP TABLE IF EXISTS mc_dump; CREATE TABLE mc_dump (note text); ALTER TABLE mc_dump OWNER TO jitgate_broker; "
        "CREATE OR REPLACE FUNCTION mc_stash(v text) RETURNS int LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO mc_dump VALUES (v); RETURN 1; END $$; "
        "CREATE OR REPLACE FUNCTION mc_copy() RETURNS int LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO mc_dump SELECT translate(email, '@.', '#,') FROM mc_notes; RETURN 1; END $$; "
        "CREATE OR REPLACE FUNCTION mc_pure(v int) RETURNS int LANGUAGE sql AS $$ SELECT v * 2 $$; "
        "CREATE OR REPLACE VIEW mc_stash_view AS SELECT id, mc_stash(translate(email, '@.', '#,')) AS s FROM mc_notes "
        "WHERE id <= 2; ALTER VIEW mc_stash_view OWNER TO jitgate_broker", "demo")
    yield
    # Other tests read the whole schema (schema_to_xml('public', ...)): a view that writes must not outlive these.
    stack.pg.psql("DROP VIEW IF EXISTS mc_stash_view; DROP FUNCTION IF EXISTS mc_stash(text), mc_copy(), mc_pure(int); "
                  "DROP TABLE IF EXISTS mc_dump", "demo")


def _dumped(stack) -> str:
    return stack.pg.psql("SELECT count(*) FROM mc_dump", "demo")


@pytest.mark.parametrize("sql, writes", FUNCTION_WRITES)
def test_a_function_that_writes_masked_data_waits_for_approval(broker_dsn, stack, functions, sql, writes):
    result = _psql(broker_dsn("demo-mc"), sql)
    if writes:
        assert result.returncode != 0, result.stdout
        assert "sensitive_write" in result.stderr, result.stderr
        assert _dumped(stack) == "0"  # rolled back: nothing reached the plain table
    else:
        assert result.returncode == 0, result.stderr
        assert len(result.stdout.splitlines()) == 3, result.stdout  # (masked whole: lineage cannot follow it)
    strict = _psql(broker_dsn("demo-mc-strict"), sql)
    if writes:
        assert strict.returncode != 0 and "refused by policy" in strict.stderr and "sensitive_write" in strict.stderr, strict
        assert _dumped(stack) == "0"
    else:
        assert strict.returncode == 0, strict.stderr


def test_agent_api_holds_a_function_write_and_runs_it_once_approved(api, stack, functions, decide):
    client = api()
    sql = "SELECT mc_stash(translate(email, '@.', '#,')) FROM mc_notes WHERE id <= 2"
    body = assert_problem(client.post("/v1/targets/demo-mc/query", json={"sql": sql}), 202, "approval_required")
    assert "sensitive_write" in body["detail"] and "2 row(s)" in body["detail"], body
    assert _dumped(stack) == "0"
    refused = assert_problem(api().post("/v1/targets/demo-mc-strict/query", json={"sql": sql}), 403, "refused")
    assert "sensitive_write" in refused["detail"], refused
    assert _dumped(stack) == "0"
    decide(body["approval_id"], "approve")
    r = client.post("/v1/targets/demo-mc/query", json={"sql": sql, "wait_seconds": 5})
    assert r.status_code == 200, r.text
    assert _dumped(stack) == "2"  # approved: it ran once, for real
    # A function that writes nothing runs at once (its result masked whole, as lineage cannot follow it).
    r = client.post("/v1/targets/demo-mc/query", json={"sql": "SELECT mc_pure(id) FROM mc_notes WHERE id <= 3"})
    assert r.status_code == 200 and len(r.json()["rows"]) == 3, r.text


def test_a_notification_reaches_a_masked_listener_withheld(broker_dsn, stack, table):
    """pg_notify / NOTIFY carry any text another session (or a function) chose: a masked session gets
    the payload scanned by the target's detectors, as a notice's text (it passed in clear before)."""
    import psycopg  # noqa: PLC0415

    with psycopg.connect(broker_dsn("demo-mc"), autocommit=True) as conn:
        conn.execute("LISTEN mc_channel")
        stack.pg.psql("NOTIFY mc_channel, 'mail user1@example.com now'; NOTIFY mc_channel, 'plain'", "demo")
        notes = list(conn.notifies(timeout=30, stop_after=2))
    payloads = [n.payload for n in notes]
    assert len(payloads) == 2 and "user1@example.com" not in payloads[0] and payloads[0].startswith("mail "), payloads
    assert payloads[1] == "plain" and all(n.channel == "mc_channel" for n in notes), notes


# Built-ins that keep an argument where a later statement reads it back without its lineage: a
# masked value stored there is a sensitive_write. Each: the statement that stores, and the one that
# read the value back in clear before (a setting passes the guardrails as class `session`).
SIDE_CHANNELS = [
    pytest.param("select length(set_config('jg.x', translate(email, '@.', '#,'), false)) from mc_notes where id = 1",
                 "select current_setting('jg.x', true)", id="set_config then current_setting"),
    pytest.param("select set_config('application_name', translate(email, '@.', '#,'), false) is null "
                 "from mc_notes where id = 1",
                 "select application_name from pg_stat_activity where pid = pg_backend_pid()",
                 id="application_name, which every session sees"),
    pytest.param("prepare jg_p as select set_config('jg.x', translate(email, '@.', '#,'), false) is null "
                 "from mc_notes where id = 1;\nexecute jg_p",
                 "select current_setting('jg.x', true)", id="wrapped in PREPARE, run by EXECUTE"),
]


@pytest.mark.parametrize("store, read_back", SIDE_CHANNELS)
def test_a_masked_value_kept_in_server_state_is_a_sensitive_write(broker_dsn, stack, table, store, read_back):
    script = f"{store};\n{read_back};\n"
    for target, refusal in (("demo-mc", "did not run"), ("demo-mc-strict", "refused by policy")):
        result = subprocess.run(["psql", "-X", "-A", "-t", broker_dsn(target)], input=script, capture_output=True,
                                text=True, timeout=90)
        assert "sensitive_write" in result.stderr and refusal in result.stderr, result.stderr
        if target == "demo-mc-strict":  # the refusal names where the value would have gone
            assert "into pg_catalog.pg_settings" in result.stderr, result.stderr
        assert "user1#example,com" not in result.stdout, result.stdout  # (read it back in clear before)
    # A setting from a constant, or from a plain column, is not held.
    plain = _psql(broker_dsn("demo-mc"), "select set_config('jg.x', 'plain ' || id, false) from mc_notes where id = 3")
    assert plain.returncode == 0 and plain.stdout.strip() == "plain 3", plain.stderr
