"""The masking steps of the PostgreSQL relay, kept out of ``server.py``'s pumps.

- ``follow_for_relay`` / ``masking_verdict``: the lineage of a statement before it goes upstream
  (or waits for approval), and the guardrail classes masking adds to its verdict.
- ``mask_row``: a DataRow through its plan; a large row is masked on a worker thread so
  one big value does not hold every other session on the event loop.
- ``mask_rows``: a run of whole DataRows (what one read brings) through its plan in one call:
  the compiled row core walks them all without returning to Python per row.
- ``stream_large_row``: a row over the size the relay holds is streamed or refused.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from broker.sql_worker import WorkerFailed, copy_statements, pool
from jitgate.logs import log
from jitgate.masking import MaskingRefused

logger = logging.getLogger("jitgate.broker.pg.masking")

# Rows larger than this are masked on a worker thread (scanning is linear, but a few
# hundred KiB of adversarial text still costs tens of milliseconds).
OFF_LOOP_ROW_BYTES = 64 * 1024


async def mask_row(plan, payload: bytes) -> bytes:
    if len(payload) <= OFF_LOOP_ROW_BYTES:
        return plan.mask_row(payload)
    return await asyncio.to_thread(plan.mask_row, payload)


async def mask_rows(plan, data: bytes, begin: int, stop: int) -> tuple[bytes, int]:
    """The DataRow messages data[begin:stop] masked: (messages, row count). A run larger than a
    large row goes to a worker thread, for the same reason as ``mask_row``."""
    batch = getattr(plan, "mask_rows", None)
    if batch is None:  # a plan of the relay's own (the fail-closed all-NULL plan): row by row
        out = []
        pos = begin
        while pos < stop:
            end = pos + 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")
            out.append(await mask_row(plan, data[pos + 5 : end]))
            pos = end
        return b"".join(out), len(out)
    if stop - begin <= OFF_LOOP_ROW_BYTES:
        return batch(data, begin, stop)
    return await asyncio.to_thread(batch, data, begin, stop)


async def stream_large_row(connection, framer) -> int:
    """A DataRow larger than ``JITGATE_PG_MAX_MESSAGE`` is not held: when nothing in its result is
    masked its bytes are passed on as they come (returns how many are still to come); when
    something is, the session ends with a clear error instead (``MaskingRefused``)."""
    head = framer.head()
    limit = connection.broker.settings.pg_max_message
    if head is None or head[0] != 0x44 or head[1] <= limit:
        return 0
    size = head[1]
    masker = connection.session.masker
    if masker is not None:
        pending = connection.pending[0] if connection.pending else None
        plan = pending.plan if pending is not None and pending.planned else await connection._plan_for_rows(b"")
        if plan is not None:
            raise MaskingRefused(
                f"a result row of {size} bytes needs masking, and the gateway holds at most {limit} bytes per row "
                "for masking (JITGATE_PG_MAX_MESSAGE); select shorter values (left(), substr()) or fewer columns")
        if pending is not None:
            pending.rows += 1
    taken = framer.take(size)
    connection.c_writer.write(taken)
    return size - len(taken)


def statement_error_fields(connection, fields: dict[str, str]) -> dict[str, str]:
    """An ErrorResponse/NoticeResponse of a statement that reads masked columns, without what may
    carry a value it read (``Masker.error_fields``: ``SELECT reverse(email)::int`` would otherwise
    echo the reversed address)."""
    head = connection.pending[0] if connection.pending else None
    if head is None:
        return fields
    return connection.session.masker.masker.error_fields(fields, head.sql, head.lineage())


async def follow_for_relay(connection, sql: str, verdict):
    """(verdict, lineages) for a statement the relay is about to forward (or hold) under masking.

    The lineage is followed before any approval hold, so the masking classes join the
    classifier's verdict and one approval covers them all (``masking_verdict``); the caller
    holds when the result says ``approve``. A denied statement is not followed.
    """
    session = connection.session
    masker = session.masker
    if masker is None or verdict.action == "deny" or not getattr(masker, "follows_lineage", False):
        return verdict, []
    lineages = await masker.follow(sql)
    unknown = next((s.unknown for s in lineages if s.unknown), None)
    if unknown is not None:
        log(logger, logging.INFO, "column lineage unknown; results fail closed", session_id=session.session_id,
            reason=unknown)
    return masking_verdict(session, verdict, lineages), lineages


def masking_verdict(session, verdict, lineages: list):
    """The verdict once masking has seen the statement's lineage (pure; the caller holds for an
    ``approve``). Every class joins the verdict, and so the recording; each one's policy action
    applies (deny over approve over allow), except that a statement a human already approved
    (``approval_id``) is not held again:

    - ``sensitive_predicate``: a WHERE, join, ORDER BY, GROUP BY... reads a masked column, so the
      result can reveal what masking hides (``WHERE email LIKE 'a%'``). Default allow.
    - ``sensitive_write``: a value read from a masked column is written into a table
      (``UPDATE customers SET notes = translate(email, ...)``, ``INSERT INTO t SELECT ...``).
      Masking follows it back only within this session; another session, or another identity,
      would read it as a plain column. Default approve.
      A statement that runs code the gateway cannot see (``runs_user_code``: a function or
      operator that is not built in, in the text or a view it reads) is marked ``blind_write``
      and measured: the row limit holds it as ``sensitive_write`` if it changed any row
      (``broker.pg.measure.blind_write_verdict``).
    - ``masking_lineage_unknown``: when ``masking.unknown_lineage: approve``, a statement whose
      result's sources cannot be followed (its result is masked whole either way).

    Everything else in the verdict (the measured row limit's ``writes_rows``, the approval)
    is kept: rebuilding it lost ``writes_rows``, so a DELETE with a predicate on a masked
    column skipped the measured row limit.
    """
    if len(lineages) == 1:  # the usual case: one statement
        predicates = lineages[0].predicate_sources
        non_text = lineages[0].non_text_sources
    else:
        predicates = frozenset().union(*(s.predicate_sources for s in lineages))
        non_text = frozenset().union(*(s.non_text_sources for s in lineages))
    found = []  # (class, action, reason)
    if predicates:
        columns = _sensitive_columns(session, predicates, non_text)
        if columns:
            found.append(("sensitive_predicate", session.target.action_for("sensitive_predicate", session.principal.groups),
                          f"it filters, joins, sorts or groups on masked column(s) {', '.join(columns)}"))
    written = [(relation, column, sources) for s in lineages for relation, column, sources in s.writes]
    blind = next((s.unknown for s in lineages if s.writes_unknown), None)
    if blind is not None:
        found.append(("sensitive_write", session.target.action_for("sensitive_write", session.principal.groups),
                      f"it writes into a table values whose source columns cannot be followed ({blind})"))
    elif written:
        columns = sorted({c for _, _, sources in written for c in _sensitive_columns(session, sources, non_text)})
        if columns:
            targets = sorted({f"{r}.{c}" if c else f"{r}.*" for r, c, sources in written
                              if _sensitive_columns(session, sources, non_text)})
            found.append(("sensitive_write", session.target.action_for("sensitive_write", session.principal.groups),
                          f"it writes values read from masked column(s) {', '.join(columns)} into {', '.join(targets)}"))
    unknown = next((s.unknown for s in lineages if s.unknown), None)
    user_code = next((s.unknown or "it calls code the gateway cannot see" for s in lineages if s.runs_user_code), None)
    if (blind is None and user_code is not None and verdict.blind_write is None and verdict.approval_id is None
            and session.target.action_for("sensitive_write", session.principal.groups) != "allow"):
        # It runs code the gateway cannot see (a function or operator that is not built in, in the
        # statement or in a view it reads), which can copy a masked column into a plain table
        # (``SELECT stash(translate(email, ...)) FROM customers``, or a body that reads the column
        # itself). The measured row limit counts what it changed, and any row is sensitive_write;
        # a text that cannot be measured waits for a human instead.
        if verdict.unmeasurable:
            found.append(("sensitive_write", session.target.action_for("sensitive_write", session.principal.groups),
                          f"it runs code the gateway cannot see ({user_code}) and {verdict.unmeasurable}, so the "
                          "gateway cannot count what it writes"))
        else:
            verdict = replace(verdict, writes_rows=True, blind_write=user_code)
    if unknown is not None and session.target.masking.unknown_lineage == "approve":
        found.append(("masking_lineage_unknown", "approve", f"the source columns of its result cannot be followed "
                                                            f"({unknown}) (policy masking.unknown_lineage: approve)"))
    if not found:
        return verdict
    classes = tuple(sorted(set(verdict.classes) | {k for k, _, _ in found}))
    reasons = verdict.reasons + tuple(f"{k}: {why}" for k, _, why in found)
    denied = [(k, why) for k, action, why in found if action == "deny"]
    held = [(k, why) for k, action, why in found if action == "approve"]
    where = f"on target {session.target_name!r}"
    if denied:
        return replace(verdict, action="deny", classes=classes, reasons=reasons, approval_id=None,
                       message=f"jitgate: statement refused by policy {where} ("
                               + "; ".join(f"class: {k}; {why}" for k, why in denied) + ")")
    if held and verdict.action == "allow" and verdict.approval_id is None:
        return replace(verdict, action="approve", classes=classes, reasons=reasons,
                       message=f"jitgate: statement needs approval {where} ("
                               + "; ".join(f"class: {k}; {why}" for k, why in held) + ")")
    if held and verdict.action == "approve":  # one approval covers the classifier's classes and these
        return replace(verdict, classes=classes, reasons=reasons,
                       message=verdict.message + " (also " + "; ".join(f"class: {k}; {why}" for k, why in held) + ")")
    return replace(verdict, classes=classes, reasons=reasons)


# COPY TO options the masker reads (others are refused, not ignored: an option that changes
# how rows are written could make the masker split them differently from the server).
_COPY_VALUE_OPTIONS = ("format", "delimiter", "null", "quote", "escape", "encoding")
_COPY_IGNORED_OPTIONS = ("force_quote",)  # only adds quotes, which the CSV reader handles
_TRUE = ("true", "on", "yes", "1")
_FALSE = ("false", "off", "no", "0")


def copy_options(stmt) -> dict:
    """The masker's view of a CopyStmt's options, read as PostgreSQL reads them."""
    options: dict = {"format": "text"}
    for opt in stmt.options or ():
        name = opt.defname.lower()
        arg = opt.arg
        value = None if arg is None else getattr(arg, "sval", None)
        if value is None and arg is not None:
            value = getattr(arg, "ival", None)
            if value is None:
                value = getattr(arg, "boolval", None)
        if name == "header":
            text = "true" if arg is None else str(value).lower()
            if text in ("true", "on", "yes", "1"):
                options["header"] = True
            elif text in ("false", "off", "no", "0"):
                options["header"] = False
            else:
                raise MaskingRefused(f"COPY HEADER {value!r} is not supported under masking; use HEADER true or false")
        elif name in _COPY_VALUE_OPTIONS:
            if not isinstance(value, str):
                raise MaskingRefused(f"COPY option {name.upper()} needs a string value")
            if name == "encoding":
                if value.replace("-", "").replace("_", "").lower() not in ("utf8", "unicode"):
                    raise MaskingRefused("COPY ENCODING other than UTF8 cannot be masked; leave ENCODING out")
                continue
            options[name] = value.lower() if name == "format" else value
        elif name not in _COPY_IGNORED_OPTIONS:
            raise MaskingRefused(f"COPY option {name.upper()} is not supported under masking; leave it out")
    return options


async def copy_plan_for(connection, sql: str, lineages: list):
    """(plan, refusal) for a ``COPY ... TO STDOUT`` under masking; (None, None) for anything else.

    The copied columns come from the catalog (a table, with or without a column list) or
    from describing the query (``COPY (SELECT ...)``), so text, CSV and binary COPY, pg_dump
    included, are masked like the same rows through SELECT.
    """
    if "copy" not in sql.lower():
        return None, None
    try:
        statements = await _copy_statements(connection, sql)
    except WorkerFailed as exc:  # fail closed: a COPY in it would go unmasked
        return None, f"the gateway could not read this statement's COPY options ({exc})"
    masker = connection.session.masker
    for index, stmt in statements:
        lineage = lineages[index] if index < len(lineages) else None
        try:
            options = copy_options(stmt)
            fields, tables, columns = await masker.copy_source(stmt)
            plan = masker.masker.plan_copy_fields(fields, tables, columns, lineage, **options)
        except MaskingRefused as exc:
            return None, str(exc)
        return plan, None
    return None, None


async def _copy_statements(connection, sql: str) -> list:
    """(index, CopyStmt) of each ``COPY ... TO STDOUT``; long text is parsed in a worker process
    (issue 21: a parse of a hostile statement costs tens of ms, holding every session)."""
    from broker.pg.lineage_step import INLINE_CHARS

    if len(sql) <= INLINE_CHARS:
        return copy_statements(sql)
    return await pool().run("copy_statements", sql, owner=connection.session.principal.username,
                            what="statement's COPY options")


# Per session: the masked columns among a statement's predicate sources. The answer depends only on
# those sources, their types and the session's rules (fixed for the session), and a statement shape seen
# before brings the same sources again: matching every rule pattern against them each time cost more
# than the rest of the decision.
SENSITIVE_CACHE_ENTRIES = 256


def _sensitive_columns(session, sources: frozenset, non_text: frozenset) -> tuple[str, ...]:
    cache = session.sensitive_columns
    key = (sources, non_text)
    columns = cache.get(key)
    if columns is None:
        columns = tuple(session.masker.masker.sensitive(sources, non_text))
        if len(cache) >= SENSITIVE_CACHE_ENTRIES:
            cache.clear()  # a bound, not a history: the shapes in use come back at once
        cache[key] = columns
    return columns
