"""Issue 12, part 1, end to end through the broker: the classifier parses what the server parses.

Each attack from the issue is tried the way an attacker would (psql, psycopg, asyncpg) against
the real PostgreSQL behind the broker, and the victim table must be unchanged afterwards.
"""
from __future__ import annotations

import asyncio
import os
import subprocess

import asyncpg
import psycopg
import pytest

GUARD_TARGET = """
  demo-guard:
    kind: postgres
    address: 127.0.0.1:{pg_port}
    database: demo
    username: jitgate_broker
    credential: env:JITGATE_DEMO_DB_PASSWORD
    allow:
      groups: [sre]
    guardrails:
      dml_unbounded: approve
      ddl: approve
    approvals:
      approver_groups: [dba]
      wait: 2s
"""


@pytest.fixture(scope="module")
def guard(stack):
    stack.add_targets(GUARD_TARGET)
    stack.pg.psql("CREATE TABLE IF NOT EXISTS victim (id int); ALTER TABLE victim OWNER TO jitgate_broker; "
                  "TRUNCATE victim; INSERT INTO victim SELECT generate_series(1, 10)", "demo")
    return "demo-guard"


def _victim_rows(stack) -> str:
    return stack.pg.psql("SELECT count(*) FROM victim", "demo")


def _psql(dsn: str, script: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["psql", "-X", "-A", "-t", dsn], input=script, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_standard_conforming_strings_off_is_refused_and_the_quote_trick_stays_a_string(broker_dsn, guard, stack):
    result = _psql(broker_dsn(guard),
                   "SET standard_conforming_strings = off;\n"
                   "SELECT 'a\\'' ; DROP TABLE victim; --';\n"
                   "SHOW standard_conforming_strings;\n")
    assert "pins standard_conforming_strings = on" in result.stderr, result.stderr
    # Read with the pinned setting, the attack is one string literal: psql prints it back.
    assert "a\\' ; DROP TABLE victim; --" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "on"
    assert _victim_rows(stack) == "10"


@pytest.mark.parametrize("how", [
    "SELECT set_config('standard_conforming_strings', 'off', false)",
    "SET LOCAL standard_conforming_strings TO off",
    "SET backslash_quote = on",
    "ALTER ROLE jitgate_broker SET standard_conforming_strings = off",
    "SELECT set_config(name, 'off', false) FROM pg_settings WHERE name = 'standard_conforming_strings'",
])
def test_every_way_of_changing_a_pinned_setting_is_refused(broker_dsn, guard, how):
    with psycopg.connect(broker_dsn(guard), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as err:
            conn.execute(how)
        assert "refused by policy" in str(err.value)
        assert conn.execute("SHOW standard_conforming_strings").fetchone()[0] == "on"  # the session goes on


@pytest.mark.parametrize("encoding", ["GBK", "SJIS", "BIG5", "GB18030", "UHC", "JOHAB", "LATIN9", "WIN1252"])
def test_other_client_encodings_are_refused_with_what_is_supported(broker_dsn, guard, stack, encoding):
    result = _psql(broker_dsn(guard),
                   f"SET client_encoding = '{encoding}';\n"
                   "SELECT E'\u4e01\\' ; DROP TABLE victim; --';\n"
                   "SHOW client_encoding;\n")
    assert "pins client_encoding = UTF8" in result.stderr, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "UTF8"  # refused cleanly; the session was not killed
    assert _victim_rows(stack) == "10"


@pytest.mark.parametrize(("env", "setting"), [
    ({"PGCLIENTENCODING": "SJIS"}, "client_encoding"),
    ({"PGCLIENTENCODING": "LATIN1"}, "client_encoding"),
    ({"PGOPTIONS": "-c standard_conforming_strings=off"}, "standard_conforming_strings"),
    ({"PGOPTIONS": "--standard-conforming-strings=off"}, "standard_conforming_strings"),
    ({"PGOPTIONS": "-c backslash_quote=on"}, "backslash_quote"),
])
def test_startup_parameters_that_change_lexing_are_refused(broker_dsn, guard, env, setting):
    result = _psql(broker_dsn(guard), "SELECT 1;\n", env=env)
    assert result.returncode != 0
    assert f"pins {setting}" in result.stderr, result.stderr


def test_asyncpg_server_settings_cannot_switch_lexing(stack, token, guard):
    async def run():
        with pytest.raises(asyncpg.PostgresError) as err:
            await asyncpg.connect(host="127.0.0.1", port=stack.broker_port, user="alice@example.com",
                                  password=token(), database=guard, ssl="require",
                                  server_settings={"standard_conforming_strings": "off"})
        assert "pins standard_conforming_strings" in str(err.value)
        # utf-8 spelled another way is the pinned value: accepted.
        conn = await asyncpg.connect(host="127.0.0.1", port=stack.broker_port, user="alice@example.com",
                                     password=token(), database=guard, ssl="require",
                                     server_settings={"client_encoding": "unicode"})
        try:
            assert await conn.fetchval("SHOW client_encoding") == "UTF8"
        finally:
            await conn.close()

    asyncio.run(run())


def test_reset_and_discard_return_to_the_pinned_values(broker_dsn, guard, stack):
    # Even a role default cannot move them: the broker sends the pinned values at login.
    stack.pg.psql("ALTER ROLE jitgate_broker SET standard_conforming_strings = off", "demo")
    try:
        with psycopg.connect(broker_dsn(guard), autocommit=True) as conn:
            assert conn.execute("SHOW standard_conforming_strings").fetchone()[0] == "on"
            conn.execute("RESET standard_conforming_strings")
            conn.execute("RESET ALL")
            conn.execute("DISCARD ALL")
            assert conn.execute("SHOW standard_conforming_strings").fetchone()[0] == "on"
            assert conn.execute("SHOW backslash_quote").fetchone()[0] == "safe_encoding"
    finally:
        stack.pg.psql("ALTER ROLE jitgate_broker RESET standard_conforming_strings", "demo")


def test_a_hidden_change_reported_by_the_server_ends_the_session(broker_dsn, guard, stack):
    # A function the classifier cannot see into flips the setting; PostgreSQL reports it.
    stack.pg.psql("CREATE OR REPLACE FUNCTION sneaky() RETURNS int LANGUAGE plpgsql AS "
                  "$$BEGIN PERFORM set_config('standard_conforming_strings', 'off', false); RETURN 1; END$$; "
                  "GRANT EXECUTE ON FUNCTION sneaky() TO jitgate_broker", "demo")
    with psycopg.connect(broker_dsn(guard), autocommit=True) as conn:
        with pytest.raises(psycopg.OperationalError) as err:
            conn.execute("SELECT sneaky()")
        assert "can no longer judge statements" in str(err.value)
        assert conn.closed or conn.broken
    assert _victim_rows(stack) == "10"


def test_explain_last_analyze_option_wins_and_is_held(broker_dsn, guard, stack):
    result = _psql(broker_dsn(guard), "explain (analyze false, analyze true) delete from victim;\n")
    assert "needs approval" in result.stderr or "approval request" in result.stderr, result.stderr
    assert _victim_rows(stack) == "10"


def test_set_config_is_classified_like_set(broker_dsn, guard):
    with psycopg.connect(broker_dsn(guard), autocommit=True) as conn:
        conn.execute("SELECT set_config('search_path', 'public', false)")
        conn.execute("SET search_path = public")
        with pytest.raises(psycopg.Error) as err:
            conn.execute("SELECT set_config('role', 'postgres', false)")
        assert "did not run" in str(err.value)  # privilege: held for approval, like SET ROLE
