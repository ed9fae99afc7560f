"""Classify PostgreSQL statements into guardrail classes.

``classify_sql(text)`` parses the text with pglast (PostgreSQL's own grammar, so
comments, quoting, dollar quoting and case folding are read exactly as the
server reads them), walks every node of every statement, and returns the
union of the classes found. The class names are those of
``jitgate.policy.SQL_CLASSES``.

Fail closed: text that does not parse, a statement type this module does not
know, and ``EXECUTE`` of a statement prepared elsewhere are all
``unclassified``, which the default policy refuses.

What the walk looks at, beyond the statement type:

- every statement nested anywhere (CTEs, ``COPY (query)``, ``CREATE TABLE AS``,
  rule actions, ``BEGIN ATOMIC`` bodies, ``CREATE SCHEMA`` elements), so
  ``WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d`` is
  ``dml_unbounded`` as well as ``read``;
- every function call (select lists, WHERE, subqueries, ``FROM f()``, default
  expressions, RETURNING, index expressions ...), matched by its unqualified
  name against the lists below. The schema is ignored on purpose:
  ``"PG_CATALOG".pg_read_file`` and ``myschema.pg_read_file`` both count.
  Names are compared after PostgreSQL's own case folding (pglast returns
  unquoted identifiers already lower-cased and quoted ones verbatim), so
  ``PG_READ_FILE(...)`` matches and ``"PG_READ_FILE"(...)``, a different
  function to PostgreSQL, does not.

What it cannot see: the body of a user-defined function, view, trigger or rule
that already exists in the database. ``SELECT my_cleanup()`` is ``read`` even if
``my_cleanup`` deletes rows; the text alone does not say.
"""
from __future__ import annotations

from pathlib import Path

import collections
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pglast.stream import RawStream
from pglast import ast, enums, parse_sql
from pglast.parser import normalize as pg_normalize

from jitgate.guardrails.pinned import PINNED_SETTINGS, is_pinned_value
from jitgate.guardrails.pinned import refusal as pinned_refusal

__all__ = [
    "Classification",
    "StatementVerdict",
    "classify_sql",
    "classify_function_call_oid",
    "SIDE_EFFECT_FUNCTIONS",
    "SERVER_ADMIN_FUNCTIONS",
    "READ_ONLY_SYSTEM_FUNCTIONS",
]


@dataclass(frozen=True)
class StatementVerdict:
    """One statement of a query (or one simple command of a shell line)."""

    text: str
    classes: frozenset[str]
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Classification:
    """The verdict for a whole query: the union of its statements' classes."""

    classes: frozenset[str]
    statements: tuple[StatementVerdict, ...]
    error: str | None = None
    # For the measured row limit (broker/pg/measure.py): some statement inserts, updates,
    # deletes or merges rows; and, if the text cannot run inside the broker's savepoint
    # (transaction control, COPY FROM STDIN, VACUUM), why not.
    writes_rows: bool = False
    unmeasurable: str | None = None


# --- functions -------------------------------------------------------------------
#
# Functions that change state, reach outside the database, read server files or
# run SQL given to them as a string (which this classifier cannot see into).
# Every name here yields ``side_effect_function``.
SIDE_EFFECT_FUNCTIONS = frozenset(
    {
        # server files (superuser / pg_read_server_files)
        "pg_read_file",
        "pg_read_binary_file",
        "pg_ls_dir",
        "pg_stat_file",
        "pg_ls_logdir",
        "pg_ls_waldir",
        "pg_ls_tmpdir",
        "pg_ls_archive_statusdir",
        "pg_ls_logicalsnapdir",
        "pg_ls_logicalmapdir",
        "pg_ls_replslotdir",
        # adminpack: writes and renames server files
        "pg_file_write",
        "pg_file_rename",
        "pg_file_unlink",
        "pg_file_sync",
        "pg_logdir_ls",
        # large objects: lo_import/lo_export move server files in and out
        "lo_import",
        "lo_export",
        "lo_unlink",
        "lo_create",
        "lo_creat",
        "lo_from_bytea",
        "lo_put",
        "lo_truncate",
        "lo_truncate64",
        "lowrite",
        # settings: set_config('role', ...) is SET ROLE in disguise
        "set_config",
        # sequences: setval rewinds a sequence (duplicate keys later). nextval is
        # deliberately absent: every INSERT into a serial column calls it.
        "setval",
        # locks that outlive the statement
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_advisory_xact_lock",
        "pg_advisory_xact_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
        "pg_try_advisory_xact_lock",
        "pg_try_advisory_xact_lock_shared",
        "pg_advisory_unlock",
        "pg_advisory_unlock_shared",
        "pg_advisory_unlock_all",
        # holds a connection (and its locks) for as long as asked; the classic
        # probe of blind SQL injection. Rare in legitimate agent work.
        "pg_sleep",
        "pg_sleep_for",
        "pg_sleep_until",
        # messages to other sessions (NOTIFY as a function)
        "pg_notify",
        # run SQL text passed as a string: the string is opaque to this walk
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "ts_stat",
        "ts_rewrite",
        # index maintenance that writes
        "brin_summarize_new_values",
        "brin_summarize_range",
        "brin_desummarize_range",
        "gin_clean_pending_list",
        # pg_stat_statements and friends
        "pg_stat_statements_reset",
    }
)

# Prefixes of function families that are side effects as a whole.
SIDE_EFFECT_FUNCTION_PREFIXES = (
    "dblink",  # dblink, dblink_exec, dblink_connect...: SQL on another server
    "pg_logical_",  # consume replication slots, write WAL messages
    "pg_replication_origin_",
    "pg_background_",  # pg_background_launch runs SQL text in a worker
    "binary_upgrade_",  # pg_upgrade internals, catalog surgery
)

# Functions that act on the server as a whole; they are side effects too.
SERVER_ADMIN_FUNCTIONS = frozenset(
    {
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_promote",
        "pg_switch_wal",
        "pg_switch_xlog",
        "pg_create_restore_point",
        "pg_backup_start",
        "pg_backup_stop",
        "pg_start_backup",
        "pg_stop_backup",
        "pg_wal_replay_pause",
        "pg_wal_replay_resume",
        "pg_log_backend_memory_contexts",
        "pg_import_system_collations",
        "pg_create_physical_replication_slot",
        "pg_create_logical_replication_slot",
        "pg_copy_physical_replication_slot",
        "pg_copy_logical_replication_slot",
        "pg_drop_replication_slot",
        "pg_replication_slot_advance",
        "pg_sync_replication_slots",
        "pg_stat_reset",
        "pg_stat_reset_shared",
        "pg_stat_reset_single_table_counters",
        "pg_stat_reset_single_function_counters",
        "pg_stat_reset_slru",
        "pg_stat_reset_replication_slot",
        "pg_stat_reset_subscription_stats",
        "pg_prewarm",
    }
)

