"""Column lineage: which table columns each result column of a statement derives from (pure: no I/O).

A detector cannot recognise an email after ``reverse()`` or ``encode(..., 'base64')``,
so masking by column rule follows the data instead of its shape: this module walks
PostgreSQL's own parse tree (pglast) and, for every result column, collects the
table columns any part of its expression reads, through functions, operators,
casts, CASE, subqueries, CTEs (recursive too), set operations, joins, LATERAL,
window functions, aggregates, whole-row references and views.

Two steps, so the parse stays pure and the catalog stays the broker's business:

1. ``catalog_needs(sql)`` names the relations and functions the statement (and,
   later, each view definition) mentions.
2. The broker looks them up (``broker/pg/lineage_step.py``) and calls
   ``follow(sql, catalog)``, which returns one ``StatementLineage`` per statement.

A result column is *direct* when it is one table column, unchanged (``email``,
``c.email AS e``, the same through a subquery, CTE or view): it keeps the
column's own rule (``partial`` included). Anything else that reads a sensitive
column is *derived* and is masked whole with the strongest strategy of its
sources (see ``Masker.plan``). Where lineage cannot be followed (a function
that is not built in, a relation the catalog does not show, ``FETCH``,
``EXECUTE``, a row count that does not match) the statement's lineage is
*unknown*, with the reason, and the masker fails closed.

What lineage does not see (documented in the README): values chosen by a
predicate (``WHERE email LIKE 'a%'``), which ``predicate_sources`` reports for
the ``sensitive_predicate`` guardrail class; user-defined operators and casts
(their functions are not looked up); data written to another table by an
earlier statement of a *different* session.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from pglast import ast, parse_sql
from pglast.enums import SetOperation
from pglast.parser import ParseError

from jitgate.masking.pgtypes import NEVER_FREE_TEXT_OIDS

Source = tuple[str, "str | None"]  # (relation 'schema.table', column; None when its columns are unknown)

# View definitions nest; past this depth the statement's lineage is unknown.
MAX_VIEW_DEPTH = 16
# Set-returning built-ins whose output columns are not named after the function.
_SRF_COLUMNS = {
    "json_each": ("key", "value"), "jsonb_each": ("key", "value"),
    "json_each_text": ("key", "value"), "jsonb_each_text": ("key", "value"),
    "json_array_elements": ("value",), "jsonb_array_elements": ("value",),
    "json_array_elements_text": ("value",), "jsonb_array_elements_text": ("value",),
    "json_object_keys": ("json_object_keys",), "jsonb_object_keys": ("jsonb_object_keys",),
    "pg_options_to_table": ("option_name", "option_value"),
}
# Built-ins that read data the statement does not name as a relation: SQL given as text, a
# table, schema or database named by a value, an open cursor, a large object. Lineage sees
# only their (constant) arguments, so their results would pass as "no source": unknown instead.
# Built-ins that keep an argument where a later statement, or another session, reads it back
# without its lineage: a setting (``set_config('x', translate(email, ...), false)``, then
# ``current_setting('x')``, ``SHOW x``, or pg_stat_activity.application_name for every session),
# a notification, a large object, a sequence, a lock key (pg_locks). A value from a column is a
# write into that place: name -> (where it goes, index of the first argument it keeps).
STORES_ARGUMENTS = {
    "set_config": ("pg_catalog.pg_settings", 1),
    "pg_notify": ("pg_catalog.pg_notify", 1),
    "lo_from_bytea": ("pg_catalog.pg_largeobject", 1),
    "lo_put": ("pg_catalog.pg_largeobject", 2),
    "lowrite": ("pg_catalog.pg_largeobject", 1),
    "setval": ("pg_catalog.pg_sequences", 1),
    "pg_logical_emit_message": ("pg_catalog.pg_logical_messages", 1),
    **{name: ("pg_catalog.pg_locks", 0) for name in (
        "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared",
        "pg_advisory_xact_lock", "pg_advisory_xact_lock_shared", "pg_try_advisory_xact_lock",
        "pg_try_advisory_xact_lock_shared")},
}

READS_DATA_BY_VALUE = frozenset({
    "query_to_xml", "query_to_xml_and_xmlschema", "query_to_xmlschema",
    "cursor_to_xml", "cursor_to_xmlschema",
    "table_to_xml", "table_to_xml_and_xmlschema", "table_to_xmlschema",
    "schema_to_xml", "schema_to_xml_and_xmlschema", "schema_to_xmlschema",
    "database_to_xml", "database_to_xml_and_xmlschema", "database_to_xmlschema",
    "ts_stat", "lo_get", "loread", "lo_export", "pg_read_file", "pg_read_binary_file",
    # other sessions' statement text (what pg_stat_activity.query shows; see masker.OTHER_SESSIONS_STATEMENTS)
    "pg_stat_get_activity", "pg_stat_get_backend_activity", "pg_stat_statements",
})
# Every table has these; they identify a row version, they hold no column's data.
SYSTEM_COLUMNS = frozenset({"tableoid", "ctid", "xmin", "xmax", "cmin", "cmax", "oid"})
# Schemas of the system catalog: their functions are built in, their views read only the catalog.
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")
# ...except the planner statistics, which hold sample values of every analyzed column.
STATISTICS_RELATIONS = frozenset({"pg_catalog.pg_statistic", "pg_catalog.pg_stats", "pg_catalog.pg_stats_ext",
                                  "pg_catalog.pg_stats_ext_exprs", "pg_catalog.pg_statistic_ext_data"})


class LineageUnknown(Exception):
    """The statement's lineage cannot be followed; the message says why."""


