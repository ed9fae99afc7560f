"""Column lineage (pure) and the session's lineage step with a recorded catalog."""
from __future__ import annotations

import asyncio

import pytest

from broker.pg.lineage_step import LineageStep, functions_query, relations_query
from jitgate.masking import Masker
from jitgate.masking.lineage import Catalog, Relation, catalog_needs, follow, runs_user_code
from jitgate.policy import MaskingConfig
from tests.masking.helpers import INT4, KEY, field

CUSTOMERS = Relation("public.customers", "r", ("id", "full_name", "email", "card_number", "notes"))
CATALOG = Catalog(
    relations={
        "customers": CUSTOMERS,
        "orders": Relation("public.orders", "r", ("id", "customer_id", "amount")),
        "v": Relation("public.v", "v", ("e", "id"), " SELECT reverse(email) AS e, id FROM customers;"),
        "pg_stats": Relation("pg_catalog.pg_stats", "v", ("attname", "most_common_vals"), "SELECT 1, 2"),
    },
    functions={"reverse": True, "upper": True, "myfn": False, "string_agg": True, "row_number": True, "to_jsonb": True,
               "max": True},
    operators={"=": True, "||": True, "~~": True, ">": True, "<>": True, "###": False},
)
EMAIL = ("public.customers", "email")


def one(sql: str, catalog: Catalog = CATALOG):
    [statement] = follow(sql, catalog)
    return statement


@pytest.mark.parametrize("sql, index, direct", [
    ("SELECT email FROM customers", 0, True),
    ("SELECT c.email AS e FROM customers c", 0, True),
    ("SELECT e FROM (SELECT email AS e FROM customers) s", 0, True),
    ("WITH x AS (SELECT email FROM customers) SELECT email FROM x", 0, True),
    ("SELECT reverse(email) FROM customers", 0, False),
    ("SELECT upper(email) || 'x' FROM customers", 0, False),
    ("SELECT string_agg(email, ',') FROM customers", 0, False),
    ("SELECT e FROM v", 0, False),
    ("SELECT id, email FROM customers UNION SELECT 1, 'x'", 1, False),
    ("WITH RECURSIVE r(x) AS (SELECT 'a' UNION ALL SELECT email FROM customers, r) SELECT x FROM r", 0, False),
    ("SELECT o.id, l.e FROM orders o, LATERAL (SELECT reverse(email) e FROM customers c WHERE c.id = o.customer_id) l", 1, False),
    ("SELECT (SELECT max(email) FROM customers)", 0, False),
    ("SELECT to_jsonb(c) FROM customers c", 0, False),
    ("SELECT c FROM customers c", 0, False),
])
def test_email_is_followed(sql, index, direct):
    statement = one(sql)
    assert statement.unknown is None
    column = statement.columns[index]
    assert EMAIL in column.sources and column.direct is direct


def test_plain_columns_stay_plain_and_predicates_are_reported():
    statement = one("SELECT id, full_name FROM customers WHERE email LIKE 'a%' ORDER BY card_number")
    assert [c.sources for c in statement.columns] == [{("public.customers", "id")}, {("public.customers", "full_name")}]
    assert statement.predicate_sources == {EMAIL, ("public.customers", "card_number")}
    ranked = one("SELECT row_number() OVER (PARTITION BY email), id FROM customers")
    assert ranked.columns[0].sources == frozenset() and EMAIL in ranked.predicate_sources


def test_star_expands_from_the_catalog():
    statement = one("SELECT * FROM customers c JOIN orders o ON o.customer_id = c.id")
    assert [c.name for c in statement.columns] == list(CUSTOMERS.columns) + ["id", "customer_id", "amount"]