# PostgreSQL's administrative surface lives in functions named ``pg_*``, and
# every release adds some. Rather than chase them, an unknown ``pg_*`` call is
# treated as a side effect unless it is on this list of read-only ones (or has
# one of the read-only prefixes below). A missing entry costs an approval, not
# a hole.
READ_ONLY_SYSTEM_FUNCTIONS = frozenset(
    {
        "pg_backend_pid",
        "pg_blocking_pids",
        "pg_safe_snapshot_blocking_pids",
        "pg_client_encoding",
        "pg_column_size",
        "pg_column_compression",
        "pg_conf_load_time",
        "pg_current_logfile",
        "pg_current_snapshot",
        "pg_current_wal_flush_lsn",
        "pg_current_wal_insert_lsn",
        "pg_current_wal_lsn",
        "pg_current_xact_id",
        "pg_current_xact_id_if_assigned",
        "pg_database_size",
        "pg_describe_object",
        "pg_encoding_to_char",
        "pg_char_to_encoding",
        "pg_filenode_relation",
        "pg_has_role",
        "pg_identify_object",
        "pg_identify_object_as_address",
        "pg_indexes_size",
        "pg_index_column_has_property",
        "pg_index_has_property",
        "pg_indexam_has_property",
        "pg_input_error_info",
        "pg_input_is_valid",
        "pg_jit_available",
        "pg_last_committed_xact",
        "pg_last_wal_receive_lsn",
        "pg_last_wal_replay_lsn",
        "pg_last_xact_replay_timestamp",
        "pg_listening_channels",
        "pg_lock_status",
        "pg_my_temp_schema",
        "pg_is_other_temp_schema",
        "pg_notification_queue_usage",
        "pg_options_to_table",
        "pg_partition_ancestors",
        "pg_partition_root",
        "pg_partition_tree",
        "pg_postmaster_start_time",
        "pg_relation_filenode",
        "pg_relation_filepath",
        "pg_relation_size",
        "pg_sequence_last_value",
        "pg_sequence_parameters",
        "pg_settings_get_flags",
        "pg_show_all_settings",
        "pg_show_all_file_settings",
        "pg_size_bytes",
        "pg_size_pretty",
        "pg_snapshot_xip",
        "pg_snapshot_xmax",
        "pg_snapshot_xmin",
        "pg_table_size",
        "pg_tablespace_databases",
        "pg_tablespace_location",
        "pg_tablespace_size",
        "pg_total_relation_size",
        "pg_trigger_depth",
        "pg_typeof",
        "pg_visible_in_snapshot",
        "pg_wal_lsn_diff",
        "pg_walfile_name",
        "pg_walfile_name_offset",
        "pg_xact_commit_timestamp",
        "pg_xact_commit_timestamp_origin",
        "pg_xact_status",
        "pg_available_extensions",
        "pg_available_extension_versions",
        "pg_collation_actual_version",
        "pg_hba_file_rules",
        "pg_ident_file_mappings",
        "pg_prepared_statement",
        "pg_prepared_xact",
        "pg_cursor",
        "pg_timezone_names",
        "pg_timezone_abbrevs",
        "pg_mcv_list_items",
        "pg_stat_statements",
        "pg_stat_statements_info",
    }
)
READ_ONLY_SYSTEM_FUNCTION_PREFIXES = (
    "pg_get_",  # pg_get_viewdef, pg_get_indexdef, pg_get_constraintdef ...
    "pg_stat_get_",  # statistics accessors behind the pg_stat_* views
    "pg_control_",  # pg_control_checkpoint, pg_control_system ...
    "pg_is_",  # pg_is_in_recovery, pg_is_wal_replay_paused ...
)


def _load_stable_functions() -> frozenset[str]:
    path = Path(__file__).with_name("pg_stable_functions.txt")
    return frozenset(
        line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")
    )


# Volatile system functions that only read (sizes, WAL positions, lock views).
_VOLATILE_READ_FUNCTIONS = frozenset(
    {
        "pg_blocking_pids", "pg_collation_actual_version", "pg_current_wal_flush_lsn", "pg_current_wal_insert_lsn",
        "pg_current_wal_lsn", "pg_database_collation_actual_version", "pg_database_size", "pg_indexes_size",
        "pg_is_in_recovery", "pg_is_wal_replay_paused", "pg_jit_available", "pg_last_committed_xact",
        "pg_last_wal_receive_lsn", "pg_last_wal_replay_lsn", "pg_last_xact_replay_timestamp", "pg_lock_status",
        "pg_notification_queue_usage", "pg_partition_ancestors", "pg_partition_tree", "pg_prepared_xact",
        "pg_relation_size", "pg_safe_snapshot_blocking_pids", "pg_sequence_last_value", "pg_stat_have_stats",
        "pg_table_size", "pg_tablespace_size", "pg_total_relation_size", "pg_xact_commit_timestamp",
        "pg_xact_commit_timestamp_origin", "pg_xact_status", "pg_export_snapshot", "pg_get_wal_replay_pause_state",
        "pg_get_wal_resource_managers", "pg_stat_clear_snapshot",
    }
)
_READ_ONLY_PG_FUNCTIONS = _load_stable_functions() | _VOLATILE_READ_FUNCTIONS


def _load_catalog_functions() -> frozenset[str]:
    path = Path(__file__).with_name("pg_catalog_functions.txt")
    return frozenset(
        line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")
    )


# Every function PostgreSQL itself defines. A call of any other name may run a user
# function that writes rows, which the text cannot show: such a statement is measured.
CATALOG_FUNCTIONS = _load_catalog_functions()
_MAY_CHANGE_ROWS = " is not a PostgreSQL function and may change rows (the gateway counts them)"


def _function_classes(name: str) -> tuple[frozenset[str], str] | None:
    """Classes for a call of the function named ``name`` (already case-folded)."""
    if name in SERVER_ADMIN_FUNCTIONS:
        return _SERVER_ADMIN_CALL, f"{name}() acts on the server"
    if name in SIDE_EFFECT_FUNCTIONS or name.startswith(SIDE_EFFECT_FUNCTION_PREFIXES):
        return _SIDE_EFFECT_CALL, f"{name}() has side effects"
    if name.startswith("pg_") and not (
        name in READ_ONLY_SYSTEM_FUNCTIONS
        or name in _READ_ONLY_PG_FUNCTIONS
        or name.endswith("_is_visible")
        or name.startswith(READ_ONLY_SYSTEM_FUNCTION_PREFIXES)
    ):
        return _SIDE_EFFECT_CALL, f"{name}() is a system function not known to be read-only"
    return None


_SIDE_EFFECT_CALL = frozenset({"side_effect_function"})
_SERVER_ADMIN_CALL = frozenset({"side_effect_function", "server_admin"})


def classify_function_call_oid(oid: int) -> Classification:
    """A FunctionCall (fast-path) message names its function by OID only.

    Without a catalog lookup the function is unknown, and the fast path is what
    ``lo_import``/``lo_export`` use, so every such call is a side effect.
    """
    reason = f"fast-path call of function OID {oid} (the function is not visible in text)"
    verdict = StatementVerdict(f"<FunctionCall oid={oid}>", _SIDE_EFFECT_CALL, (reason,))
    return Classification(_SIDE_EFFECT_CALL, (verdict,), None)


# --- settings --------------------------------------------------------------------

