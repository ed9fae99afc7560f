"""Attacks on the classifier's shape cache (jitgate/guardrails/sql.py, issue 18).

A statement whose shape (PostgreSQL's normalization: constants become $n, identifiers and
comments stay as written) was seen before gets the earlier verdict from a dictionary, unless a
rule read a constant's value (the verdict is then literal-sensitive and cached by exact text
only). How would one get past it: find two statements with one key and different verdicts.

- a constant that decides the verdict but that no rule marks as read: set_config's setting
  name, a pinned setting's value (SET, set_config, ALTER ROLE/DATABASE/SYSTEM ... SET), EXPLAIN's
  ANALYZE option written as a string, number or boolean;
- a tautology against a real predicate, LIMIT 1 against LIMIT ALL, a function name given as a
  string (query_to_xml('DELETE ...')), a DO body, a parameter ($1) where a constant was;
- different spellings of one identifier (quoted, U&"..."), a comment that hides a statement;
- texts of several statements, whose cached entry would carry another text's statements;
- the known pg_dump statement with one literal changed;
- flooding the cache past its bound, and sessions or policies that would share a verdict
  (the cache holds classifications only: each session's action comes from its own target).

Each group is classified in both orders, twice (the second pass answered by the cache), and
every answer must equal the classifier's answer without any cache.
"""
from __future__ import annotations

import pytest

from jitgate.guardrails import sql as sqlmod
from jitgate.guardrails.sql import classify_sql
from jitgate.policy import parse_policy
from jitgate.policy_explain import explain_sql
from tests.guardrails.sql_corpus import CORPUS

# (statements that try to share one cache key, the classes each must get)
COLLISIONS = [
    # set_config's first argument names the setting: a role change or a pinned setting
    # must not inherit the verdict of an ordinary one.
    (["SELECT set_config('search_path', 'x', false)", "SELECT set_config('role', 'x', false)",
      "SELECT set_config('session_authorization', 'x', false)",
      "SELECT set_config('standard_conforming_strings', 'off', false)",
      "SELECT set_config('log_statement', 'none', false)", "SELECT set_config($1, 'x', false)"],
     [{"read", "session"}, "privilege", "privilege", "pinned_setting", "server_admin", "unclassified"]),
    # A pinned setting's value decides: kept or refused.
    (["SET standard_conforming_strings = on", "SET standard_conforming_strings = off",
      "SET standard_conforming_strings = 'off'", "SET standard_conforming_strings = 0",
      "SET standard_conforming_strings = 1"],
     [{"session"}, "pinned_setting", "pinned_setting", "pinned_setting", {"session"}]),
    (["SET client_encoding = 'UTF8'", "SET client_encoding = 'SJIS'", "SET client_encoding = 'utf-8'"],
     [{"session"}, "pinned_setting", {"session"}]),
    (["ALTER ROLE x SET standard_conforming_strings = on", "ALTER ROLE x SET standard_conforming_strings = off"],
     ["privilege", "pinned_setting"]),
    (["ALTER DATABASE d SET standard_conforming_strings = 'on'", "ALTER DATABASE d SET standard_conforming_strings = 'off'"],
     ["server_admin", "pinned_setting"]),
    # EXPLAIN runs its statement unless ANALYZE is explicitly off, however it is written.
    (["EXPLAIN (ANALYZE false) DELETE FROM t", "EXPLAIN (ANALYZE true) DELETE FROM t",
      "EXPLAIN (ANALYZE 'off') DELETE FROM t", "EXPLAIN (ANALYZE 'on') DELETE FROM t",
      "EXPLAIN (ANALYZE 0) DELETE FROM t", "EXPLAIN (ANALYZE 1) DELETE FROM t"],
     [{"read"}, "dml_unbounded", {"read"}, "dml_unbounded", {"read"}, "dml_unbounded"]),
    # A tautology is not a filter; a constant compared to a column is.
    (["DELETE FROM t WHERE 1 = 1", "DELETE FROM t WHERE 1 = 2", "DELETE FROM t WHERE id = 1",
      "DELETE FROM t WHERE true", "DELETE FROM t WHERE $1", "DELETE FROM t WHERE id = $1"],
     ["dml_unbounded", "dml_unbounded", "dml_bounded", "dml_unbounded", "dml_unbounded", "dml_bounded"]),
    (["UPDATE t SET a = 1 WHERE 'x' = 'x'", "UPDATE t SET a = 1 WHERE a = 'x'"], ["dml_unbounded", "dml_bounded"]),
    # LIMIT's value never makes a DML bounded; the measured row limit counts what it changes.
    (["DELETE FROM t WHERE id IN (SELECT id FROM t LIMIT 1)", "DELETE FROM t WHERE id IN (SELECT id FROM t LIMIT ALL)",
      "SELECT * FROM t LIMIT 1", "SELECT * FROM t LIMIT ALL"],
     ["dml_unbounded", "dml_unbounded", {"read"}, {"read"}]),
    # A query given as a string runs whatever it says: the function is classified by its name.
    (["SELECT query_to_xml('SELECT 1', true, true, '')", "SELECT query_to_xml('DELETE FROM t RETURNING 1', true, true, '')"],
     [None, None]),
    (["DO $$BEGIN NULL; END$$", "DO $$BEGIN DELETE FROM t; END$$", "DO 'BEGIN DROP TABLE t; END'"],
     ["procedural", "procedural", "procedural"]),
    # One function, several spellings; a name in a string is not a call.
    (["SELECT pg_read_file('x')", "SELECT \"pg_read_file\"('x')", "SELECT U&\"pg\\005fread_file\"('x')",
      "SELECT lower('pg_read_file')", "SELECT 'pg_read_file'::text"],
     ["side_effect_function", "side_effect_function", "side_effect_function", {"read"}, {"read"}]),
    # A comment hides text from the parser and stays in the key.
    (["SELECT 1 /* ; DROP TABLE t */", "SELECT 1 -- ; DROP TABLE t", "SELECT 1 ; DROP TABLE t"],
     [{"read"}, {"read"}, "ddl"]),
    # The known pg_dump statement is matched on its literals; a changed value is not it.
    (["SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'",
      "SELECT set_config(name, '', false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'",
      "SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE name = 'role'"],
     [{"session"}, "unclassified", "unclassified"]),
    # A NUL cuts the C string the normalizer reads: never keyed by shape.
    (["SELECT 7", "SELECT 7\x00; DROP TABLE x"], [{"read"}, "unclassified"]),
]