@dataclass(frozen=True)
class ColumnLineage:
    name: str
    sources: frozenset = frozenset()  # of Source
    direct: bool = False


@dataclass(frozen=True)
class StatementLineage:
    """One statement. ``columns`` is None when the statement returns no rows (or its lineage
    is unknown: then ``unknown`` says why)."""

    columns: tuple[ColumnLineage, ...] | None = None
    unknown: str | None = None
    # Table columns a WHERE/JOIN/ORDER BY/GROUP BY/HAVING/DISTINCT ON/window clause reads.
    predicate_sources: frozenset = frozenset()
    # (relation, column or None for every column, sources of the values this statement writes there).
    writes: tuple = ()
    # True for statements after which cached catalog answers may be stale (DDL, SET...).
    changes_catalog: bool = False
    # Sources (of the columns, predicates and writes) whose column type never holds free text (numbers,
    # dates, booleans: pgtypes.NEVER_FREE_TEXT_OIDS). Any other source may hold text a detector
    # scans when it is read directly, and that a transformation can hide from the detector.
    non_text_sources: frozenset = frozenset()
    # True when the statement writes into a table (INSERT, UPDATE, MERGE, CREATE TABLE AS, SELECT
    # INTO) and its lineage is unknown: what it writes could come from any column.
    writes_unknown: bool = False
    # True when the statement, or a view it reads, calls a function or operator that is not built
    # in (or a built-in that runs SQL named by a value): code the gateway cannot see, which may
    # write whatever it reads into a table (set by the lineage step from every name it looked up,
    # however far the analysis got).
    runs_user_code: bool = False


@dataclass(frozen=True)
class Relation:
    """What the catalog says of one relation name."""

    name: str  # schema.table
    kind: str  # pg_class.relkind: r table, v view, m materialized view, p partitioned, f foreign...
    columns: tuple[str, ...]
    definition: str | None = None  # a view's SELECT (pg_get_viewdef)
    types: tuple[int, ...] = ()  # pg_attribute.atttypid per column, in order; () when not looked up


@dataclass
class Catalog:
    """Answers for ``catalog_needs``: None marks a name the catalog does not show."""

    relations: dict = field(default_factory=dict)  # name as written -> Relation | None
    functions: dict = field(default_factory=dict)  # function name -> True when built in
    operators: dict = field(default_factory=dict)  # operator name -> True when built in
    # Columns this session wrote data from other columns into: (relation, column or None) -> sources.
    tainted: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Needs:
    relations: frozenset
    functions: frozenset
    operators: frozenset = frozenset()


# --- step 1: what the catalog must answer ---------------------------------------------


def parse(sql: str) -> list:
    try:
        return [raw.stmt for raw in parse_sql(sql)]
    except ParseError as exc:
        raise LineageUnknown(f"the statement does not parse ({exc})") from None


def catalog_needs(sql: str) -> Needs:
    """Relation, function and operator names the statement mentions (CTE names included: harmless;
    the catalog is asked about the unqualified function and operator names)."""
    relations: set[str] = set()
    functions: set[str] = set()
    operators: set[str] = set()
    for stmt in parse(sql):
        for node in _walk(stmt):
            if isinstance(node, ast.RangeVar):
                relations.add(relation_key(node))
            elif isinstance(node, ast.FuncCall):
                functions.add(_function_name(node))  # qualified ones too (runs_user_code reads them)
            elif isinstance(node, ast.A_Expr) and node.name:
                name = _operator_name(node)
                if name:
                    operators.add(name)
    return Needs(frozenset(relations), frozenset(functions), frozenset(operators))


_OPERATOR_CHARS = frozenset("+-*/<>=~!@#%^&|`?")


def _operator_name(node: ast.A_Expr) -> str | None:
    """The operator an expression calls ('||', '~~'); None for keyword forms (BETWEEN...)."""
    parts = [p.sval for p in node.name if isinstance(p, ast.String)]
    if not parts or not set(parts[-1]) <= _OPERATOR_CHARS:
        return None
    return ".".join(parts)


def relation_key(node: ast.RangeVar) -> str:
    return f"{node.schemaname}.{node.relname}" if node.schemaname else node.relname