# SET/RESET of these is not an ordinary session tweak.
_PRIVILEGE_SETTINGS = frozenset({"role", "session_authorization"})
# Settings that switch off integrity or auditing (all superuser-only), or undo a
# read-only session the gateway may have set up.
_SERVER_ADMIN_SETTINGS = frozenset(
    {
        "session_replication_role",  # 'replica' disables triggers and foreign keys
        "allow_system_table_mods",
        "ignore_system_indexes",
        "ignore_checksum_failure",
        "ignore_invalid_pages",
        "zero_damaged_pages",
        "lo_compat_privileges",
        # Not here on purpose: row_security (off makes a query that RLS would filter
        # fail instead of bypassing; only BYPASSRLS roles bypass, and pg_dump sets it
        # off), transaction_read_only / default_transaction_read_only (they restrict).
        "track_activities",
        "track_counts",
    }
)
_SERVER_ADMIN_SETTING_PREFIXES = ("log_", "debug_", "pgaudit.")


# --- the walk ----------------------------------------------------------------------


@dataclass
class _Findings:
    """Classes and reasons gathered while walking one top-level statement."""

    classes: set[str] = field(default_factory=set)
    reasons: list[str] = field(default_factory=list)
    # True when a rule looked at a constant's value: the verdict then holds for this
    # exact text only, not for every query of the same shape (see classify_sql).
    literal_sensitive: bool = False
    writes_rows: bool = False
    unmeasurable: str | None = None

    def add(self, klass: str | Iterable[str], reason: str) -> None:
        self.classes.update((klass,) if isinstance(klass, str) else klass)
        if reason not in self.reasons:
            self.reasons.append(reason)


@dataclass
class _Context:
    """What one statement may know about earlier statements of the same text."""

    # PREPARE name AS ... seen earlier in the same text: name -> its verdict
    prepared: dict[str, tuple[frozenset[str], tuple[str, ...]]] = field(default_factory=dict)


# A statement rule records what a statement does. It may return the children
# to walk instead of all of them, as (node, executes, top) triples: ``executes``
# is False under plain EXPLAIN (planned, not run); ``top`` marks the statement
# whose result the client receives (only that one counts as ``read``).
_Descend = list[tuple[object, bool, bool]] | None
_StatementRule = Callable[[object, _Findings, bool, _Context], _Descend]


def _walk(root: object, out: _Findings, ctx: _Context, *, executes: bool = True, top: bool = True) -> None:
    # Iterative rather than recursive: PostgreSQL accepts nesting deep enough
    # to exhaust Python's recursion limit, and a classifier must not raise.
    stack: list[tuple[object, bool, bool]] = [(root, executes, top)]
    while stack:
        node, executes, top = stack.pop()
        if isinstance(node, (tuple, list)):
            stack.extend((child, executes, False) for child in node if child is not None)
            continue
        if not isinstance(node, ast.Node):
            continue
        kind = type(node)
        expression_rule = _EXPRESSION_RULES.get(kind)
        if expression_rule is not None:
            expression_rule(node, out)
        elif kind in _STATEMENT_RULES:
            if executes:
                descend = _STATEMENT_RULES[kind](node, out, top, ctx)
                if descend is not None:
                    stack.extend(descend)
                    continue
        elif kind.__name__.endswith("Stmt") and kind is not ast.RawStmt:
            # A statement type added in a newer PostgreSQL, or one that only
            # exists inside PL/pgSQL: nothing here vouches for it.
            out.add("unclassified", f"{kind.__name__} is not a statement type jitgate knows")
        for name in node.__slots__:
            value = getattr(node, name, None)
            if isinstance(value, (ast.Node, tuple, list)):
                stack.append((value, executes, False))


# --- expression rules ----------------------------------------------------------


def _strings(nodes: Iterable[object] | None) -> list[str]:
    return [n.sval for n in nodes or () if isinstance(n, ast.String)]


def _on_function_call(node: ast.FuncCall, out: _Findings) -> None:
    names = _strings(node.funcname)
    if not names:
        return
    if names[-1] == "set_config" and _set_config_literal(node, out):
        return
    found = _function_classes(names[-1])
    if found is not None:
        out.add(*found)
    elif names[-1] not in CATALOG_FUNCTIONS:
        out.writes_rows = True
        out.add((), f"{names[-1]}(){_MAY_CHANGE_ROWS}")


def _set_config_literal(node: ast.FuncCall, out: _Findings) -> bool:
    """set_config('name', value, is_local) is SET in function form: classified exactly like SET.

    pg_dump and many drivers open with ``set_config('search_path', '', false)``.
    A name that is not a literal could name any setting, a pinned one included:
    the gateway cannot tell what it changes, so it is ``unclassified``.
    """
    out.literal_sensitive = True
    args = node.args or ()
    first = args[0] if args else None
    value = getattr(first, "val", None) if isinstance(first, ast.A_Const) else None
    if not isinstance(value, ast.String):
        out.add("unclassified", "set_config() with a setting name computed when it runs "
                                "(the gateway cannot tell which setting it changes; write SET name = value)")
        return True
    setting = value.sval.lower()
    new_value = _const_text(args[1]) if len(args) > 1 else None
    _setting_change(setting, [new_value], f"set_config({setting!r})", out)
    return True


def _on_column_ref(node: ast.ColumnRef, out: _Findings) -> None:
    # ``x.f`` is PostgreSQL's attribute notation for ``f(x)``; a "column" named
    # like a dangerous function is treated as the call it may be.
    names = _strings(node.fields)
    if len(names) >= 2:
        found = _function_classes(names[-1])
        if found is not None:
            out.add(*found)


def _on_indirection(node: ast.A_Indirection, out: _Findings) -> None:
    # ``(x).f`` is the same attribute notation.
    for name in _strings(node.indirection):
        found = _function_classes(name)
        if found is not None:
            out.add(*found)


_EXPRESSION_RULES: dict[type, Callable[[object, _Findings], None]] = {
    ast.FuncCall: _on_function_call,
    ast.ColumnRef: _on_column_ref,
    ast.A_Indirection: _on_indirection,
}


# --- statement rules ---------------------------------------------------------------


def _relation(node: object) -> str:
    if isinstance(node, ast.RangeVar):
        return ".".join(p for p in (node.catalogname, node.schemaname, node.relname) if p)
    return "?"


def _object_name(node: object) -> str:
    """Best-effort readable name of a DROP/COMMENT/GRANT object."""
    if isinstance(node, ast.RangeVar):
        return _relation(node)
    if isinstance(node, ast.String):
        return node.sval
    if isinstance(node, (tuple, list)):
        names = _strings(node)
        return ".".join(names) if names else "?"
    if isinstance(node, ast.TypeName):
        return ".".join(_strings(node.names))
    if isinstance(node, ast.ObjectWithArgs):
        return ".".join(_strings(node.objname)) + "()"
    return "?"


def _object_kind(object_type: object) -> str:
    """OBJECT_MATVIEW -> 'materialized view'."""
    name = getattr(object_type, "name", str(object_type)).removeprefix("OBJECT_")
    return {"MATVIEW": "materialized view", "FDW": "foreign-data wrapper"}.get(name, name.lower().replace("_", " "))


def _select(node: ast.SelectStmt, out: _Findings, top: bool, ctx: _Context) -> _Descend:
    if node.intoClause is not None:
        out.add("ddl", f"SELECT INTO creates table {_relation(node.intoClause.rel)}")
    elif top:
        out.add("read", "query returns rows")
    return None


