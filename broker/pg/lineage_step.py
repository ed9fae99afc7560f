"""The lineage step of a masked PostgreSQL session: parse, ask the catalog, follow.

``jitgate.masking.lineage`` is pure; this step gives it what only the target can
answer (which relations exist, their columns, view definitions, whether a function
is built in), caches the answers for the session, forgets them after any statement
that may change the catalog (DDL, SET...), and remembers the columns this session
wrote derived data into (``UPDATE t SET notes = reverse(email)``, ``CREATE TABLE x
AS SELECT ...``), so reading them back is masked like their sources.

The catalog is read through ``fetch(sql) -> rows of text`` on a connection the
caller owns (the relay's side connection, or the agent API's own upstream), with
names passed as quoted literals: nothing from the statement runs as SQL.

Parsing is bounded per message (issue 21): text up to INLINE_CHARS (a statement and
the view definitions it reaches) is parsed on the event loop; longer text goes to the
SQL worker processes (``broker/sql_worker.py``) under their time limit, and a worker
that fails or overruns makes the lineage unknown (results masked whole, or held per
``masking.unknown_lineage``). Repeats cost a dictionary lookup: what a text mentions
is cached for every session (it depends on the text alone), and each session caches
its results by (text, generation), the generation changing with anything else they
depend on (the catalog answers, which a SET or DDL drops, and the columns it tainted).

Cached catalog answers are the session's own, so they go stale when someone else changes the
catalog: another session replacing a view the session reads would have let the session follow the
old definition (``translate(email, ...)`` passed as the plain column the view used to show). Any
statement through this broker that may change a database's catalog moves that database's epoch,
which every session's step compares before it uses its cache; and no answer is used longer than
CATALOG_TTL_SECONDS, for what the broker does not see (another broker process, a DBA, DDL run by a
function).
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Awaitable, Callable

from broker.sql_worker import BoundedCache, WorkerFailed, pool
from jitgate.guardrails.sql import statement_shape, too_long
from jitgate.masking import lineage
from jitgate.masking.lineage import Catalog, Needs, Relation, StatementLineage

Fetch = Callable[[str], Awaitable[list[tuple]]]
# Rows from a statement the step did not follow (more results than statements parsed): fail closed.
UNFOLLOWED = StatementLineage(unknown="the gateway did not follow the statement that produced these rows")
# Text parsed on the event loop at most (worst case found: about 5 ms on a loaded 2-core machine,
# for "SELECT 1-1-1..."; tests/masking/test_lineage_offloop.py bounds its parse tree by its length).
INLINE_CHARS = 256
# Texts up to this length are keyed by their shape (constants as $n), as the classifier keys them
# (broker/sql_worker.INLINE_CHARS: it normalizes them on the loop already).
SHAPE_CHARS = 512
# Needs (or the reason there are none) per text: pure, so shared by every session.
_NEEDS = BoundedCache(4096, 4 * 1024 * 1024)
_WHAT = "statement's column lineage"


# No session uses a catalog answer older than this (see the module's docstring).
CATALOG_TTL_SECONDS = 1.0
_catalog_epochs: dict[tuple, int] = {}  # (address, database) -> statements that may have changed its catalog


def catalog_key(target) -> tuple:
    """Whose catalog: one database on one server, whichever targets (upstream accounts) reach it."""
    return (getattr(target, "address", None), getattr(target, "database", None))


def catalog_may_change(key: tuple) -> None:
    """A statement that may change this database's catalog goes upstream: every session's cached
    answers about it are stale from now on."""
    _catalog_epochs[key] = _catalog_epochs.get(key, 0) + 1


def _literal(text: str) -> str:
    if "\x00" in text:
        raise ValueError("NUL in a name")
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def relations_query(names: list[str]) -> str:
    """One row per name: name, schema, relation, relkind, view definition, columns and their type
    OIDs (JSON lists)."""
    idents = [".".join(_ident(p) for p in name.split(".", 1)) for name in names]
    return (
        "SELECT q.name, n.nspname::text, c.relname::text, c.relkind::text, "
        "CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END, "
        "array_to_json(ARRAY(SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 "
        "AND NOT a.attisdropped ORDER BY a.attnum))::text, "
        "array_to_json(ARRAY(SELECT a.atttypid::int FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 "
        "AND NOT a.attisdropped ORDER BY a.attnum))::text "
        f"FROM unnest(ARRAY[{', '.join(map(_literal, names))}]::text[], "
        f"ARRAY[{', '.join(map(_literal, idents))}]::text[]) AS q(name, ident) "
        "LEFT JOIN pg_class c ON c.oid = to_regclass(q.ident) LEFT JOIN pg_namespace n ON n.oid = c.relnamespace"
    )


def functions_query(names: list[str]) -> str:
    """One row per name: name, 't' when every function of that name lives in pg_catalog."""
    return (
        "SELECT q.name, coalesce(bool_and(n.nspname IN ('pg_catalog', 'information_schema')), false)::text "
        f"FROM unnest(ARRAY[{', '.join(map(_literal, names))}]::text[]) AS q(name) "
        "LEFT JOIN pg_proc p ON p.proname = q.name LEFT JOIN pg_namespace n ON n.oid = p.pronamespace "
        "GROUP BY q.name"
    )


def operators_query(names: list[str]) -> str:
    """One row per operator name: name, 'true' when every operator of that name is built in."""
    return (
        "SELECT q.name, coalesce(bool_and(n.nspname IN ('pg_catalog', 'information_schema')), false)::text "
        f"FROM unnest(ARRAY[{', '.join(map(_literal, names))}]::text[]) AS q(name) "
        "LEFT JOIN pg_operator o ON o.oprname = q.name LEFT JOIN pg_namespace n ON n.oid = o.oprnamespace "
        "GROUP BY q.name"
    )


class LineageStep:
    """Per session: the catalog answers so far, and the columns it wrote derived data into."""

    def __init__(self, owner: object = None, catalog: tuple = (None, None)):
        self.owner = owner  # whose turn it is in the worker pool (the signed-in user)
        self.catalog = catalog  # catalog_key of the target
        self._epoch = _catalog_epochs.get(catalog, 0)
        self._answers_since = time.monotonic()  # every cached catalog answer is newer than this
        self._relations: dict[str, Relation | None] = {}
        self._functions: dict[str, bool] = {}
        self._operators: dict[str, bool] = {}
        self._tainted: dict[tuple, frozenset] = {}
        self.generation = 0  # changes whenever a cached result could differ
        self._results = BoundedCache(128, 256 * 1024)  # per session: small, sessions are many
        self.lookups = 0  # catalog round trips, for tests
        self.parsed_inline = 0  # texts parsed on the event loop (tests)
        self.parsed_in_worker = 0  # parses sent to a worker (tests)

    async def follow(self, sql: str, fetch: Fetch) -> list[StatementLineage]:
        """One lineage per statement of ``sql`` (an unknown one says why)."""
        now = time.monotonic()
        epoch = _catalog_epochs.get(self.catalog, 0)
        if epoch != self._epoch or now - self._answers_since > CATALOG_TTL_SECONDS:
            self.forget()  # someone may have changed the catalog since these answers were read
            self._epoch, self._answers_since = epoch, now
        generation = self.generation
        # Lineage reads names (relations, columns, functions, operators), never a constant's value
        # (built-ins that read data named by a value are unknown by their name), so statements
        # that differ only in their constants share a result: pgbench's "... WHERE aid = 17" and
        # "... aid = 42" cost one parse. Short texts only: the classifier normalized them already.
        shape = statement_shape(sql) if len(sql) <= SHAPE_CHARS else None
        key = (shape, generation, "shape") if shape is not None else (sql, generation)
        cached = self._results.get(key)
        if cached is not None:
            return list(cached)
        over = too_long(sql)
        if over is not None:
            return [StatementLineage(unknown=over.error)]
        needs: list[Needs] = []
        try:
            chars = await self._resolve(sql, fetch, needs)
        except lineage.LineageUnknown as exc:
            return [StatementLineage(unknown=str(exc), runs_user_code=True)]  # (fails closed: unseen code)
        catalog = Catalog(self._relations, self._functions, self._operators, self._tainted)
        user_code = lineage.runs_user_code(needs, catalog)
        if chars <= INLINE_CHARS:
            self.parsed_inline += 1
            result = lineage.follow(sql, catalog)
        else:
            self.parsed_in_worker += 1
            try:
                result = await pool().run("follow", sql, catalog, owner=self.owner, what=_WHAT)
            except WorkerFailed as exc:
                return [StatementLineage(unknown=str(exc))]
        out = []
        stale = False
        for statement in result:
            if user_code:
                statement = replace(statement, runs_user_code=True)
            if stale and statement.columns is not None:
                # The catalog answers predate an earlier statement of the same string that changes it.
                statement = StatementLineage(unknown="an earlier statement in the same query string changes "
                                                     "the catalog")
            out.append(statement)
            for relation, column, sources in statement.writes:
                key_column = (relation, column)
                before = self._tainted.get(key_column, frozenset())
                if not sources <= before:
                    self._tainted[key_column] = before | sources
                    self.generation += 1
            stale = stale or statement.changes_catalog
        if stale:
            self.forget()
        elif self.generation == generation:
            self._results.put(key, tuple(out))
        return out

    def forget(self) -> None:
        """Drop cached catalog answers (after DDL); what this session wrote stays remembered."""
        self._relations.clear()
        self._functions.clear()
        self._operators.clear()
        self._results.clear()
        self.generation += 1

    async def _needs(self, text: str) -> Needs:
        found = _NEEDS.get(text)
        if found is None:
            if len(text) <= INLINE_CHARS:
                self.parsed_inline += 1
                try:
                    found = lineage.catalog_needs(text)
                except lineage.LineageUnknown as exc:
                    found = str(exc)
            else:
                self.parsed_in_worker += 1
                try:
                    found = await pool().run("needs", text, owner=self.owner, what=_WHAT)
                except WorkerFailed as exc:  # not cached: the next try may have a worker
                    raise lineage.LineageUnknown(str(exc)) from None
            _NEEDS.put(text, found)
        if isinstance(found, str):
            raise lineage.LineageUnknown(found)
        return found

    async def _resolve(self, sql: str, fetch: Fetch, found: list[Needs]) -> int:
        """Looks up what ``sql`` and the views it reaches mention (their names go to ``found``);
        returns how many characters following it parses (the statement and those view definitions)."""
        pending = [sql]
        seen = {sql}
        chars = 0
        for _ in range(lineage.MAX_VIEW_DEPTH + 1):
            relations: set[str] = set()
            functions: set[str] = set()
            operators: set[str] = set()
            reached: set[str] = set()
            for text in pending:
                chars += len(text)
                needs = await self._needs(text)
                found.append(needs)
                reached |= needs.relations
                relations |= {n for n in needs.relations if n not in self._relations}
                functions |= {n for n in needs.functions if "." not in n and n not in self._functions}
                operators |= {n for n in needs.operators if "." not in n and n not in self._operators}
            if relations or functions or operators:
                await self._look_up(relations, functions, operators, fetch)
            pending = []
            for name in sorted(reached):
                relation = self._relations.get(name)
                if (relation is not None and relation.definition and relation.definition not in seen
                        and relation.name.split(".", 1)[0] not in lineage.SYSTEM_SCHEMAS):
                    seen.add(relation.definition)
                    pending.append(relation.definition)
            if not pending:
                return chars
        raise lineage.LineageUnknown(f"views nest deeper than {lineage.MAX_VIEW_DEPTH} levels")

    async def _look_up(self, relations: set[str], functions: set[str], operators: set[str], fetch: Fetch) -> None:
        self.lookups += 1
        if relations:
            found = {row[0]: row for row in await fetch(relations_query(sorted(relations)))}
            for name in relations:
                row = found.get(name)
                if row is None or row[2] is None:
                    self._relations[name] = None
                    continue
                columns = tuple(json.loads(row[5] or "[]"))
                types = tuple(json.loads(row[6] or "[]")) if len(row) > 6 else ()
                self._relations[name] = Relation(f"{row[1]}.{row[2]}", row[3], columns, row[4],
                                                 types if len(types) == len(columns) else ())
        if functions:
            found = {row[0]: row[1] in ("t", "true", True) for row in await fetch(functions_query(sorted(functions)))}
            for name in functions:
                self._functions[name] = found.get(name, False)
        if operators:
            found = {row[0]: row[1] in ("t", "true", True) for row in await fetch(operators_query(sorted(operators)))}
            for name in operators:
                self._operators[name] = found.get(name, False)