def _uncached(sql: str):
    return sqlmod._classify_uncached(sql)


def _check(expected, classes, sql):
    if expected is None:
        return
    if isinstance(expected, set):
        assert classes == expected, (sql, classes)
    else:
        assert expected in classes, (sql, classes)


@pytest.mark.parametrize("group, expected", COLLISIONS, ids=[g[0][:50] for g, _ in COLLISIONS])
def test_statements_sharing_a_key_keep_their_own_verdicts(group, expected):
    truth = {sql: _uncached(sql) for sql in group}
    for order in (group, list(reversed(group))):
        sqlmod._SHAPE_CACHE.clear()
        sqlmod._classify_cached.cache_clear()
        for _ in range(2):  # the second pass is answered by the caches
            for sql, want in zip(order, expected if order is group else list(reversed(expected))):
                got = classify_sql(sql)
                assert got.classes == truth[sql].classes, (sql, got.classes, truth[sql].classes)
                assert got.writes_rows == truth[sql].writes_rows and got.unmeasurable == truth[sql].unmeasurable, sql
                assert [s.reasons for s in got.statements] == [s.reasons for s in truth[sql].statements], sql
                _check(want, got.classes, sql)
    # The key really is shared where the attack needs it to be (else the test proves nothing).
    if group[0].startswith(("SELECT set_config('search", "SET standard", "SELECT query_to_xml", "DELETE FROM t WHERE id IN")):
        plain = [s for s in group if "$1" not in s]
        keys = {sqlmod.pg_normalize(s) for s in plain}
        assert len(keys) < len(plain), keys