def _column_refs(node: object, *, into_subqueries: bool) -> Iterable[ast.ColumnRef]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, (tuple, list)):
            stack.extend(item)
        elif isinstance(item, ast.ColumnRef):
            yield item
        elif isinstance(item, ast.Node):
            if isinstance(item, ast.SubLink) and not into_subqueries:
                continue
            stack.extend(getattr(item, name, None) for name in item.__slots__)


def _filters_rows(condition: object, target: ast.RangeVar) -> bool:
    """Whether a WHERE/ON condition can tell the target's rows apart.

    It must reference a column of the target: unqualified (assumed to be the
    target's) or qualified by the target's name or alias. ``WHERE true``,
    ``WHERE 1 = 1``, ``WHERE $1``, ``UPDATE t ... FROM s WHERE s.flag`` and
    ``WHERE EXISTS (SELECT 1 FROM u)`` do not; a correlated subquery
    (``WHERE EXISTS (SELECT 1 FROM u WHERE u.id = t.id)``) does.
    """
    if condition is None:
        return False
    if isinstance(condition, ast.CurrentOfExpr):
        return True
    names = {target.relname}
    if target.alias is not None:
        names.add(target.alias.aliasname)
    for ref in _column_refs(condition, into_subqueries=False):
        fields = _strings(ref.fields)
        if len(fields) == 1 or (len(fields) >= 2 and fields[-2] in names):
            return True
    for ref in _column_refs(condition, into_subqueries=True):
        fields = _strings(ref.fields)
        if len(fields) >= 2 and fields[-2] in names:
            return True
    return False


def _insert(node: ast.InsertStmt, out: _Findings, top: bool, ctx: _Context) -> _Descend:
    out.add("dml_bounded", f"INSERT into {_relation(node.relation)}")
    out.writes_rows = True
    return None


def _update_or_delete(node: ast.UpdateStmt | ast.DeleteStmt, out: _Findings, top: bool, ctx: _Context) -> _Descend:
    verb = "UPDATE" if isinstance(node, ast.UpdateStmt) else "DELETE"
    table = _relation(node.relation)
    out.writes_rows = True
    if node.whereClause is None:
        out.add("dml_unbounded", f"{verb} without WHERE on {table}")
    elif not _filters_rows(node.whereClause, node.relation):
        out.add("dml_unbounded", f"{verb} on {table} with a WHERE that does not depend on its rows")
    else:
        out.add("dml_bounded", f"{verb} with WHERE on {table}")
    return None


def _merge(node: ast.MergeStmt, out: _Findings, top: bool, ctx: _Context) -> _Descend:
    table = _relation(node.relation)
    out.writes_rows = True
    by_source = [
        c
        for c in node.mergeWhenClauses or ()
        if c.matchKind == enums.MergeMatchKind.MERGE_WHEN_NOT_MATCHED_BY_SOURCE
        and c.commandType in (enums.CmdType.CMD_DELETE, enums.CmdType.CMD_UPDATE)
    ]
    if by_source:
        # Every target row the source does not mention is touched: the source
        # decides what survives, not a condition.
        out.add("dml_unbounded", f"MERGE into {table} changes rows NOT MATCHED BY SOURCE")
    elif not _filters_rows(node.joinCondition, node.relation):
        out.add("dml_unbounded", f"MERGE into {table} with a join condition that does not depend on its rows")
    else:
        out.add("dml_bounded", f"MERGE into {table}")
    return None


def _truncate(node: ast.TruncateStmt, out: _Findings, top: bool, ctx: _Context) -> _Descend:
    tables = ", ".join(_relation(r) for r in node.relations or ())
    out.add("dml_unbounded", f"TRUNCATE {tables}")
    return None


def _copy(node: ast.CopyStmt, out: _Findings, top: bool, ctx: _Context) -> _Descend:
    source = _relation(node.relation) if node.relation is not None else "(query)"
    if node.is_program:
        direction = "from" if node.is_from else "to"
        out.add("copy_program", f"COPY {source} {direction} PROGRAM runs a shell command on the server")
    elif node.filename is not None:
        direction = "from" if node.is_from else "to"
        out.add("copy_program", f"COPY {source} {direction} server file {node.filename!r}")
    if node.is_from:
        out.add("dml_bounded", f"COPY into {source}")
        out.unmeasurable = "COPY FROM streams its rows after the statement starts"
    else:
        out.add("read", f"COPY {source} out")
    return None


def _explain(node: ast.ExplainStmt, out: _Findings, top: bool, ctx: _Context) -> _Descend:
    out.add("read", "EXPLAIN")
    if node.options:
        out.literal_sensitive = True  # ANALYZE false/true may be written as constants
    if _explain_runs_query(node.options):
        out.add((), "EXPLAIN ANALYZE runs the statement")
        return [(node.query, True, True)]
    # Planned, not run: only function calls still count (planning may evaluate
    # functions, and a name-based list cannot tell which ones).
    return [(node.query, False, False)]


def _explain_runs_query(options: Iterable[object] | None) -> bool:
    """Whether EXPLAIN runs its statement. Like PostgreSQL, the last ANALYZE option wins:
    ``EXPLAIN (ANALYZE false, ANALYZE true) DELETE ...`` runs the DELETE."""
    runs = False
    for option in options or ():
        if isinstance(option, ast.DefElem) and option.defname in ("analyze", "analyse"):
            value = option.arg
            if value is None:
                runs = True
                continue
            text = str(getattr(value, "sval", getattr(value, "ival", getattr(value, "boolval", "")))).lower()
            # Anything but an explicit "off" means ANALYZE (fail closed).
            runs = text not in ("false", "off", "0", "no", "f", "n", "of", "fa", "fal", "fals")
    return runs


def _prepare(node: ast.PrepareStmt, out: _Findings, top: bool, ctx: _Context) -> _Descend:
    inner = _Findings()
    _walk(node.query, inner, ctx)
    ctx.prepared[node.name] = (frozenset(inner.classes), tuple(inner.reasons))
    out.unmeasurable = "it prepares statements, which a rollback does not undo"
    out.add("session", f"PREPARE {node.name}")
    out.add(inner.classes, f"prepared statement {node.name}: " + "; ".join(inner.reasons))
    return []


def _execute(node: ast.ExecuteStmt, out: _Findings, top: bool, ctx: _Context) -> _Descend:
    known = ctx.prepared.get(node.name)
    if known is None:
        out.add("unclassified", f"EXECUTE {node.name}: the prepared statement's text is not part of this query")
    else:
        classes, reasons = known
        out.add(classes, f"EXECUTE {node.name}: " + "; ".join(reasons))
        out.writes_rows = (out.writes_rows or bool(classes & {"dml_bounded", "dml_unbounded"})
                           or any(r.endswith(_MAY_CHANGE_ROWS) for r in reasons))
    return None  # parameters may hold function calls