@pytest.mark.parametrize("sql, why", [
    ("SELECT myfn(1)", "not built in"),
    ("SELECT email ### 'x' FROM customers", "operator ### is not built in"),
    ("SELECT email OPERATOR(public.||) 'x' FROM customers", "operator public.|| is not built in"),
    ("SELECT public.reverse(email) FROM customers", "not built in"),
    ("SELECT * FROM temp_table", "not looked up"),
    ("FETCH 10 FROM c", "FETCH"),
    ("EXECUTE p", "EXECUTE"),
    ("SELECT * FROM pg_stats", "sample values"),
    ("SELECT FROM WHERE", "does not parse"),
    # built-ins that read data named by a value: SQL text, a table, a cursor, a large object
    ("SELECT query_to_xml('SELECT email FROM customers', true, false, '')", "reads data named by its arguments"),
    ("SELECT table_to_xml('customers', true, false, '')", "reads data named by its arguments"),
    ("SELECT pg_catalog.TABLE_TO_XML('customers', true, false, '')", "reads data named by its arguments"),
    ("SELECT cursor_to_xml('c', 10, false, true, '')", "reads data named by its arguments"),
    ("SELECT * FROM ts_stat('SELECT to_tsvector(email) FROM customers')", "reads data named by its arguments"),
    ("SELECT upper(database_to_xml(true, false, ''))", "reads data named by its arguments"),
    ("SELECT id FROM customers WHERE lo_get(id) IS NULL", "reads data named by its arguments"),
    # other sessions' statement text: the server's activity functions and the extension's
    ("SELECT pg_stat_get_backend_activity(1)", "reads data named by its arguments"),
    ("SELECT query FROM pg_stat_statements(true)", "reads data named by its arguments"),
    ("SELECT s.query FROM public.pg_stat_statements(showtext => true) s", "reads data named by its arguments"),
    ("SELECT upper(q.query) FROM pg_catalog.pg_stat_statements(true) q", "reads data named by its arguments"),
])
def test_unknown_lineage_says_why(sql, why):
    assert why in one(sql).unknown


def test_writes_are_remembered_and_reads_of_them_masked():
    statement = one("UPDATE customers SET notes = reverse(email) WHERE id = 1 RETURNING notes")
    assert statement.writes == (("public.customers", "notes", frozenset({EMAIL})),)
    assert EMAIL in statement.columns[0].sources and not statement.columns[0].direct
    tainted = Catalog(CATALOG.relations, CATALOG.functions, CATALOG.operators,
                      {("public.customers", "notes"): frozenset({EMAIL})})
    assert EMAIL in one("SELECT notes FROM customers", tainted).columns[0].sources


def test_masker_masks_derived_columns_whole_with_the_strongest_strategy():

    config = MaskingConfig.model_validate({"rules": [
        {"columns": ["email"], "strategy": "partial"},
        {"columns": ["card_number"], "strategy": "hash"},
    ]})
    masker = Masker(config, KEY)
    fields = [field("x"), field("id", INT4)]
    lineage = one("SELECT reverse(email) || card_number AS x, id FROM customers")
    plan = masker.plan(fields, {}, None, lineage)
    row = plan.mask_row(b"\x00\x02" + (13).to_bytes(4, "big") + b"moc.elpmaxe@a" + (1).to_bytes(4, "big") + b"7")
    assert b"moc.elpmaxe" not in row and b"h:" in row  # hash beats partial; a derived value is never partial
    assert plan.report(["x", "id"]) == [{"column": "x", "rule": plan.reasons[0]}]
    unknown = masker.plan(fields, {}, None, one("SELECT myfn(1), 2"))
    assert unknown.notice and "cannot be followed" in unknown.notice
    masked = unknown.mask_row(b"\x00\x02" + (1).to_bytes(4, "big") + b"a" + (1).to_bytes(4, "big") + b"7")
    assert b"\x00\x00\x00\x01a" not in masked and not masked.endswith(b"\x00\x00\x00\x017")  # nothing passes as it was


class RecordedCatalog:
    """Answers the step's two catalog queries from CATALOG, counting round trips."""

    def __init__(self):
        self.queries = []

    async def __call__(self, sql: str):
        self.queries.append(sql)
        if "pg_operator" in sql:
            return [(name, "true" if CATALOG.operators.get(name) else "false") for name in CATALOG.operators if f"'{name}'" in sql]
        if "pg_proc" in sql:
            return [(name, "true" if CATALOG.functions.get(name) else "false") for name in CATALOG.functions if f"'{name}'" in sql]
        rows = []
        for name, rel in CATALOG.relations.items():
            if f"'{name}'" in sql:
                schema, _, table = rel.name.partition(".")
                import json

                rows.append((name, schema, table, rel.kind, rel.definition if rel.kind == "v" else None, json.dumps(rel.columns),
                             json.dumps(rel.types)))
        return rows


def test_lineage_step_caches_and_forgets_after_ddl():
    step = LineageStep()
    fetch = RecordedCatalog()

    async def run(sql):
        return await step.follow(sql, fetch)

    first = asyncio.run(run("SELECT e FROM v"))
    assert EMAIL in first[0].columns[0].sources
    count = len(fetch.queries)
    asyncio.run(run("SELECT e, id FROM v"))
    assert len(fetch.queries) == count  # cached for the session
    mixed = asyncio.run(run("CREATE VIEW w AS SELECT 1; SELECT e FROM v"))
    assert mixed[1].unknown and "changes the catalog" in mixed[1].unknown  # stale answers are not trusted
    asyncio.run(run("SELECT e FROM v"))
    assert len(fetch.queries) > count  # asked again after the DDL