def test_a_cache_hit_gives_the_statement_its_own_text():
    classify_sql("SELECT abalance FROM pgbench_accounts WHERE aid = 17")
    got = classify_sql("SELECT abalance FROM pgbench_accounts WHERE aid = 42")
    assert [s.text for s in got.statements] == ["SELECT abalance FROM pgbench_accounts WHERE aid = 42"]
    # Several statements: each keeps its own text (such texts are cached by exact text only).
    classify_sql("SELECT 1 FROM t WHERE email = 'ada@example.com'; SELECT 2")
    got = classify_sql("SELECT 1 FROM t WHERE email = 'grace@example.com'; SELECT 3")
    assert [s.text for s in got.statements] == ["SELECT 1 FROM t WHERE email = 'grace@example.com'", "SELECT 3"]


def test_a_hit_costs_no_parse(monkeypatch):
    classify_sql("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
    calls = []
    real = sqlmod.parse_sql
    monkeypatch.setattr(sqlmod, "parse_sql", lambda text: calls.append(text) or real(text))
    for aid in range(2, 50):
        assert classify_sql(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid}").classes == {"read"}
    assert calls == []
    assert "privilege" in classify_sql("SELECT set_config('role', 'x', false)").classes
    assert calls  # literal-sensitive: parsed


def test_the_cache_is_bounded_and_eviction_changes_no_verdict():
    sqlmod._SHAPE_CACHE.clear()
    first = "DELETE FROM t WHERE id = 5"
    assert "dml_bounded" in classify_sql(first).classes
    for i in range(sqlmod._SHAPE_CACHE_SIZE + 50):
        classify_sql(f"SELECT c{i} FROM t WHERE id = {i}")
    assert len(sqlmod._SHAPE_CACHE) <= sqlmod._SHAPE_CACHE_SIZE
    assert sqlmod.pg_normalize(first) not in sqlmod._SHAPE_CACHE  # evicted, least recently used
    assert "dml_bounded" in classify_sql("DELETE FROM t WHERE id = 6").classes
    assert "dml_unbounded" in classify_sql("DELETE FROM t WHERE 6 = 6").classes


def test_the_cache_shares_classifications_not_decisions():
    """One statement, two targets (or groups): the cached classification is the same, each
    session's decision comes from its own target and groups."""
    policy = parse_policy("""
identity: {issuer: "https://idp.example.com", audience: jitgate}
targets:
  strict:
    kind: postgres
    address: 127.0.0.1:5432
    database: demo
    username: u
    credential: env:X
    allow: {groups: [sre, dba]}
    guardrails: {dml_unbounded: deny}
    overrides:
      - groups: [dba]
        guardrails: {dml_unbounded: allow}
  lax:
    kind: postgres
    address: 127.0.0.1:5432
    database: demo
    username: u
    credential: env:X
    allow: {groups: [sre]}
    guardrails: {dml_unbounded: allow}
""")
    sql = "DELETE FROM t WHERE 1 = 1"
    for _ in range(2):
        assert explain_sql(policy, "strict", "a@example.com", frozenset({"sre"}), sql)["decision"] == "deny"
        assert explain_sql(policy, "lax", "a@example.com", frozenset({"sre"}), sql)["decision"] == "allow"
        assert explain_sql(policy, "strict", "b@example.com", frozenset({"dba"}), sql)["decision"] == "allow"
        assert explain_sql(policy, "strict", "a@example.com", frozenset({"sre"}), "DELETE FROM t WHERE 2 = 2")["decision"] == "deny"


def test_the_bypass_corpus_twice_the_second_pass_from_the_cache():
    """Every entry of tests/guardrails/sql_corpus.py gets its decision from a cold cache and again
    from a warm one (in reverse order, so shapes seen first in one pass come last in the other)."""
    from tests.guardrails.test_sql_corpus import DEMO_POLICY

    policy = parse_policy(DEMO_POLICY)
    sqlmod._SHAPE_CACHE.clear()
    sqlmod._classify_cached.cache_clear()
    failures = []
    for cases in (CORPUS, list(reversed(CORPUS)), CORPUS):
        for case in cases:
            answer = explain_sql(policy, "demo", "alice@example.com", frozenset({"sre"}), case.sql.replace("%s", "$1"))
            ok = (answer["decision"] == "allow" and answer["writes_rows"]) if case.decision == "measured" \
                else answer["decision"] == case.decision
            if not ok:
                failures.append(f"{case.sql!r}: {answer['decision']} (want {case.decision})")
    assert not failures, "\n".join(failures)
    assert sqlmod._SHAPE_CACHE  # the cache was in use