def _transaction(node: ast.TransactionStmt, out: _Findings, top: bool, ctx: _Context) -> _Descend:
    kind = node.kind
    two_phase = {
        enums.TransactionStmtKind.TRANS_STMT_PREPARE: "PREPARE TRANSACTION",
        enums.TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED: "COMMIT PREPARED",
        enums.TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED: "ROLLBACK PREPARED",
    }
    if kind in two_phase:
        # A prepared transaction outlives the session, holds its locks until
        # someone resolves it, and may have been prepared by anyone.
        out.add(("transaction", "server_admin"), f"{two_phase[kind]} (two-phase commit acts beyond this session)")
    else:
        out.add("transaction", kind.name.removeprefix("TRANS_STMT_").replace("_", " "))
    out.unmeasurable = "the text controls its own transaction"
    return None


def _const_text(node: object) -> str | None:
    """The text of a constant as PostgreSQL would read it for a setting; None when not a constant."""
    if isinstance(node, ast.TypeCast):
        node = node.arg  # 'off'::text is still the constant 'off'
    if not isinstance(node, ast.A_Const) or node.isnull:
        return None
    value = node.val
    for attr in ("sval", "fval", "ival", "boolval"):
        if hasattr(value, attr):
            found = getattr(value, attr)
            if isinstance(found, bool):
                return "on" if found else "off"
            return str(found)
    return None


def _setting_change(setting: str, values: list[str | None], how: str, out: _Findings) -> None:
    """One rule for every way of setting a value: SET, SET LOCAL, set_config, SET NAMES."""
    if setting in PINNED_SETTINGS:
        out.literal_sensitive = True  # the value decides: never share a verdict by shape
        if len(values) == 1 and values[0] is not None and is_pinned_value(setting, values[0]):
            out.add("session", f"{how} keeps the pinned value")
        else:
            value = values[0] if len(values) == 1 else None
            out.add("pinned_setting", pinned_refusal(setting, value, how))
    elif setting in _PRIVILEGE_SETTINGS:
        out.add("privilege", f"{how} changes the acting role")
    elif setting in _SERVER_ADMIN_SETTINGS or setting.startswith(_SERVER_ADMIN_SETTING_PREFIXES):
        out.add("server_admin", f"{how} weakens integrity, security or auditing")
    else:
        out.add("session", how)


def _set(node: ast.VariableSetStmt, out: _Findings, top: bool, ctx: _Context) -> _Descend:
    kind = node.kind
    if kind == enums.VariableSetKind.VAR_RESET_ALL:
        # Back to the session defaults, and the pinned settings' defaults are the values
        # the gateway sent in the startup packet.
        out.add("session", "RESET ALL")
        return None
    name = node.name or ""
    setting = name.lower()
    if kind == enums.VariableSetKind.VAR_SET_MULTI:
        # SET TRANSACTION ... / SET SESSION CHARACTERISTICS AS TRANSACTION ...
        label = "transaction" if name == "TRANSACTION" else "session"
        out.add(label, f"SET {name}")
    elif kind in (enums.VariableSetKind.VAR_RESET, enums.VariableSetKind.VAR_SET_DEFAULT) and setting in PINNED_SETTINGS:
        out.add("session", f"RESET {setting} returns to the value the gateway pinned at login")
    elif kind == enums.VariableSetKind.VAR_SET_VALUE:
        local = "SET LOCAL" if node.is_local else "SET"
        _setting_change(setting, [_const_text(a) for a in node.args or ()], f"{local} {setting}", out)
    else:
        verb = "RESET" if kind == enums.VariableSetKind.VAR_RESET else "SET"
        _setting_change(setting, [None], f"{verb} {setting}", out)
    return None


def _nested_setting(setstmt: object, what: str, out: _Findings) -> None:
    """ALTER ROLE/DATABASE/SYSTEM ... SET of a pinned setting is refused like SET itself."""
    name = (getattr(setstmt, "name", None) or "").lower()
    if name in PINNED_SETTINGS and getattr(setstmt, "kind", None) == enums.VariableSetKind.VAR_SET_VALUE:
        out.literal_sensitive = True
        values = [_const_text(a) for a in setstmt.args or ()]
        if not (len(values) == 1 and values[0] is not None and is_pinned_value(name, values[0])):
            out.add("pinned_setting", pinned_refusal(name, values[0] if len(values) == 1 else None, f"{what} ... SET {name}"))


def _alter_table(node: ast.AlterTableStmt, out: _Findings, top: bool, ctx: _Context) -> _Descend:
    target = f"{_object_kind(node.objtype)} {_relation(node.relation)}"
    out.add("ddl", f"ALTER {target}")
    types = enums.AlterTableType
    for cmd in node.cmds or ():
        subtype = getattr(cmd, "subtype", None)
        if subtype in (
            types.AT_EnableRowSecurity,
            types.AT_DisableRowSecurity,
            types.AT_ForceRowSecurity,
            types.AT_NoForceRowSecurity,
        ):
            out.add("privilege", f"ALTER {target}: row-level security")
        elif subtype == types.AT_ChangeOwner:
            out.add("privilege", f"ALTER {target}: OWNER TO")
        elif subtype == types.AT_SetTableSpace:
            out.add("server_admin", f"ALTER {target}: SET TABLESPACE rewrites it")
    return None


_DROP_CLASSES = {
    enums.ObjectType.OBJECT_SCHEMA: "drop_database",
    enums.ObjectType.OBJECT_EXTENSION: "server_admin",
    enums.ObjectType.OBJECT_POLICY: "privilege",
    enums.ObjectType.OBJECT_FOREIGN_SERVER: "server_admin",
    enums.ObjectType.OBJECT_FDW: "server_admin",
    enums.ObjectType.OBJECT_PUBLICATION: "server_admin",
    enums.ObjectType.OBJECT_ACCESS_METHOD: "server_admin",
}


def _drop(node: ast.DropStmt, out: _Findings, top: bool, ctx: _Context) -> _Descend:
    names = ", ".join(_object_name(o) for o in node.objects or ())
    cascade = " CASCADE" if node.behavior == enums.DropBehavior.DROP_CASCADE else ""
    klass = _DROP_CLASSES.get(node.removeType, "ddl")
    out.add(klass, f"DROP {_object_kind(node.removeType).upper()} {names}{cascade}")
    return None


def _rename(node: ast.RenameStmt, out: _Findings, top: bool, ctx: _Context) -> _Descend:
    kind = node.renameType
    klass = {
        enums.ObjectType.OBJECT_ROLE: "privilege",
        enums.ObjectType.OBJECT_DATABASE: "server_admin",
        enums.ObjectType.OBJECT_TABLESPACE: "server_admin",
    }.get(kind, "ddl")
    out.add(klass, f"RENAME {_object_kind(kind)} to {node.newname}")
    return None


def _vacuum(node: ast.VacuumStmt, out: _Findings, top: bool, ctx: _Context) -> _Descend:
    options = {o.defname for o in node.options or () if isinstance(o, ast.DefElem)}
    out.unmeasurable = "VACUUM and ANALYZE cannot run inside the gateway's savepoint"
    if not node.is_vacuumcmd:
        out.add("dml_bounded", "ANALYZE updates planner statistics")
    elif "full" in options:
        out.add("server_admin", "VACUUM FULL rewrites tables under an exclusive lock")
    else:
        # Plain VACUUM reclaims dead rows without blocking readers or writers
        # and changes nothing a query can see.
        out.add("dml_bounded", "VACUUM")
    return None