def test_catalog_queries_quote_names():
    sql = relations_query(["x'); DROP TABLE t; --", 'we"ird.na\'me'])
    assert "'x''); DROP TABLE t; --'" in sql and "'\"we\"\"ird\".\"na''me\"'" in sql
    assert "'f''x'" in functions_query(["f'x"])


def test_needs_name_relations_and_functions():
    needs = catalog_needs("WITH a AS (SELECT 1) SELECT myfn(x), pg_catalog.lower('A') FROM s.t, a")
    assert needs.relations == {"s.t", "a"} and needs.functions == {"myfn", "pg_catalog.lower"}


def test_sensitive_names_only_columns_masking_protects():
    """A column rule's columns, and the columns a detector rule scans (here: notes only)."""
    m = Masker(MaskingConfig.model_validate({"rules": [{"columns": ["email"]},
                                                       {"detectors": ["email"], "columns": ["notes"]}]}), KEY)
    predicate = one("SELECT id FROM customers WHERE email LIKE 'a%' AND notes <> '' ORDER BY full_name").predicate_sources
    assert m.sensitive(predicate) == ["public.customers.email", "public.customers.notes"]
    assert m.sensitive(one("SELECT id FROM customers WHERE id = 1").predicate_sources) == []


def test_statements_that_differ_only_in_constants_share_one_parse():
    """The per-session result cache is keyed by the statement's shape (constants as $n), not its
    text: a new literal costs a dictionary lookup. What differs in a name still gets its own answer."""
    step = LineageStep()
    fetch = RecordedCatalog()

    def run(sql):
        return asyncio.run(step.follow(sql, fetch))

    first = run("SELECT email, id FROM customers WHERE id = 17 AND full_name <> 'x'")
    parsed = step.parsed_inline
    again = run("SELECT email, id FROM customers WHERE id = 42 AND full_name <> 'a@b.example'")
    assert step.parsed_inline == parsed  # a hit: not parsed again
    assert [(c.name, c.sources, c.direct) for c in again[0].columns] == [(c.name, c.sources, c.direct)
                                                                         for c in first[0].columns]
    assert EMAIL in again[0].columns[0].sources and again[0].columns[0].direct
    # Another column, alias, function or relation is another shape: followed on its own.
    for sql, index, source in [
        ("SELECT full_name, id FROM customers WHERE id = 42 AND full_name <> 'x'", 0, None),
        ("SELECT email AS id, id AS email FROM customers WHERE id = 42 AND full_name <> 'x'", 1, None),
        ("SELECT reverse(email), id FROM customers WHERE id = 42 AND full_name <> 'x'", 0, EMAIL),
        ("SELECT table_to_xml('customers', true, false, ''), 1", None, None),
    ]:
        before = step.parsed_inline
        [statement] = run(sql)
        assert step.parsed_inline > before, sql
        if index is None:
            assert statement.unknown and "reads data named by its arguments" in statement.unknown
        elif source is None:
            assert EMAIL not in statement.columns[index].sources, sql
        else:
            assert source in statement.columns[index].sources and not statement.columns[index].direct, sql
    # A table named by a constant stays unknown whatever the constant: the shape hit carries it.
    [other] = run("SELECT table_to_xml('orders', true, false, ''), 2")
    assert other.unknown and "reads data named by its arguments" in other.unknown