def runs_user_code(needs: "list[Needs]", catalog: Catalog) -> bool:
    """Do the texts behind ``needs`` (a statement and the views it reaches) call code the gateway
    cannot see: a function or operator outside the system schemas, or a built-in that runs SQL
    or reads data named by a value? ``catalog`` holds the lookups of the unqualified names (a
    name it does not show counts as not built in)."""
    for need in needs:
        for name in need.functions:
            if name.rsplit(".", 1)[-1].lower() in READS_DATA_BY_VALUE:
                return True
            if "." in name:
                if name.split(".", 1)[0] not in SYSTEM_SCHEMAS:
                    return True
            elif not catalog.functions.get(name, False):
                return True
        for name in need.operators:
            if "." in name:
                if name.split(".", 1)[0] not in SYSTEM_SCHEMAS:
                    return True
            elif not catalog.operators.get(name, False):
                return True
    return False


def _function_name(node: ast.FuncCall) -> str:
    return ".".join(part.sval for part in node.funcname)


def _walk(node):
    """Every pglast node below ``node`` (iterative: a hostile statement may nest deeply)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, ast.Node):
            yield item
            for name in type(item).__slots__:
                value = getattr(item, name, None)
                if isinstance(value, (ast.Node, list, tuple)):
                    stack.append(value)


# --- step 2: follow -------------------------------------------------------------------------


def follow(sql: str, catalog: Catalog) -> list[StatementLineage]:
    """One lineage per statement of ``sql``; a statement that cannot be followed says why."""
    try:
        statements = parse(sql)
    except LineageUnknown as exc:
        return [StatementLineage(unknown=str(exc))]
    out = []
    for stmt in statements:
        analyzer = _Analyzer(catalog)
        try:
            out.append(_with_types(analyzer.statement(stmt), catalog))
        except LineageUnknown as exc:
            out.append(StatementLineage(unknown=str(exc), changes_catalog=_changes_catalog(stmt),
                                        writes_unknown=_writes_rows(stmt)))
        except RecursionError:
            out.append(StatementLineage(unknown="the statement nests too deeply to follow"))
    return out


def _with_types(statement: StatementLineage, catalog: Catalog) -> StatementLineage:
    """The statement with its ``non_text_sources`` (a source whose type is not known stays text)."""
    sources = set(statement.predicate_sources)
    for column in statement.columns or ():
        sources |= column.sources
    for _, _, written in statement.writes:
        sources |= written
    if not sources:
        return statement
    types: dict[str, dict] = {}
    for relation in catalog.relations.values():
        if relation is not None and relation.types and len(relation.types) == len(relation.columns):
            types[relation.name] = dict(zip(relation.columns, relation.types))
    non_text = frozenset(s for s in sources if s[1] is not None
                         and (s[1] in SYSTEM_COLUMNS or types.get(s[0], {}).get(s[1]) in NEVER_FREE_TEXT_OIDS))
    return replace(statement, non_text_sources=non_text) if non_text else statement


def _writes_rows(stmt) -> bool:
    """Does the statement write values into a table that outlives the session?"""
    if isinstance(stmt, (ast.InsertStmt, ast.UpdateStmt, ast.MergeStmt)):
        return True
    into = stmt.into if isinstance(stmt, ast.CreateTableAsStmt) else getattr(stmt, "intoClause", None)
    return into is not None and into.rel.relpersistence != "t"


def _option_on(arg) -> bool:
    """An EXPLAIN option's value: no value, true/on/1 (as PostgreSQL's defGetBoolean reads it)."""
    if arg is None:
        return True
    value = getattr(arg, "sval", None) or getattr(arg, "boolval", None) or getattr(arg, "ival", None)
    if isinstance(value, str):
        return value.lower() not in ("false", "off", "0", "no")
    return bool(getattr(value, "boolval", value))


def _changes_catalog(stmt) -> bool:
    return not isinstance(stmt, (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt,
                                 ast.VariableShowStmt, ast.ExplainStmt, ast.TransactionStmt, ast.CopyStmt))


@dataclass
class _Entry:
    """One FROM item as seen by name resolution."""

    name: str | None  # alias, or the relation's name
    columns: list | None  # [(column name, ColumnLineage)], None when unknown
    everything: frozenset  # sources of the whole row
    relation: str | None = None  # catalog name (schema.table) of a plain relation


@dataclass
class _Item:
    """One top-level FROM item, for '*' expansion (a join merges its sides' columns)."""

    columns: list | None


class _Analyzer:
    def __init__(self, catalog: Catalog, depth: int = 0):
        self.catalog = catalog
        self.depth = depth
        self.predicates: set = set()
        self.ctes: list[dict[str, _Entry]] = []
        # Writes of data-modifying CTEs (WITH x AS (UPDATE ...)), wherever they sit in the statement.
        self.nested_writes: list = []

    # --- statements ---

    def statement(self, stmt) -> StatementLineage:
        if isinstance(stmt, ast.SelectStmt):
            if stmt.intoClause is not None:  # SELECT ... INTO t: no rows, but t now holds them
                columns = self.select(stmt, [])
                return StatementLineage(None, predicate_sources=frozenset(self.predicates),
                                        writes=_writes(stmt.intoClause.rel, columns)
                                        + tuple(self.nested_writes), changes_catalog=True)
            columns = self.select(stmt, [])
            return StatementLineage(tuple(columns), predicate_sources=frozenset(self.predicates),
                                    writes=tuple(self.nested_writes))
        if isinstance(stmt, (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)):
            lineage = self.modify(stmt)
            return replace(lineage, writes=tuple(self.nested_writes)) if self.nested_writes else lineage
        if isinstance(stmt, ast.CreateTableAsStmt):
            columns = self.select(stmt.query, []) if isinstance(stmt.query, ast.SelectStmt) else []
            return StatementLineage(None, writes=_writes(stmt.into.rel, columns) + tuple(self.nested_writes),
                                    changes_catalog=True)
        if isinstance(stmt, ast.VariableShowStmt):
            names = ("name", "setting", "description") if stmt.name == "all" else (stmt.name,)
            return StatementLineage(tuple(ColumnLineage(n) for n in names))
        if isinstance(stmt, ast.ExplainStmt):  # EXPLAIN ANALYZE runs its statement: its writes happen
            runs = any(isinstance(o, ast.DefElem) and o.defname == "analyze" and _option_on(o.arg)
                       for o in stmt.options or ())
            writes = self.statement(stmt.query).writes if runs else ()
            return StatementLineage((ColumnLineage("QUERY PLAN"),), writes=writes)
        if isinstance(stmt, (ast.PrepareStmt, ast.DeclareCursorStmt)):
            # Its statement runs at EXECUTE or FETCH, whose lineage is unknown: what it would
            # write (a table, or a built-in that keeps a value) is judged here.
            inner = self.statement(stmt.query)
            return StatementLineage(None, writes=inner.writes, writes_unknown=inner.writes_unknown,
                                    changes_catalog=_changes_catalog(stmt))
        if isinstance(stmt, ast.CopyStmt):
            if stmt.query is not None:
                inner = self.statement(stmt.query)
                return StatementLineage(inner.columns, predicate_sources=inner.predicate_sources, writes=inner.writes)
            entry = self.relation_entry(stmt.relation, None)
            columns = [c for _, c in entry.columns]
            if stmt.attlist:
                wanted = [a.sval for a in stmt.attlist]
                by_name = dict(entry.columns)
                columns = [by_name.get(n, ColumnLineage(n, entry.everything)) for n in wanted]
            return StatementLineage(tuple(columns))
        if isinstance(stmt, (ast.FetchStmt, ast.ExecuteStmt, ast.CallStmt)):
            kind = {ast.FetchStmt: "FETCH from a cursor", ast.ExecuteStmt: "EXECUTE of a prepared statement",
                    ast.CallStmt: "CALL of a procedure"}[type(stmt)]
            raise LineageUnknown(f"{kind} returns rows whose source the gateway does not follow")
        return StatementLineage(None, changes_catalog=_changes_catalog(stmt))

    def modify(self, stmt) -> StatementLineage:
        target = self.relation_entry(stmt.relation, stmt.relation.alias.aliasname if stmt.relation.alias else None)
        scope = [target]
        with_clause = getattr(stmt, "withClause", None)
        pushed = self.push_ctes(with_clause, [])
        try:
            for item in getattr(stmt, "fromClause", None) or getattr(stmt, "usingClause", None) or ():
                self.from_item(item, scope, [])
            assigned: dict[str, frozenset] = {}  # column -> sources of its new value
            if isinstance(stmt, ast.InsertStmt):
                if stmt.selectStmt is not None:
                    values = self.select(stmt.selectStmt, [])
                    names = [c.name for c in stmt.cols] if stmt.cols else [n for n, _ in target.columns or ()]
                    for name, value in zip(names, values):
                        assigned[name] = value.sources
            elif isinstance(stmt, ast.UpdateStmt):
                for target_column in stmt.targetList or ():
                    if not _keeps_own_value(target_column, target):
                        assigned[target_column.name] = self.expr(target_column.val, [scope])
            elif isinstance(stmt, ast.MergeStmt):
                self.from_item(stmt.sourceRelation, scope, [])
                self.predicates |= self.expr(stmt.joinCondition, [scope])
                for clause in stmt.mergeWhenClauses or ():
                    if clause.condition is not None:
                        self.predicates |= self.expr(clause.condition, [scope])
                    if clause.values is not None:  # INSERT [(cols)] VALUES (...)
                        names = ([t.name for t in clause.targetList] if clause.targetList
                                 else [n for n, _ in target.columns or ()])
                        if len(names) != len(clause.values):
                            raise LineageUnknown("a MERGE INSERT's columns and values differ in number")
                        for name, value in zip(names, clause.values):
                            assigned[name] = assigned.get(name, frozenset()) | self.expr(value, [scope])
                    else:  # UPDATE SET ...
                        for target_column in clause.targetList or ():
                            if _keeps_own_value(target_column, target):
                                continue
                            assigned[target_column.name] = (assigned.get(target_column.name, frozenset())
                                                            | self.expr(target_column.val, [scope]))
            if assigned and target.columns is not None:  # RETURNING shows the new values
                target.columns = [(n, ColumnLineage(n, c.sources | assigned[n]) if n in assigned else c)
                                  for n, c in target.columns]
            if getattr(stmt, "whereClause", None) is not None:
                self.predicates |= self.expr(stmt.whereClause, [scope])
            returning = getattr(stmt, "returningList", None)
            if returning is None and getattr(stmt, "returningClause", None) is not None:
                returning = stmt.returningClause.exprs
            columns = tuple(self.target_list(returning, [scope], [_Item(target.columns)])) if returning else None
        finally:
            self.pop_ctes(pushed)
        writes = tuple((target.relation, n, v) for n, v in assigned.items() if v) if target.relation else ()
        self.nested_writes.extend(writes)
        return StatementLineage(columns, predicate_sources=frozenset(self.predicates), writes=writes)

    # --- SELECT ---

    def select(self, stmt, outer: list) -> list[ColumnLineage]:
        """The result columns of a SELECT (``outer``: enclosing scopes, innermost last)."""
        if not isinstance(stmt, ast.SelectStmt):
            raise LineageUnknown(f"{type(stmt).__name__} in a query is not followed")
        pushed = self.push_ctes(stmt.withClause, outer)
        try:
            if stmt.op is not None and stmt.op != SetOperation.SETOP_NONE and stmt.larg is not None:
                left = self.select(stmt.larg, outer)
                right = self.select(stmt.rarg, outer)
                if len(left) != len(right):
                    raise LineageUnknown("the branches of a set operation have different column counts")
                return [ColumnLineage(a.name, a.sources | b.sources) for a, b in zip(left, right)]
            if stmt.valuesLists:
                rows = [[self.expr(e, outer) for e in row] for row in stmt.valuesLists]
                width = len(rows[0])
                return [ColumnLineage(f"column{i + 1}", frozenset().union(*(r[i] for r in rows if i < len(r))))
                        for i in range(width)]
            scope: list[_Entry] = []
            items: list[_Item] = []
            for item in stmt.fromClause or ():
                items.append(self.from_item(item, scope, outer))
            scopes = outer + [scope]
            for clause in (stmt.whereClause, stmt.havingClause):
                if clause is not None:
                    self.predicates |= self.expr(clause, scopes)
            for clause in (stmt.groupClause, stmt.sortClause, stmt.distinctClause, stmt.windowClause):
                for node in clause or ():
                    if isinstance(node, ast.Node):
                        self.predicates |= self.expr_any(node, scopes, stmt.targetList)
            return self.target_list(stmt.targetList, scopes, items)
        finally:
            self.pop_ctes(pushed)

    def target_list(self, targets, scopes: list, items: list[_Item]) -> list[ColumnLineage]:
        out: list[ColumnLineage] = []
        for target in targets or ():
            value = target.val
            if isinstance(value, ast.ColumnRef) and isinstance(value.fields[-1], ast.A_Star):
                out.extend(self.star(value, scopes, items))
                continue
            name = target.name or _default_name(value)
            if isinstance(value, ast.ColumnRef):
                column = self.column_ref(value, scopes)
                out.append(ColumnLineage(name, column.sources, column.direct))
            else:
                out.append(ColumnLineage(name, self.expr(value, scopes)))
        return out

    def star(self, ref: ast.ColumnRef, scopes: list, items: list[_Item]) -> list[ColumnLineage]:
        if len(ref.fields) == 1:
            columns = []
            for item in items:
                if item.columns is None:
                    raise LineageUnknown("'*' over a FROM item whose columns are unknown")
                columns.extend(c for _, c in item.columns)
            return columns
        entry = self.find_entry([f.sval for f in ref.fields[:-1]], scopes)
        if entry is None:
            raise LineageUnknown(f"'{'.'.join(f.sval for f in ref.fields[:-1])}.*' names no FROM item")
        if entry.columns is None:
            raise LineageUnknown(f"'{entry.name}.*' over a FROM item whose columns are unknown")
        return [c for _, c in entry.columns]

    # --- FROM ---

    def push_ctes(self, with_clause, outer: list) -> int:
        if with_clause is None:
            return 0
        frame: dict[str, _Entry] = {}
        self.ctes.append(frame)
        for cte in with_clause.ctes or ():
            names = [c.sval for c in cte.aliascolnames] if cte.aliascolnames else None
            query = cte.ctequery
            if with_clause.recursive and isinstance(query, ast.SelectStmt) and query.op not in (None, SetOperation.SETOP_NONE):
                columns = self.recursive_cte(cte.ctename, query, names, outer, frame)
            elif isinstance(query, ast.SelectStmt):
                columns = self.select(query, outer)
            else:  # a data-modifying CTE: WITH x AS (UPDATE ... RETURNING ...)
                lineage = self.modify(query)
                columns = list(lineage.columns or ())
            frame[cte.ctename] = _entry_from_columns(cte.ctename, columns, names)
        return 1

    def recursive_cte(self, name: str, query, names, outer: list, frame: dict) -> list[ColumnLineage]:
        columns = self.select(query.larg, outer)
        for _ in range(64):  # sources only grow and are finite: a fixed point comes quickly
            frame[name] = _entry_from_columns(name, columns, names)
            step = self.select(query.rarg, outer)
            if len(step) != len(columns):
                raise LineageUnknown(f"the recursive term of {name!r} has a different column count")
            merged = [ColumnLineage(a.name, a.sources | b.sources) for a, b in zip(columns, step)]
            if [c.sources for c in merged] == [c.sources for c in columns]:
                return merged
            columns = merged
        raise LineageUnknown(f"the recursive CTE {name!r} did not settle")

    def pop_ctes(self, pushed: int) -> None:
        if pushed:
            self.ctes.pop()

    def from_item(self, item, scope: list, outer: list) -> _Item:
        """Adds the item's entries to ``scope``; returns its columns for '*'."""
        if isinstance(item, ast.RangeVar):
            alias = item.alias.aliasname if item.alias else None
            entry = self.cte_entry(item) if not item.schemaname else None
            if entry is not None:
                entry = _renamed(entry, alias, item.alias)
            else:
                entry = self.relation_entry(item, alias)
            scope.append(entry)
            return _Item(entry.columns)
        if isinstance(item, ast.RangeSubselect):
            # LATERAL or not, the FROM items to the left are visible (a superset is safe).
            columns = self.select(item.subquery, outer + [list(scope)])
            entry = _entry_from_columns(item.alias.aliasname if item.alias else None, columns,
                                        [c.sval for c in item.alias.colnames] if item.alias and item.alias.colnames else None)
            scope.append(entry)
            return _Item(entry.columns)
        if isinstance(item, ast.RangeFunction):
            entry = self.function_entry(item, outer + [list(scope)])
            scope.append(entry)
            return _Item(entry.columns)
        if isinstance(item, ast.JoinExpr):
            left = self.from_item(item.larg, scope, outer)
            right = self.from_item(item.rarg, scope, outer)
            if item.quals is not None:
                self.predicates |= self.expr(item.quals, outer + [scope])
            columns = _join_columns(item, left, right)
            if item.alias is not None:
                scope.append(_entry_from_columns(item.alias.aliasname, [c for _, c in columns] if columns else [],
                                                 None) if columns is not None else
                             _Entry(item.alias.aliasname, None, frozenset()))
            return _Item(columns)
        if isinstance(item, ast.RangeTableSample):
            return self.from_item(item.relation, scope, outer)
        raise LineageUnknown(f"{type(item).__name__} in FROM is not followed")

    def cte_entry(self, item: ast.RangeVar) -> _Entry | None:
        for frame in reversed(self.ctes):
            if item.relname in frame:
                return frame[item.relname]
        return None

    def relation_entry(self, item: ast.RangeVar, alias: str | None) -> _Entry:
        key = relation_key(item)
        if key not in self.catalog.relations:
            raise LineageUnknown(f"relation {key!r} was not looked up")
        relation = self.catalog.relations[key]
        if relation is None:
            raise LineageUnknown(f"relation {key!r} is not visible to the gateway's catalog lookup "
                                 "(a temporary table, or one created in an open transaction)")
        if relation.name in STATISTICS_RELATIONS:
            raise LineageUnknown(f"{relation.name} holds sample values of table columns")
        system = relation.name.split(".", 1)[0] in SYSTEM_SCHEMAS
        if relation.kind in ("v", "m") and relation.definition and not system:
            columns = self.view_columns(relation)
        else:
            columns = [ColumnLineage(c, frozenset({(relation.name, c)}), True) for c in relation.columns]
        tainted = self.catalog.tainted
        if tainted:  # written by this session with data that came from other columns
            marked = []
            for c in columns:
                taint = frozenset().union(*(tainted.get((r, n), frozenset()) for r in (relation.name, key)
                                            for n in (c.name, None)))
                marked.append(ColumnLineage(c.name, c.sources | taint, False) if taint else c)
            columns = marked
        entry = _entry_from_columns(alias or item.relname, columns, None)
        entry.relation = relation.name
        return entry

    def view_columns(self, relation: Relation) -> list[ColumnLineage]:
        if self.depth >= MAX_VIEW_DEPTH:
            raise LineageUnknown(f"views nest deeper than {MAX_VIEW_DEPTH} levels")
        try:
            statements = parse(relation.definition)
        except LineageUnknown:
            raise LineageUnknown(f"the definition of view {relation.name!r} does not parse") from None
        inner = _Analyzer(self.catalog, self.depth + 1)
        columns = inner.select(statements[0], [])
        self.predicates |= inner.predicates
        if len(columns) != len(relation.columns):
            raise LineageUnknown(f"view {relation.name!r} has {len(relation.columns)} columns, its definition "
                                 f"{len(columns)}")
        return [ColumnLineage(name, c.sources, c.direct) for name, c in zip(relation.columns, columns)]

    def function_entry(self, item: ast.RangeFunction, scopes: list) -> _Entry:
        names: list[str] = []
        sources: set = set()
        for function, coldefs in item.functions:
            if not isinstance(function, ast.FuncCall):
                sources |= self.expr(function, scopes)
                names.append(_default_name(function))
                continue
            sources |= self.expr(function, scopes)
            short = function.funcname[-1].sval
            names.extend(_SRF_COLUMNS.get(short, (short,)))
            if coldefs:
                raise LineageUnknown(f"{short}() with a column definition list is not followed")
        if item.ordinality:
            names.append("ordinality")
        alias = item.alias.aliasname if item.alias else None
        if item.alias and item.alias.colnames:
            given = [c.sval for c in item.alias.colnames]
            names = given + names[len(given):]
        derived = frozenset(sources)
        columns = [ColumnLineage(n, derived) for n in names]
        entry = _entry_from_columns(alias or (names[0] if names else None), columns, None)
        return entry

    # --- names ---

    def find_entry(self, qualifier: list[str], scopes: list) -> _Entry | None:
        wanted = ".".join(qualifier)
        for scope in reversed(scopes):
            for entry in scope:
                if entry.name == wanted or (len(qualifier) > 1 and entry.relation == wanted):
                    return entry
        return None

    def column_ref(self, ref: ast.ColumnRef, scopes: list) -> ColumnLineage:
        parts = [f.sval if isinstance(f, ast.String) else "*" for f in ref.fields]
        if parts[-1] == "*":
            entry = self.find_entry(parts[:-1], scopes) if len(parts) > 1 else None
            if entry is None and len(parts) > 1:
                raise LineageUnknown(f"'{'.'.join(parts)}' names no FROM item")
            every = entry.everything if entry else frozenset().union(*(e.everything for s in scopes for e in s))
            return ColumnLineage("*", every)
        if len(parts) == 1:
            name = parts[0]
            for scope in reversed(scopes):
                found = [c for e in scope if e.columns is not None for n, c in e.columns if n == name]
                unknown = [e for e in scope if e.columns is None]
                if len(found) == 1 and not unknown:
                    return found[0]
                if found or unknown:
                    sources = frozenset().union(*(c.sources for c in found), *(e.everything for e in unknown))
                    return ColumnLineage(name, sources)
                whole = [e for e in scope if e.name == name]
                if whole:  # a whole-row reference: SELECT c FROM customers c
                    return ColumnLineage(name, whole[0].everything)
            if name in SYSTEM_COLUMNS:
                return ColumnLineage(name)
            raise LineageUnknown(f"column {name!r} is not found in the statement's FROM items")
        entry = self.find_entry(parts[:-1], scopes)
        if entry is None:
            if len(parts) == 2:  # a field of a whole-row reference: (c).email parsed as c.email? no: table.col
                raise LineageUnknown(f"'{parts[0]}' names no FROM item")
            raise LineageUnknown(f"'{'.'.join(parts[:-1])}' names no FROM item")
        if entry.columns is None:
            return ColumnLineage(parts[-1], entry.everything)
        for n, c in entry.columns:
            if n == parts[-1]:
                return c
        if parts[-1] in SYSTEM_COLUMNS and entry.relation is not None:
            return ColumnLineage(parts[-1])  # row identity (ctid, xmin...), no column's data
        if len(parts) == 2:
            raise LineageUnknown(f"column {'.'.join(parts)!r} is not found")
        return ColumnLineage(parts[-1], entry.everything)

    # --- expressions ---

    def expr(self, node, scopes: list) -> frozenset:
        """Every table column that an expression reads (whole-row references: all columns)."""
        sources: set = set()
        stack = [node]
        while stack:
            item = stack.pop()
            if isinstance(item, (list, tuple)):
                stack.extend(item)
                continue
            if not isinstance(item, ast.Node):
                continue
            if isinstance(item, ast.ColumnRef):
                sources |= self.column_ref(item, scopes).sources
                continue
            if isinstance(item, ast.SubLink):
                if item.testexpr is not None:
                    stack.append(item.testexpr)
                for column in self.select(item.subselect, scopes):
                    sources |= column.sources
                continue
            if isinstance(item, (ast.SelectStmt, ast.RangeVar)):
                raise LineageUnknown(f"{type(item).__name__} inside an expression is not followed")
            if isinstance(item, ast.A_Expr) and item.name:
                self.check_operator(item)
            if isinstance(item, ast.FuncCall):
                self.check_function(item)
                stored = STORES_ARGUMENTS.get(_function_name(item).rsplit(".", 1)[-1].lower())
                if stored is not None and item.args and len(item.args) > stored[1]:
                    kept = self.expr(list(item.args[stored[1]:]), scopes)
                    if kept:
                        self.nested_writes.append((stored[0], None, kept))
                if item.over is not None:  # the window orders and groups rows: a predicate, not the value
                    self.predicates |= self.expr(item.over, scopes)
                    stack.extend(v for v in (item.args, item.agg_order, item.agg_filter) if v is not None)
                    continue
            for name in type(item).__slots__:
                value = getattr(item, name, None)
                if isinstance(value, (ast.Node, list, tuple)):
                    stack.append(value)
        return frozenset(sources)

    def expr_any(self, node, scopes: list, targets) -> frozenset:
        """ORDER BY / GROUP BY may name an output column or its position: read them all."""
        try:
            return self.expr(node, scopes)
        except LineageUnknown:
            return frozenset().union(*(self.expr(t.val, scopes) for t in targets or ()
                                       if not (isinstance(t.val, ast.ColumnRef) and isinstance(t.val.fields[-1], ast.A_Star))))

    def check_operator(self, node: ast.A_Expr) -> None:
        """A user-defined operator runs a function whose body the gateway cannot see."""
        name = _operator_name(node)
        if not name:
            return
        if "." in name:
            if name.split(".", 1)[0] in SYSTEM_SCHEMAS:
                return
            raise LineageUnknown(f"operator {name} is not built in: the gateway cannot see what its function reads")
        known = self.catalog.operators.get(name)
        if known is None:
            raise LineageUnknown(f"operator {name} was not looked up")
        if not known:
            raise LineageUnknown(f"operator {name} is not built in: the gateway cannot see what its function reads")

    def check_function(self, node: ast.FuncCall) -> None:
        name = _function_name(node)
        if name.rsplit(".", 1)[-1].lower() in READS_DATA_BY_VALUE:
            raise LineageUnknown(f"function {name}() reads data named by its arguments (SQL text, a table, a cursor): "
                                 "the gateway cannot follow it")
        if name.split(".", 1)[0] in SYSTEM_SCHEMAS and "." in name:
            return
        if "." in name:
            raise LineageUnknown(f"function {name}() is not built in: the gateway cannot see what its body reads")
        known = self.catalog.functions.get(name)
        if known is None:
            raise LineageUnknown(f"function {name}() was not looked up")
        if not known:
            raise LineageUnknown(f"function {name}() is not built in: the gateway cannot see what its body reads")


def _entry_from_columns(name, columns: list[ColumnLineage], names) -> _Entry:
    if names:
        columns = [ColumnLineage(n, c.sources, c.direct) for n, c in zip(names, columns)] + list(columns[len(names):])
    return _Entry(name, [(c.name, c) for c in columns], _union(columns))


def _renamed(entry: _Entry, alias: str | None, alias_node) -> _Entry:
    columns = [c for _, c in entry.columns] if entry.columns is not None else None
    names = [c.sval for c in alias_node.colnames] if alias_node is not None and alias_node.colnames else None
    renamed = _entry_from_columns(alias or entry.name, columns, names) if columns is not None else \
        _Entry(alias or entry.name, None, entry.everything)
    return renamed


def _join_columns(item: ast.JoinExpr, left: _Item, right: _Item):
    if left.columns is None or right.columns is None:
        return None
    if item.isNatural:
        right_names = {n for n, _ in right.columns}
        using = [n for n, _ in left.columns if n in right_names]
    else:
        using = [u.sval for u in item.usingClause] if item.usingClause else []
    if not using:
        return left.columns + right.columns
    lmap, rmap = dict(left.columns), dict(right.columns)
    merged = [(n, ColumnLineage(n, lmap[n].sources | rmap[n].sources)) for n in using if n in lmap and n in rmap]
    return merged + [(n, c) for n, c in left.columns if n not in using] + [(n, c) for n, c in right.columns if n not in using]


def _writes(rel: ast.RangeVar, columns: list[ColumnLineage]) -> tuple:
    """What CREATE TABLE AS / SELECT INTO writes. A temporary table is the session's own (no other
    session reads it, and this session's lookups cannot see it, so reading it back fails closed)."""
    if rel.relpersistence == "t":
        return ()
    return tuple((relation_key(rel), c.name, c.sources) for c in columns if c.sources)


def _keeps_own_value(target_column: ast.ResTarget, target: _Entry) -> bool:
    """``SET notes = notes`` (or ``t.notes``): the column keeps its value; nothing new is written."""
    node = target_column.val
    if not isinstance(node, ast.ColumnRef) or target_column.indirection:
        return False
    fields = node.fields or ()
    if not all(isinstance(f, ast.String) for f in fields):
        return False
    names = [f.sval for f in fields]
    return names[-1] == target_column.name and (len(names) == 1 or names[:-1] == [target.name])


def _union(columns) -> frozenset:
    return frozenset().union(*(c.sources for c in columns)) if columns else frozenset()


def _default_name(node) -> str:
    """The column name PostgreSQL gives an unnamed expression (only used for reports)."""
    if isinstance(node, ast.ColumnRef):
        last = node.fields[-1]
        return last.sval if isinstance(last, ast.String) else "*"
    if isinstance(node, ast.FuncCall):
        return node.funcname[-1].sval
    if isinstance(node, ast.TypeCast):
        return _default_name(node.arg) if isinstance(node.arg, (ast.ColumnRef, ast.FuncCall)) else \
            node.typeName.names[-1].sval
    return "?column?"