# Lock modes up to ROW SHARE are what SELECT and SELECT FOR UPDATE take anyway.
_READ_LOCK_MODES = {1: "ACCESS SHARE", 2: "ROW SHARE"}


def _lock(node: ast.LockStmt, out: _Findings, top: bool, ctx: _Context) -> _Descend:
    tables = ", ".join(_relation(r) for r in node.relations or ())
    if node.mode in _READ_LOCK_MODES:
        out.add("read", f"LOCK {tables} IN {_READ_LOCK_MODES[node.mode]} MODE")
    else:
        # No class fits exactly; a lock that blocks writers (or everyone) for the
        # rest of the transaction affects every client of the table.
        out.add("server_admin", f"LOCK {tables} in a mode that blocks other sessions")
    return None


def _alter_database_set(node: ast.AlterDatabaseSetStmt, out: _Findings, top: bool, ctx: _Context) -> _Descend:
    out.add("server_admin", f"ALTER DATABASE {node.dbname} SET")
    _nested_setting(node.setstmt, f"ALTER DATABASE {node.dbname}", out)
    return []  # the nested SET is the database default, not this session's


def _alter_role_set(node: ast.AlterRoleSetStmt, out: _Findings, top: bool, ctx: _Context) -> _Descend:
    out.add("privilege", "ALTER ROLE ... SET changes a role's defaults")
    _nested_setting(node.setstmt, "ALTER ROLE", out)
    return []


def _alter_system(node: ast.AlterSystemStmt, out: _Findings, top: bool, ctx: _Context) -> _Descend:
    setting = getattr(node.setstmt, "name", None) or "ALL"
    out.add("server_admin", f"ALTER SYSTEM {setting} rewrites postgresql.auto.conf")
    _nested_setting(node.setstmt, "ALTER SYSTEM", out)
    return []


def _constant(klass: str | tuple[str, ...], label: str) -> _StatementRule:
    """A rule for statements whose class does not depend on their details."""

    def rule(node: object, out: _Findings, top: bool, ctx: _Context) -> _Descend:
        detail = ""
        relation = getattr(node, "relation", None)
        if isinstance(relation, ast.RangeVar):
            detail = " " + _relation(relation)
        out.add(klass, label + detail)
        return None

    rule.__name__ = f"rule_{label.lower().replace(' ', '_')}"
    return rule


def _nothing(node: object, out: _Findings, top: bool, ctx: _Context) -> _Descend:
    return None