@pytest.mark.parametrize("sql", [
    "SELECT query FROM pg_stat_statements",
    "SELECT s.query AS q FROM pg_catalog.pg_stat_statements s",  # the extension installed in pg_catalog
    "SELECT left(query, 100) FROM public.pg_stat_statements",
])
def test_other_sessions_statements_in_pg_stat_statements_are_masked(sql):
    """Every identity on a target shares its held role, and pg_stat_statements shows that role's
    statements, literals included in utility statements (SET, COPY ...): masked on targets with
    column rules like pg_stat_activity.query (masker.OTHER_SESSIONS_STATEMENTS)."""
    from jitgate.masking.lineage import Relation

    columns = ("userid", "queryid", "query", "calls")
    for schema in ("pg_catalog", "public"):
        catalog = Catalog(
            {**CATALOG.relations,
             "pg_stat_statements": Relation(f"{schema}.pg_stat_statements", "v", columns,
                                            " SELECT userid, queryid, query, calls FROM pg_stat_statements(true);"),
             "pg_catalog.pg_stat_statements": Relation("pg_catalog.pg_stat_statements", "v", columns,
                                                       " SELECT userid, queryid, query, calls FROM pg_stat_statements(true);"),
             "public.pg_stat_statements": Relation("public.pg_stat_statements", "v", columns,
                                                   " SELECT userid, queryid, query, calls FROM pg_stat_statements(true);")},
            {**CATALOG.functions, "left": True, "pg_stat_statements": schema == "pg_catalog"}, CATALOG.operators)
        lineage = one(sql, catalog)
        masker = Masker(MaskingConfig.model_validate({"rules": [{"columns": ["email"], "strategy": "partial"}]}), KEY)
        plan = masker.plan([field("q")], {}, None, lineage)
        text = b"SET application_name = 'secret-literal'"
        row = plan.mask_row(b"\x00\x01" + len(text).to_bytes(4, "big") + text)
        assert b"secret-literal" not in row, (schema, sql)


@pytest.mark.parametrize("sql, written", [
    # A data-modifying CTE writes as much as the statement around it.
    ("WITH u AS (UPDATE customers SET notes = reverse(email) WHERE id = 1 RETURNING id) SELECT id FROM u",
     [("public.customers", "notes")]),
    ("WITH u AS (UPDATE customers SET notes = email WHERE id = 1 RETURNING id) "
     "INSERT INTO orders (amount) SELECT id FROM u", [("public.customers", "notes"), ("public.orders", "amount")]),
    # MERGE: UPDATE SET and INSERT VALUES, with and without a column list.
    ("MERGE INTO orders o USING customers c ON o.customer_id = c.id WHEN MATCHED THEN UPDATE SET amount = reverse(c.email)",
     [("public.orders", "amount")]),
    ("MERGE INTO orders o USING customers c ON o.customer_id = c.id "
     "WHEN NOT MATCHED THEN INSERT (id, amount) VALUES (c.id, reverse(c.email))",
     [("public.orders", "id"), ("public.orders", "amount")]),
    ("MERGE INTO orders o USING customers c ON o.customer_id = c.id "
     "WHEN NOT MATCHED THEN INSERT VALUES (1, c.id, reverse(c.email))",
     [("public.orders", "customer_id"), ("public.orders", "amount")]),
])
def test_nested_and_merge_writes_are_followed(sql, written):
    """What a statement writes from other columns (the session's taint, and the sensitive_write
    class) must include writes inside CTEs and MERGE, which were missed."""
    statement = one(sql)
    assert statement.unknown is None, statement.unknown
    assert [(r, c) for r, c, _ in statement.writes] == written
    assert all(sources for _, _, sources in statement.writes)
    if "email" in sql:
        assert any(EMAIL in sources for _, _, sources in statement.writes)


def test_merge_conditions_are_predicates():
    statement = one("MERGE INTO orders o USING customers c ON o.customer_id = c.id AND c.email ~~ 'a%' "
                    "WHEN MATCHED AND c.card_number ~~ '4%' THEN DELETE")
    assert {EMAIL, ("public.customers", "card_number")} <= statement.predicate_sources


@pytest.mark.parametrize("sql, written, blind", [
    ("UPDATE customers SET notes = notes WHERE id = 1", [], False),  # keeps its own value
    ("UPDATE customers c SET notes = c.notes WHERE id = 1", [], False),
    ("UPDATE customers SET notes = upper(notes) WHERE id = 1", [("public.customers", "notes")], False),  # reshaped
    ("CREATE TEMP TABLE scratch AS SELECT reverse(email) FROM customers", [], False),  # the session's own
    ("SELECT reverse(email) INTO TEMP scratch FROM customers", [], False),
    ("CREATE TABLE kept AS SELECT reverse(email) AS r FROM customers", [("kept", "r")], False),
    ("INSERT INTO orders (amount) SELECT myfn(email) FROM customers", [], True),  # unknown: could be anything
    ("UPDATE orders SET amount = myfn(1)", [], True),
    ("SELECT myfn(email) FROM customers", [], False),  # reads only
])
def test_what_a_statement_writes(sql, written, blind):
    [statement] = follow(sql, CATALOG)
    assert [(r, c) for r, c, _ in statement.writes] == written
    assert statement.writes_unknown is blind


