"""The SQL bypass corpus: statements an attacker would try, each with the decision it must get.

Decisions are those of the demo target's policy (ddl, dml_unbounded, privilege, server_admin,
procedural, side_effect_function: approve; drop_database, copy_program, unclassified,
pinned_setting: deny; max_rows_changed 100), for a caller in group ``sre``:

- ``allow``: runs (``changes``: it may change data, so the fixture is rebuilt after it);
- ``approve`` / ``deny``: refused or held by the classifier, data unchanged;
- ``measured``: allowed by the classifier, then counted by the broker, rolled back and held
  because it changed more than 100 rows; data unchanged.

Tables live in schema ``corpus`` (see SETUP): c_orders (200 rows), c_victim, a view over
c_orders, a partitioned table (200 rows), an inheritance parent with 150 rows in its child,
a table whose INSERT trigger deletes every order, a function that deletes every order.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    sql: str
    decision: str  # allow | approve | deny | measured
    params: tuple | None = None  # extended protocol with these parameters
    changes: bool = False  # an allowed statement that may change data


def allow(sql, params=None):
    return Case(sql, "allow", params)


def change(sql, params=None):
    return Case(sql, "allow", params, changes=True)


def approve(sql, params=None):
    return Case(sql, "approve", params)


def deny(sql, params=None):
    return Case(sql, "deny", params)


def measured(sql, params=None):
    return Case(sql, "measured", params)


SETUP = """
DROP SCHEMA IF EXISTS corpus CASCADE;
CREATE SCHEMA corpus AUTHORIZATION jitgate_broker;
SET ROLE jitgate_broker;
CREATE TABLE corpus.c_orders (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO corpus.c_orders SELECT g, g FROM generate_series(1, 200) g;
CREATE TABLE corpus.c_victim (id int);
INSERT INTO corpus.c_victim VALUES (1), (2), (3);
CREATE VIEW corpus.c_orders_view AS SELECT * FROM corpus.c_orders;
CREATE TABLE corpus.c_parted (id int, k int) PARTITION BY RANGE (id);
CREATE TABLE corpus.c_parted_p1 PARTITION OF corpus.c_parted FOR VALUES FROM (0) TO (101);
CREATE TABLE corpus.c_parted_p2 PARTITION OF corpus.c_parted FOR VALUES FROM (101) TO (100000);
INSERT INTO corpus.c_parted SELECT g, g FROM generate_series(1, 200) g;
CREATE TABLE corpus.c_parent (id int, v int);
CREATE TABLE corpus.c_child () INHERITS (corpus.c_parent);
INSERT INTO corpus.c_child SELECT g, g FROM generate_series(1, 150) g;
CREATE TABLE corpus.c_audit (id int);
CREATE FUNCTION corpus.c_wipe() RETURNS int LANGUAGE sql AS 'DELETE FROM corpus.c_orders; SELECT 1';
CREATE FUNCTION corpus.c_trg() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN DELETE FROM corpus.c_orders; RETURN NEW; END$$;
CREATE TRIGGER c_audit_wipe AFTER INSERT ON corpus.c_audit FOR EACH ROW EXECUTE FUNCTION corpus.c_trg();
CREATE SEQUENCE corpus.c_seq;
RESET ROLE;
"""

# Everything an attacker could change, in one digest (read as the superuser).
FINGERPRINT = """
SELECT md5(string_agg(x, ',' ORDER BY x)) FROM (
  SELECT 'o' || id || ':' || v FROM corpus.c_orders
  UNION ALL SELECT 'v' || id FROM corpus.c_victim
  UNION ALL SELECT 'p' || id || ':' || k FROM corpus.c_parted
  UNION ALL SELECT 'c' || id || ':' || v FROM corpus.c_parent
  UNION ALL SELECT 'a' || id FROM corpus.c_audit
  UNION ALL SELECT 'r' || relname || relkind::text FROM pg_class WHERE relnamespace = 'corpus'::regnamespace
  UNION ALL SELECT 'f' || proname FROM pg_proc WHERE pronamespace = 'corpus'::regnamespace
  UNION ALL SELECT 't' || tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
            WHERE c.relnamespace = 'corpus'::regnamespace
  UNION ALL SELECT 'q' || rulename FROM pg_rules WHERE schemaname = 'corpus'
  UNION ALL SELECT 's' || last_value || is_called::text FROM corpus.c_seq
  UNION ALL SELECT 'g' || coalesce(array_to_string(setconfig, ' '), '') FROM pg_db_role_setting
  UNION ALL SELECT 'n' || nspname FROM pg_namespace
  UNION ALL SELECT 'u' || rolname || rolsuper::text FROM pg_roles
  UNION ALL SELECT 'l' || count(*) FROM pg_largeobject_metadata
  UNION ALL SELECT 'd' || datname FROM pg_database
) t(x)
"""

CORPUS: list[Case] = [
    # --- issue 12, as filed ------------------------------------------------------------
    deny("SET standard_conforming_strings = off"),
    allow("SELECT 'a\\'' ; DROP TABLE c_victim; --'"),  # one string under the pinned setting
    deny("SET client_encoding = 'GBK'"),
    allow("SELECT E'\u4e01\\' ; DROP TABLE c_victim; --'"),
    deny("SET client_encoding = 'SJIS'"),
    approve("explain (analyze false, analyze true) delete from c_victim"),
    measured("delete from c_orders where id = id"),
    measured("delete from c_orders where id > 0 or true"),
    measured("delete from c_orders where 1=1 or id is null"),
    measured("delete from c_orders where c_orders is not null"),
    measured("update c_orders set v = v + 1 where id = id"),
    measured("merge into c_orders o using (select 1 as one) s on o.id = o.id when matched then delete"),
    measured("delete from c_orders where id > %s or %s", (0, True)),
    measured("select 1; delete from c_orders where id = id"),
    allow("select set_config('search_path', 'corpus, public', false)"),
    # --- lexing settings, every spelling -------------------------------------------------
    deny("SET SESSION standard_conforming_strings TO 'off'"),
    deny("SET LOCAL standard_conforming_strings = false"),
    deny("SET standard_conforming_strings = 0"),
    deny("set standard_conforming_strings=of"),
    deny("SET NAMES 'BIG5'"),
    deny("SET client_encoding TO 'LATIN1'"),
    deny("SET client_encoding TO 'WIN1252'"),
    deny("SET client_encoding = 'GB18030'"),
    deny("SET client_encoding = 'JOHAB'"),
    deny("SET client_encoding = 'UHC'"),
    deny("SET client_encoding = 'SQL_ASCII'"),
    deny("SET backslash_quote = on"),
    deny("SELECT set_config('standard_conforming_strings', 'off', false)"),
    deny("SELECT set_config('standard_conforming_strings', 'off', true)"),
    deny("SELECT pg_catalog.set_config('client_encoding', 'SJIS', false)"),
    deny("SELECT set_config('backslash_quote', 'on', false)"),
    deny("SELECT set_config(name, 'off', false) FROM pg_settings WHERE name = 'standard_conforming_strings'"),
    deny("SELECT set_config('standard_conforming' || '_strings', 'off', false)"),
    deny("SELECT set_config('standard_conforming_strings', current_setting('application_name'), false)"),
    deny("SELECT 1; SET standard_conforming_strings = off"),
    deny("ALTER ROLE jitgate_broker SET standard_conforming_strings = off"),
    deny("ALTER DATABASE demo SET client_encoding = 'GBK'"),
    deny("ALTER SYSTEM SET standard_conforming_strings = off"),
    deny("CREATE FUNCTION c_lex() RETURNS int LANGUAGE sql SET standard_conforming_strings = off AS 'select 1'"),
    allow("SET standard_conforming_strings = on"),
    allow("SET client_encoding = 'UTF8'"),
    allow("SET NAMES 'utf-8'"),
    allow("RESET standard_conforming_strings"),
    allow("RESET ALL"),
    allow("DISCARD ALL"),
    allow("SHOW standard_conforming_strings"),
    # --- EXPLAIN options ------------------------------------------------------------------
    approve("EXPLAIN (ANALYZE) DELETE FROM c_victim"),
    approve("EXPLAIN (ANALYZE off, ANALYZE on) DELETE FROM c_victim"),
    approve("EXPLAIN (ANALYZE 'false', BUFFERS, ANALYZE 1) DELETE FROM c_victim"),
    approve("EXPLAIN (ANALYZE maybe) DELETE FROM c_victim"),
    allow("EXPLAIN (ANALYZE true, ANALYZE false) DELETE FROM c_victim"),
    allow("EXPLAIN DELETE FROM c_victim"),
    measured("EXPLAIN ANALYZE DELETE FROM c_orders WHERE id = id"),
    # --- comments, quoting, dollar quoting, Unicode escapes ---------------------------------
    allow("SELECT 1 /* ; DROP TABLE c_victim; */"),
    allow("SELECT /* /* nested */ DROP TABLE c_victim; */ 1"),
    approve("/**/DROP/**/TABLE/**/c_victim"),
    approve("--x\nDROP TABLE c_victim"),
    allow("SELECT $$; DROP TABLE c_victim; $$"),
    allow("SELECT $a$ $$ ; DROP TABLE c_victim; $$ $a$"),
    allow("SELECT U&'\\0027; DROP TABLE c_victim; --'"),
    allow("SELECT U&'d\\0021r\\0021op' UESCAPE '!'"),
    approve('DROP TABLE U&"c\\005fvictim"'),
    approve('DROP TABLE "c_victim"'),
    allow('SELECT "DROP TABLE c_victim" FROM (SELECT 1 AS "DROP TABLE c_victim") s'),
    allow("SELECT 'it''s; DROP TABLE c_victim'"),
    allow("SELECT E'\\\\'; SELECT 2"),
    deny("SELECT 'unterminated; DROP TABLE c_victim"),
    deny("SELEC 1; DROP TABLE c_victim"),
    approve("dRoP tAbLe C_VICTIM"),
    # --- DML: bounded ones run, unbounded wait ----------------------------------------------
    change("DELETE FROM c_orders WHERE id = 7"),
    change("DELETE FROM c_orders WHERE id = %s", (8,)),
    change("UPDATE c_orders SET v = 0 WHERE id IN (1, 2, 3)"),
    change("UPDATE c_orders SET v = v WHERE id <= 100"),  # 100 rows: within the limit
    measured("UPDATE c_orders SET v = v WHERE id <= 101"),  # one more: over it
    change("INSERT INTO c_orders VALUES (1000, 1)"),
    measured("INSERT INTO c_orders SELECT g, 0 FROM generate_series(1001, 1150) g"),
    change("INSERT INTO c_orders SELECT g, 0 FROM generate_series(1001, 1050) g"),
    measured("INSERT INTO c_orders SELECT g, 0 FROM generate_series(1001, 1500) g ON CONFLICT DO NOTHING"),
    approve("DELETE FROM c_orders"),
    approve("UPDATE c_orders SET v = 0"),
    approve("DELETE FROM c_orders WHERE true"),
    approve("DELETE FROM c_orders WHERE %s", (True,)),
    approve("TRUNCATE c_orders"),
    approve("TRUNCATE c_parted"),
    measured("DELETE FROM c_orders WHERE id = id RETURNING *"),
    measured("DELETE FROM c_orders WHERE NOT (id IS NULL)"),
    approve("DELETE FROM c_orders WHERE id = ANY (SELECT id FROM c_orders)"),  # the classifier reads IN (subquery) as unbounded
    approve("DELETE FROM c_orders WHERE id IN (SELECT generate_series(1, 1000))"),
    measured("DELETE FROM c_orders WHERE coalesce(id, 0) >= 0"),
    measured("DELETE FROM c_orders WHERE id::text ~ '.'"),
    measured("DELETE FROM c_orders WHERE (SELECT true) AND id > 0"),
    measured("DELETE FROM c_orders o USING c_orders p WHERE o.id = p.id"),
    measured("UPDATE c_orders o SET v = o.v FROM (SELECT 1) s WHERE o.id = o.id"),
    measured("DELETE FROM c_orders WHERE id > %s", (0,)),
    measured("UPDATE c_orders SET v = %s WHERE id > %s", (0, -1)),
    measured("WITH d AS (DELETE FROM c_orders WHERE id = id RETURNING *) SELECT count(*) FROM d"),
    measured("WITH d AS (DELETE FROM c_orders WHERE id > 0 RETURNING id) INSERT INTO c_victim SELECT id FROM d"),
    change("WITH d AS (DELETE FROM c_orders WHERE id = 1 RETURNING *) SELECT * FROM d"),
    measured("MERGE INTO c_orders o USING (SELECT generate_series(1, 200) AS id) s ON o.id = s.id WHEN MATCHED THEN DELETE"),
    approve("MERGE INTO c_orders o USING (SELECT 1 AS id) s ON true WHEN MATCHED THEN DELETE"),
    # --- views, partitions, inheritance, triggers, rules, functions -------------------------
    measured("DELETE FROM c_orders_view WHERE id = id"),
    approve("UPDATE c_orders_view SET v = 0"),
    change("DELETE FROM c_orders_view WHERE id = 9"),
    measured("DELETE FROM c_parted WHERE id = id"),
    approve("DELETE FROM c_parted_p2"),
    measured("UPDATE c_parted SET k = k WHERE id = id"),
    measured("UPDATE c_parted SET id = id + 1000 WHERE id > 0"),  # rows move between partitions
    change("UPDATE c_parted SET k = 0 WHERE id < 5"),
    measured("DELETE FROM c_parent WHERE id = id"),  # the 150 rows live in the child
    allow("DELETE FROM ONLY c_parent WHERE id = id"),  # the parent itself is empty
    measured("INSERT INTO c_audit VALUES (1)"),  # its trigger deletes 200 orders
    measured("INSERT INTO c_audit VALUES (%s)", (1,)),
    measured("SELECT c_wipe()"),  # a function that deletes, called from SELECT
    measured("SELECT * FROM c_wipe()"),
    measured("SELECT corpus.c_wipe() FROM (SELECT 1) s"),
    measured("SELECT c_wipe() WHERE %s", (True,)),
    approve("DO $$BEGIN EXECUTE 'DELETE FROM corpus.c_orders'; END$$"),
    approve("DO $$BEGIN DELETE FROM corpus.c_orders WHERE id = id; END$$"),
    approve("CALL c_anything()"),
    approve("CREATE FUNCTION c_evil() RETURNS int LANGUAGE sql AS 'DELETE FROM corpus.c_orders; SELECT 1'"),
    approve("CREATE OR REPLACE FUNCTION c_wipe() RETURNS int LANGUAGE sql AS 'SELECT 1'"),
    approve("CREATE TRIGGER t_evil BEFORE INSERT ON c_victim FOR EACH ROW EXECUTE FUNCTION c_trg()"),
    approve("CREATE RULE r_evil AS ON SELECT TO c_victim DO INSTEAD SELECT * FROM c_victim"),
    approve("CREATE RULE r_evil AS ON INSERT TO c_victim DO ALSO DELETE FROM c_orders"),
    approve("CREATE VIEW c_v2 AS SELECT * FROM c_orders"),
    approve("ALTER TABLE c_orders DISABLE TRIGGER ALL"),
    approve("ALTER TABLE c_audit DISABLE TRIGGER c_audit_wipe"),
    # --- prepared statements ----------------------------------------------------------------
    approve("PREPARE c_p AS DELETE FROM c_orders WHERE id = id; EXECUTE c_p"),
    deny("EXECUTE c_never_prepared"),
    approve("PREPARE c_q AS DELETE FROM c_orders; EXECUTE c_q"),
    # --- transaction control in the same text as a data change --------------------------------
    approve("BEGIN; DELETE FROM c_orders WHERE id = id; COMMIT"),
    approve("BEGIN; DELETE FROM c_orders WHERE id = 1; COMMIT"),
    approve("DELETE FROM c_orders WHERE id = 1; COMMIT"),
    approve("SAVEPOINT s; DELETE FROM c_orders WHERE id = id; RELEASE s"),
    allow("BEGIN; SELECT 1; COMMIT"),
    # --- files, programs, large objects, remote servers ---------------------------------------
    deny("COPY c_orders TO PROGRAM 'cat > /tmp/x'"),
    deny("COPY c_orders FROM PROGRAM 'echo 1'"),
    deny("COPY c_orders FROM '/etc/hostname'"),
    deny("COPY (SELECT 1) TO '/tmp/jitgate-corpus'"),
    approve("SELECT lo_import('/etc/hostname')"),
    approve("SELECT lo_export(1, '/tmp/x')"),
    approve("SELECT lo_from_bytea(0, 'x')"),
    approve("SELECT lo_unlink(1)"),
    approve("SELECT lo_put(1, 0, 'x')"),
    approve("SELECT pg_read_file('/etc/hostname')"),
    approve("SELECT pg_read_binary_file('/etc/hostname')"),
    approve("SELECT * FROM pg_ls_dir('.')"),
    approve("SELECT dblink_exec('dbname=demo', 'DELETE FROM corpus.c_orders')"),
    approve("SELECT * FROM dblink('dbname=demo', 'SELECT 1') AS t(x int)"),
    approve("SELECT x.pg_read_file FROM (SELECT '/etc/hostname'::text) x"),
    approve("SELECT query_to_xml('DELETE FROM corpus.c_orders RETURNING 1', true, false, '')"),
    approve("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"),
    approve("SELECT pg_cancel_backend(1)"),
    approve("SELECT pg_reload_conf()"),
    approve("SELECT setval('c_seq', 100)"),
    change("SELECT nextval('c_seq')"),  # sequences are outside any transaction (README)
    approve("SELECT pg_sleep(0)"),
    approve("SELECT pg_advisory_lock(1)"),
    approve("SELECT pg_notify('x', 'y')"),
    approve("SELECT pg_some_admin_function_of_the_future()"),
    # --- privileges and roles ----------------------------------------------------------------
    approve("SET ROLE postgres"),
    approve("SET SESSION AUTHORIZATION postgres"),
    approve("SELECT set_config('role', 'postgres', false)"),
    approve("RESET ROLE"),
    approve("GRANT ALL ON c_orders TO PUBLIC"),
    approve("CREATE ROLE c_evil SUPERUSER"),
    approve("ALTER ROLE jitgate_broker SET search_path = evil"),
    approve("ALTER TABLE c_orders OWNER TO postgres"),
    approve("ALTER TABLE c_orders DISABLE ROW LEVEL SECURITY"),
    deny("DROP OWNED BY jitgate_broker"),
    # --- schema and server ----------------------------------------------------------------------
    approve("DROP TABLE c_victim"),
    approve("DROP VIEW c_orders_view"),
    approve("ALTER TABLE c_orders DROP COLUMN v"),
    approve("CREATE TABLE c_new AS SELECT * FROM c_orders"),
    approve("SELECT * INTO c_new FROM c_orders"),
    approve("CREATE INDEX ON c_orders (v)"),
    deny("DROP SCHEMA corpus CASCADE"),
    deny("DROP DATABASE demo"),
    approve("CREATE EXTENSION dblink"),
    approve("ALTER SYSTEM SET log_statement = 'none'"),
    approve("SET session_replication_role = replica"),
    approve("SELECT set_config('session_replication_role', 'replica', false)"),
    approve("LOCK TABLE c_orders IN ACCESS EXCLUSIVE MODE"),
    approve("VACUUM FULL c_orders"),
    approve("CHECKPOINT"),
    approve("LOAD 'plpgsql'"),
    approve("PREPARE TRANSACTION 'x'"),
    # --- plain reads and session chores ---------------------------------------------------------
    allow("SELECT count(*) FROM c_orders"),
    allow("SELECT * FROM c_orders WHERE id = %s", (1,)),
    allow("SELECT lower(upper('x')), now(), count(*) FROM c_orders"),
    allow("SELECT * FROM c_parted WHERE id < 3"),
    allow("WITH s AS (SELECT * FROM c_orders) SELECT count(*) FROM s"),
    allow("SELECT * FROM c_orders_view LIMIT 1"),
    allow("SET statement_timeout = '5s'"),
    allow("SET search_path = corpus, public"),
    allow("LISTEN c_channel"),
    allow("NOTIFY c_channel, 'x'"),
    allow("SELECT pg_backend_pid(), pg_size_pretty(pg_total_relation_size('c_orders'))"),
    allow("VALUES (1), (2)"),
]