_STATEMENT_RULES: dict[type, _StatementRule] = {
    # queries and DML
    ast.SelectStmt: _select,
    ast.SetOperationStmt: _nothing,
    ast.InsertStmt: _insert,
    ast.UpdateStmt: _update_or_delete,
    ast.DeleteStmt: _update_or_delete,
    ast.MergeStmt: _merge,
    ast.TruncateStmt: _truncate,
    ast.CopyStmt: _copy,
    ast.ExplainStmt: _explain,
    ast.DeclareCursorStmt: _constant("read", "DECLARE CURSOR"),
    ast.FetchStmt: _constant("read", "FETCH"),
    ast.ClosePortalStmt: _constant("session", "CLOSE"),
    ast.LockStmt: _lock,
    # session and transaction
    ast.TransactionStmt: _transaction,
    ast.ConstraintsSetStmt: _constant("transaction", "SET CONSTRAINTS"),
    ast.VariableSetStmt: _set,
    ast.VariableShowStmt: _constant("session", "SHOW"),
    ast.DiscardStmt: _constant("session", "DISCARD"),
    ast.ListenStmt: _constant("session", "LISTEN"),
    ast.UnlistenStmt: _constant("session", "UNLISTEN"),
    ast.NotifyStmt: _constant("session", "NOTIFY"),
    ast.PrepareStmt: _prepare,
    ast.ExecuteStmt: _execute,
    ast.DeallocateStmt: _constant("session", "DEALLOCATE"),
    # DDL
    ast.CreateStmt: _constant("ddl", "CREATE TABLE"),
    ast.CreateTableAsStmt: _constant("ddl", "CREATE TABLE AS"),
    ast.CreateForeignTableStmt: _constant("ddl", "CREATE FOREIGN TABLE"),
    ast.ImportForeignSchemaStmt: _constant("ddl", "IMPORT FOREIGN SCHEMA"),
    ast.ViewStmt: _constant("ddl", "CREATE VIEW"),
    ast.IndexStmt: _constant("ddl", "CREATE INDEX on"),
    ast.CreateSeqStmt: _constant("ddl", "CREATE SEQUENCE"),
    ast.AlterSeqStmt: _constant("ddl", "ALTER SEQUENCE"),
    ast.CreateSchemaStmt: _constant("ddl", "CREATE SCHEMA"),
    ast.CreateDomainStmt: _constant("ddl", "CREATE DOMAIN"),
    ast.AlterDomainStmt: _constant("ddl", "ALTER DOMAIN"),
    ast.CreateEnumStmt: _constant("ddl", "CREATE TYPE AS ENUM"),
    ast.AlterEnumStmt: _constant("ddl", "ALTER TYPE (enum)"),
    ast.CreateRangeStmt: _constant("ddl", "CREATE TYPE AS RANGE"),
    ast.CompositeTypeStmt: _constant("ddl", "CREATE TYPE"),
    ast.AlterTypeStmt: _constant("ddl", "ALTER TYPE"),
    ast.DefineStmt: _constant("ddl", "CREATE (aggregate, operator, type, collation or text search object)"),
    ast.CreateStatsStmt: _constant("ddl", "CREATE STATISTICS"),
    ast.AlterStatsStmt: _constant("ddl", "ALTER STATISTICS"),
    ast.AlterCollationStmt: _constant("ddl", "ALTER COLLATION"),
    ast.CreateConversionStmt: _constant("ddl", "CREATE CONVERSION"),
    ast.CreateCastStmt: _constant("ddl", "CREATE CAST"),
    ast.CreateTransformStmt: _constant("ddl", "CREATE TRANSFORM"),
    ast.CreateOpClassStmt: _constant("ddl", "CREATE OPERATOR CLASS"),
    ast.CreateOpFamilyStmt: _constant("ddl", "CREATE OPERATOR FAMILY"),
    ast.AlterOpFamilyStmt: _constant("ddl", "ALTER OPERATOR FAMILY"),
    ast.AlterOperatorStmt: _constant("ddl", "ALTER OPERATOR"),
    ast.AlterTSConfigurationStmt: _constant("ddl", "ALTER TEXT SEARCH CONFIGURATION"),
    ast.AlterTSDictionaryStmt: _constant("ddl", "ALTER TEXT SEARCH DICTIONARY"),
    ast.AlterTableStmt: _alter_table,
    ast.AlterObjectSchemaStmt: _constant("ddl", "ALTER ... SET SCHEMA"),
    ast.AlterObjectDependsStmt: _constant("ddl", "ALTER ... DEPENDS ON EXTENSION"),
    ast.RenameStmt: _rename,
    ast.CommentStmt: _constant("ddl", "COMMENT ON"),
    ast.DropStmt: _drop,
    ast.RefreshMatViewStmt: _constant("ddl", "REFRESH MATERIALIZED VIEW"),
    ast.ReplicaIdentityStmt: _constant("ddl", "REPLICA IDENTITY"),
    # databases and schemas going away
    ast.DropdbStmt: _constant("drop_database", "DROP DATABASE"),
    ast.DropOwnedStmt: _constant(("drop_database", "privilege"), "DROP OWNED drops every object of a role"),
    # privileges
    ast.GrantStmt: _constant("privilege", "GRANT/REVOKE"),
    ast.GrantRoleStmt: _constant("privilege", "GRANT/REVOKE role membership"),
    ast.AlterDefaultPrivilegesStmt: _constant("privilege", "ALTER DEFAULT PRIVILEGES"),
    ast.CreateRoleStmt: _constant("privilege", "CREATE ROLE"),
    ast.AlterRoleStmt: _constant("privilege", "ALTER ROLE"),
    ast.AlterRoleSetStmt: _alter_role_set,
    ast.DropRoleStmt: _constant("privilege", "DROP ROLE"),
    ast.ReassignOwnedStmt: _constant("privilege", "REASSIGN OWNED"),
    ast.AlterOwnerStmt: _constant("privilege", "ALTER ... OWNER TO"),
    ast.CreatePolicyStmt: _constant("privilege", "CREATE POLICY (row-level security)"),
    ast.AlterPolicyStmt: _constant("privilege", "ALTER POLICY (row-level security)"),
    ast.SecLabelStmt: _constant("privilege", "SECURITY LABEL"),
    ast.CreateUserMappingStmt: _constant(("privilege", "server_admin"), "CREATE USER MAPPING stores remote credentials"),
    ast.AlterUserMappingStmt: _constant(("privilege", "server_admin"), "ALTER USER MAPPING"),
    ast.DropUserMappingStmt: _constant(("privilege", "server_admin"), "DROP USER MAPPING"),
    # the server
    ast.AlterSystemStmt: _alter_system,
    ast.LoadStmt: _constant("server_admin", "LOAD loads a shared library into the server"),
    ast.CheckPointStmt: _constant("server_admin", "CHECKPOINT"),
    ast.VacuumStmt: _vacuum,
    ast.ClusterStmt: _constant("server_admin", "CLUSTER rewrites tables under an exclusive lock"),
    ast.ReindexStmt: _constant("server_admin", "REINDEX"),
    ast.CreateExtensionStmt: _constant("server_admin", "CREATE EXTENSION"),
    ast.AlterExtensionStmt: _constant("server_admin", "ALTER EXTENSION"),
    ast.AlterExtensionContentsStmt: _constant("server_admin", "ALTER EXTENSION ADD/DROP"),
    ast.CreateTableSpaceStmt: _constant("server_admin", "CREATE TABLESPACE"),
    ast.DropTableSpaceStmt: _constant("server_admin", "DROP TABLESPACE"),
    ast.AlterTableSpaceOptionsStmt: _constant("server_admin", "ALTER TABLESPACE"),
    ast.AlterTableMoveAllStmt: _constant("server_admin", "ALTER TABLE ALL IN TABLESPACE ... SET TABLESPACE"),
    ast.CreatedbStmt: _constant("server_admin", "CREATE DATABASE"),
    ast.AlterDatabaseStmt: _constant("server_admin", "ALTER DATABASE"),
    ast.AlterDatabaseSetStmt: _alter_database_set,
    ast.AlterDatabaseRefreshCollStmt: _constant("server_admin", "ALTER DATABASE REFRESH COLLATION VERSION"),
    ast.CreateAmStmt: _constant("server_admin", "CREATE ACCESS METHOD"),
    ast.CreateFdwStmt: _constant("server_admin", "CREATE FOREIGN DATA WRAPPER"),
    ast.AlterFdwStmt: _constant("server_admin", "ALTER FOREIGN DATA WRAPPER"),
    ast.CreateForeignServerStmt: _constant("server_admin", "CREATE SERVER (a connection to another server)"),
    ast.AlterForeignServerStmt: _constant("server_admin", "ALTER SERVER"),
    ast.CreatePublicationStmt: _constant("server_admin", "CREATE PUBLICATION"),
    ast.AlterPublicationStmt: _constant("server_admin", "ALTER PUBLICATION"),
    ast.CreateSubscriptionStmt: _constant("server_admin", "CREATE SUBSCRIPTION"),
    ast.AlterSubscriptionStmt: _constant("server_admin", "ALTER SUBSCRIPTION"),
    ast.DropSubscriptionStmt: _constant("server_admin", "DROP SUBSCRIPTION"),
    # code that runs in the server
    ast.DoStmt: _constant("procedural", "DO runs an anonymous code block"),
    ast.CallStmt: _constant("procedural", "CALL runs a procedure"),
    ast.CreateFunctionStmt: _constant("procedural", "CREATE FUNCTION/PROCEDURE"),
    ast.AlterFunctionStmt: _constant("procedural", "ALTER FUNCTION/PROCEDURE"),
    ast.CreateTrigStmt: _constant("procedural", "CREATE TRIGGER on"),
    ast.CreateEventTrigStmt: _constant("procedural", "CREATE EVENT TRIGGER"),
    ast.AlterEventTrigStmt: _constant("procedural", "ALTER EVENT TRIGGER"),
    ast.RuleStmt: _constant("procedural", "CREATE RULE on"),
    ast.CreatePLangStmt: _constant("procedural", "CREATE LANGUAGE"),
}


# --- entry point -------------------------------------------------------------------

# Statements whose text is longer than this are classified but not cached, so
# a few huge queries cannot pin hundreds of megabytes in the cache.
_CACHEABLE_LENGTH = 8192
_UNCLASSIFIED = frozenset({"unclassified"})
_EMPTY = Classification(frozenset({"read"}), (), None)


# The parser's time grows faster than linearly on some inputs (long operator chains:
# "SELECT " + "+x" * n takes about 1 s at 16 KB), so text over this size is not parsed
# at all: it is ``unclassified`` and the policy decides (refused by default). 256 KiB
# holds any hand-written or ORM statement; bulk loads belong in COPY.
MAX_CLASSIFIED_BYTES = 256 * 1024


def too_long(sql: str) -> Classification | None:
    """The verdict for text over MAX_CLASSIFIED_BYTES, or None when it may be parsed."""
    if len(sql) * 4 <= MAX_CLASSIFIED_BYTES:  # 4 bytes per character at most: no need to encode
        return None
    size = len(sql.encode("utf-8", "surrogatepass"))
    if size <= MAX_CLASSIFIED_BYTES:
        return None
    error = (f"the statement is {size} bytes, over the {MAX_CLASSIFIED_BYTES}-byte limit of what the gateway "
             "classifies; split it into smaller statements, or load bulk data with COPY")
    return Classification(_UNCLASSIFIED, (StatementVerdict(sql[:200] + "...", _UNCLASSIFIED, (error,)),), error)


def classify_sql(sql: str) -> Classification:
    """Classify every statement of a simple Query or an extended-protocol Parse.

    Repeated texts (the usual case for prepared statements and benchmarks) are
    answered from an LRU cache; results are immutable, so sharing is safe.
    """
    over = too_long(sql)
    if over is not None:
        return over
    if len(sql) > _CACHEABLE_LENGTH:
        return _classify_uncached(sql)
    return _classify_cached(sql)