# runs_user_code: code the gateway cannot see, which may write what it reads (masking measures such
# a statement and holds any changed row as sensitive_write). (statement, decision)
USER_CODE = [
    ("SELECT myfn(email) FROM customers", True),
    ("SELECT public.stash(email) FROM customers", True),
    ("SELECT id FROM customers WHERE myfn(id) = 1", True),
    ("SELECT query_to_xml('select 1', true, false, '')", True),  # runs SQL named by a value
    ("SELECT pg_catalog.query_to_xml('select 1', true, false, '')", True),
    ("SELECT email ### 'x' FROM customers", True),  # an operator that is not built in
    ("SELECT lower(email), pg_catalog.upper(email), email || 'x' FROM customers", False),
    ("SELECT count(*) FROM customers WHERE id > 1", False),
]


@pytest.mark.parametrize("sql, decision", USER_CODE)
def test_runs_user_code(sql, decision):
    catalog = Catalog(CATALOG.relations, {**CATALOG.functions, "lower": True, "count": True, "query_to_xml": True},
                      {**CATALOG.operators, "||": True, ">": True, "=": True, "###": False})
    assert runs_user_code([catalog_needs(sql)], catalog) is decision


# Built-ins that keep an argument where it is read back later (lineage.STORES_ARGUMENTS): a value
# from a column is a write into that place. (statement, where it goes, or None: nothing written)
STORED_ARGUMENTS = [
    ("SELECT length(set_config('jg.x', translate(email, '@.', '#,'), false)) FROM customers", "pg_catalog.pg_settings"),
    ("SELECT set_config('application_name', upper(full_name), false) FROM customers", "pg_catalog.pg_settings"),
    ("SELECT pg_notify('c', email) FROM customers", "pg_catalog.pg_notify"),
    ("SELECT setval('s', ascii(email)) FROM customers", "pg_catalog.pg_sequences"),
    ("SELECT pg_try_advisory_lock(ascii(email), 1) FROM customers", "pg_catalog.pg_locks"),
    ("SELECT lo_from_bytea(0, convert_to(email, 'UTF8')) FROM customers", "pg_catalog.pg_largeobject"),
    ("SELECT set_config('jg.x', 'constant', false)", None),
    ("SELECT set_config(email, 'x', false) FROM customers", None),  # the name argument is not kept
]


@pytest.mark.parametrize("sql, place", STORED_ARGUMENTS)
def test_a_built_in_that_keeps_its_argument_is_a_write(sql, place):
    names = ("set_config", "length", "translate", "upper", "pg_notify", "setval", "ascii", "pg_try_advisory_lock",
             "lo_from_bytea", "convert_to")
    catalog = Catalog(CATALOG.relations, {**CATALOG.functions, **dict.fromkeys(names, True)}, CATALOG.operators)
    statement = one(sql, catalog)
    assert statement.unknown is None, statement.unknown
    written = {relation for relation, _, sources in statement.writes if sources}
    assert written == ({place} if place else set()), statement.writes


# Statements that run another statement (now, or at EXECUTE/FETCH, whose lineage is unknown) carry
# its writes: each wrapper around a masked write, and whether it writes.
WRAPPED_WRITES = [
    ("PREPARE p AS SELECT set_config('jg.x', email, false) FROM customers", True),
    ("PREPARE q(int) AS UPDATE customers SET notes = reverse(email) WHERE id = $1", True),
    ("PREPARE r AS SELECT id FROM customers WHERE id = 1", False),
    ("DECLARE c CURSOR FOR SELECT set_config('jg.x', email, false) FROM customers", True),
    ("EXPLAIN ANALYZE SELECT set_config('jg.x', email, false) FROM customers", True),
    ("EXPLAIN (ANALYZE true, BUFFERS) UPDATE customers SET notes = reverse(email)", True),
    ("EXPLAIN (ANALYZE off) UPDATE customers SET notes = reverse(email)", False),  # not run
    ("EXPLAIN UPDATE customers SET notes = reverse(email)", False),
    ("COPY (SELECT set_config('jg.x', email, false) FROM customers) TO STDOUT", True),
]


@pytest.mark.parametrize("sql, writes", WRAPPED_WRITES)
def test_a_statement_that_runs_another_carries_its_writes(sql, writes):
    catalog = Catalog(CATALOG.relations, {**CATALOG.functions, "set_config": True}, CATALOG.operators)
    statement = one(sql, catalog)
    assert statement.unknown is None, statement.unknown
    assert bool([w for w in statement.writes if w[2]]) == writes, statement.writes
