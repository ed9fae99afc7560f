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
"""
from __future__ import annotations

import json
from typing import Awaitable, Callable

from jitgate.masking import lineage
from jitgate.masking.lineage import Catalog, Relation, StatementLineage

Fetch = Callable[[str], Awaitable[list[tuple]]]
# Rows from a statement the step did not follow (more results than statements parsed): fail closed.
UNFOLLOWED = StatementLineage(unknown="the gateway did not follow the statement that produced these rows")


def _literal(text: str) -> str:
    if "\x00" in text:
        raise ValueError("NUL in a name")
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def relations_query(names: list[str]) -> str:
    """One row per name: name, schema, relation, relkind, view definition, columns (JSON list)."""
    idents = [".".join(_ident(p) for p in name.split(".", 1)) for name in names]
    return (
        "SELECT q.name, n.nspname::text, c.relname::text, c.relkind::text, "
        "CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END, "
        "array_to_json(ARRAY(SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 "
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

    def __init__(self):
        self._relations: dict[str, Relation | None] = {}
        self._functions: dict[str, bool] = {}
        self._operators: dict[str, bool] = {}
        self._tainted: dict[tuple, frozenset] = {}
        self.lookups = 0  # catalog round trips, for tests

    async def follow(self, sql: str, fetch: Fetch) -> list[StatementLineage]:
        """One lineage per statement of ``sql`` (an unknown one says why)."""
        try:
            await self._resolve(sql, fetch)
        except lineage.LineageUnknown as exc:
            return [StatementLineage(unknown=str(exc))]
        result = lineage.follow(sql, Catalog(self._relations, self._functions, self._operators, self._tainted))
        out = []
        stale = False
        for statement in result:
            if stale and statement.columns is not None:
                # The catalog answers predate an earlier statement of the same string that changes it.
                statement = StatementLineage(unknown="an earlier statement in the same query string changes "
                                                     "the catalog")
            out.append(statement)
            for relation, column, sources in statement.writes:
                key = (relation, column)
                self._tainted[key] = self._tainted.get(key, frozenset()) | sources
            stale = stale or statement.changes_catalog
        if stale:
            self.forget()
        return out

    def forget(self) -> None:
        """Drop cached catalog answers (after DDL); what this session wrote stays remembered."""
        self._relations.clear()
        self._functions.clear()
        self._operators.clear()

    async def _resolve(self, sql: str, fetch: Fetch) -> None:
        pending = [sql]
        for _ in range(lineage.MAX_VIEW_DEPTH + 1):
            relations: set[str] = set()
            functions: set[str] = set()
            operators: set[str] = set()
            for text in pending:
                needs = lineage.catalog_needs(text)
                relations |= {n for n in needs.relations if n not in self._relations}
                functions |= {n for n in needs.functions if "." not in n and n not in self._functions}
                operators |= {n for n in needs.operators if "." not in n and n not in self._operators}
            if not relations and not functions and not operators:
                return
            pending = []
            self.lookups += 1
            if relations:
                found = {row[0]: row for row in await fetch(relations_query(sorted(relations)))}
                for name in relations:
                    row = found.get(name)
                    if row is None or row[2] is None:
                        self._relations[name] = None
                        continue
                    relation = Relation(f"{row[1]}.{row[2]}", row[3], tuple(json.loads(row[5] or "[]")), row[4])
                    self._relations[name] = relation
                    if relation.definition and row[1] not in lineage.SYSTEM_SCHEMAS:
                        pending.append(relation.definition)
            if functions:
                found = {row[0]: row[1] in ("t", "true", True) for row in await fetch(functions_query(sorted(functions)))}
                for name in functions:
                    self._functions[name] = found.get(name, False)
            if operators:
                found = {row[0]: row[1] in ("t", "true", True) for row in await fetch(operators_query(sorted(operators)))}
                for name in operators:
                    self._operators[name] = found.get(name, False)
        raise lineage.LineageUnknown(f"views nest deeper than {lineage.MAX_VIEW_DEPTH} levels")