@functools.lru_cache(maxsize=4096)
def _classify_cached(sql: str) -> Classification:
    return _classify_by_shape(sql)


# Queries that differ only in their constants ("... WHERE aid = 17" and "... aid = 42")
# have the same parse tree but for the constants' values, so they get the same verdict,
# unless a rule read a constant's value (set_config's setting name, EXPLAIN options),
# which marks the verdict literal-sensitive and keeps it out of this cache. The key is
# PostgreSQL's own normalization (pg_query_normalize: constants become $n, every
# identifier stays as written). pg_query's fingerprint is NOT safe here: it ignores
# alias names, so "UPDATE t x ... FROM s y WHERE y.f" and "UPDATE t y ... FROM s x
# WHERE y.f" would share a key while one is bounded and the other is not.
_SHAPE_CACHE: collections.OrderedDict[str, Classification] = collections.OrderedDict()
_SHAPE_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=256)
def statement_shape(sql: str) -> str | None:
    """PostgreSQL's normalization of ``sql`` (pg_query_normalize: constants become $n, every
    identifier stays as written), to key caches of what depends on a statement's structure and
    not on its constants; None where it cannot (a NUL would cut the C string the normalizer
    reads, so the key would describe only the text before it; a text that does not parse).
    Remembered for the last texts: the classifier and the lineage step ask for the same one."""
    if "\x00" in sql:
        return None
    try:
        return pg_normalize(sql)
    except Exception:  # noqa: BLE001 - the callers' full paths report the parse error
        return None


def _classify_by_shape(sql: str) -> Classification:
    # The tool statements are matched on their literals.
    shape = None if _KNOWN_TOOL_MARKER in sql else statement_shape(sql)
    if shape is None:
        return _classify_uncached(sql)
    hit = _SHAPE_CACHE.get(shape)
    if hit is not None:
        _SHAPE_CACHE.move_to_end(shape)
        # Same classes and reasons; the statement text is this query's own.
        only = hit.statements[0]
        return Classification(hit.classes, (StatementVerdict(sql.strip(), only.classes, only.reasons),), hit.error,
                              hit.writes_rows, hit.unmeasurable)
    outcome = _classify_uncached(sql, report_sensitivity=True)
    # Parse failures and empty queries come back bare: they are never cached by shape. Nor
    # are texts of several statements: a hit could not give each statement its own text.
    result, literal_sensitive = outcome if isinstance(outcome, tuple) else (outcome, True)
    if not literal_sensitive and result.error is None and len(result.statements) == 1:
        _SHAPE_CACHE[shape] = result
        if len(_SHAPE_CACHE) > _SHAPE_CACHE_SIZE:
            _SHAPE_CACHE.popitem(last=False)
    return result


def unmeasured_reason(writes_rows: bool, unmeasurable: str | None) -> str | None:
    """Why a statement that changes rows must wait for a human instead of being counted, or None."""
    if writes_rows and unmeasurable:
        return f"it changes rows and {unmeasurable}, so the gateway cannot count them"
    return None


def classify_sql_in_session(sql: str, prepared: dict[str, tuple[frozenset[str], tuple[str, ...]]]) -> Classification:
    """Like classify_sql, but EXECUTE sees the PREPAREs of earlier queries of the same session.

    ``prepared`` is the session's memory (name -> classes, reasons); PREPAREs found in
    ``sql`` are added to it. Tools such as pg_dump PREPARE in one query and EXECUTE
    in later ones, which text-by-text classification would have to refuse.
    """
    lowered = sql.lower()
    if "execute" not in lowered and "prepare" not in lowered:
        return classify_sql(sql)
    over = too_long(sql)
    if over is not None:
        return over
    return _classify_uncached(sql, prepared)


def _classify_uncached(sql: str, prepared: dict | None = None, *, report_sensitivity: bool = False):
    if "\x00" in sql:
        # The parser reads a C string and would stop at the NUL, while the
        # bytes after it could still reach a server or a log: refuse to guess.
        return _parse_failure(sql, "the query text contains a NUL byte")
    try:
        raw_statements = parse_sql(sql)
    except Exception as exc:  # noqa: BLE001 - ParseError, or anything the parser trips on
        return _parse_failure(sql, f"{type(exc).__name__}: {exc}")
    if not raw_statements:
        return _EMPTY  # only whitespace, comments or semicolons: an empty query

    ctx = _Context()
    if prepared is not None:
        ctx.prepared = prepared  # shared on purpose: new PREPAREs are remembered for the session
    verdicts = []
    sensitive = False
    writes_rows, unmeasurable = False, None
    for raw in raw_statements:
        findings = _Findings()
        # Re-printing a statement costs more than classifying it: only try the known tool
        # statements when the text names the setting they change.
        if _KNOWN_TOOL_MARKER in sql and _canonical(raw.stmt) in _KNOWN_TOOL_STATEMENTS:
            findings.add("session", "a known setting statement of PostgreSQL's own tools")
            verdicts.append(StatementVerdict(_statement_text(sql, raw), frozenset(findings.classes), tuple(findings.reasons)))
            continue
        try:
            _walk(raw.stmt, findings, ctx)
        except Exception as exc:  # noqa: BLE001 - a surprise in the tree must not open the gate
            findings.add("unclassified", f"the classifier failed on this statement ({type(exc).__name__})")
        if not findings.classes:
            findings.add("unclassified", "no rule matched this statement")
        sensitive = sensitive or findings.literal_sensitive
        writes_rows = writes_rows or findings.writes_rows
        unmeasurable = unmeasurable or findings.unmeasurable
        verdicts.append(
            StatementVerdict(_statement_text(sql, raw), frozenset(findings.classes), tuple(findings.reasons))
        )
    classes = frozenset().union(*(v.classes for v in verdicts))
    result = Classification(classes, tuple(verdicts), None, writes_rows, unmeasurable)
    if report_sensitivity:
        return result, sensitive
    return result


def _statement_text(sql: str, raw: ast.RawStmt) -> str:
    start = raw.stmt_location or 0
    # stmt_len 0 means "up to the end of the text" (the last statement).
    end = start + raw.stmt_len if raw.stmt_len else len(sql)
    return sql[start:end].strip()


def _parse_failure(sql: str, error: str) -> Classification:
    verdict = StatementVerdict(sql, _UNCLASSIFIED, (f"cannot parse: {error}",))
    return Classification(_UNCLASSIFIED, (verdict,), error)


def _canonical(stmt) -> str | None:
    try:
        return RawStream()(stmt)
    except Exception:  # noqa: BLE001 - a statement pglast cannot print is simply not on the list
        return None


_KNOWN_TOOL_MARKER = "restrict_nonsystem_relation_kind"

# Exact statements that PostgreSQL's own clients send and that look riskier than they
# are. Compared on pglast's canonical rendering, so whitespace and case do not matter
# but every literal does.
_KNOWN_TOOL_STATEMENTS = frozenset(
    filter(
        None,
        (
            _canonical(raw.stmt)
            for text in (
                # pg_dump >= 15.8 (CVE-2024-7348): restricts, does not widen, what may be read
                "SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings "
                "WHERE name = 'restrict_nonsystem_relation_kind'",
            )
            for raw in parse_sql(text)
        ),
    )
)
