"""One statement on a PostgreSQL target, run by the broker with its held credential.

The agent API has no client wire protocol to relay, so the broker is the
PostgreSQL client here: it logs in through the relay's own code path
(``broker.pg.upstream.open_upstream``), runs one statement with the extended query
protocol (parameters travel as text, never spliced into the SQL), and masks the
DataRows with the same ``RowPlan`` the relay uses before it turns them into JSON.

Limits: ``Execute`` asks for at most ``max_rows`` rows, so a huge SELECT stops at
the server (PortalSuspended) instead of streaming into memory; ``max_bytes``
caps the row bytes kept; ``statement_timeout`` is set for the upstream session
and an asyncio deadline sends a CancelRequest if the server does not stop in time.
"""
from __future__ import annotations

import asyncio
import json
import math
import struct
import time
from dataclasses import dataclass, field

from broker.pg import codec
from broker.pg.masking_step import OFF_LOOP_ROW_BYTES
from broker.pg.upstream import UpstreamLoginError, open_upstream
from broker.pg.upstream_auth import DEFAULT_MAX_SCRAM_ITERATIONS
from jitgate.masking import Masker
from jitgate.policy import Target

READ_SIZE = 256 * 1024
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")

# Type OIDs turned into JSON numbers/booleans/objects; everything else stays text.
_INTS = {20, 21, 23, 26, 28}
_FLOATS = {700, 701}
_BOOL = 16
_JSON = {114, 3802}


class UpstreamUnavailable(Exception):
    """The gateway could not reach or log in to the target (not the caller's fault)."""


class ExecuteAnswerOrder:
    """The order PostgreSQL answers one Parse/Bind/Describe(portal)/Execute/Sync in; anything else is
    a protocol error, so a hostile or broken target cannot slip in a second result (a second
    RowDescription or CommandComplete, rows before their description or after the end)."""

    # stage -> {message: next stage}. ErrorResponse, notices, parameter reports and notifications may
    # come at any point before ReadyForQuery (an error even after CommandComplete: the implicit
    # commit at Sync can fail); after an error only those and ReadyForQuery.
    _NEXT = {
        "start": {"1": "parsed"},
        "parsed": {"2": "bound"},
        "bound": {"T": "rows", "n": "no rows"},
        "rows": {"D": "rows", "C": "ended", "s": "ended"},
        "no rows": {"C": "ended", "I": "ended", "H": "copy out", "G": "copy in"},
        # COPY ... TO STDOUT streams CopyData (not returned to the agent) then ends; COPY FROM STDIN
        # waits for data the API never sends, and fails at Sync.
        "copy out": {"d": "copy out", "c": "copy done"},
        "copy done": {"C": "ended"},
        "copy in": {},
        "ended": {"Z": "ready"},
        "failed": {"Z": "ready"},
    }

    def __init__(self) -> None:
        self.stage = "start"

    def see(self, kind: str) -> None:
        if kind in ("N", "S", "A"):
            return
        if kind == "E" and self.stage != "ready":
            self.stage = "failed"
            return
        following = self._NEXT.get(self.stage, {}).get(kind)
        if following is None:
            raise codec.ProtocolError(f"the target answered one Execute out of order: {kind!r} after stage {self.stage!r}")
        self.stage = following


class StatementFailed(Exception):
    """PostgreSQL refused or aborted the statement; fields are already masked by the caller's masker."""

    def __init__(self, sqlstate: str, message: str, detail: str = "", hint: str = ""):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        self.hint = hint


class StatementTimeout(Exception):
    pass


class RowOverBudget(Exception):
    """The next DataRow would pass max_bytes; its size is known from its header."""

    def __init__(self, size: int):
        super().__init__(size)
        self.size = size


@dataclass
class QueryResult:
    columns: list[dict]
    rows: list[list]
    row_count: int | None
    tag: str | None
    truncated: bool = False
    truncation: str | None = None
    masked_columns: list[str] = field(default_factory=list)
    masking: list[dict] = field(default_factory=list)  # {"column", "rule"} per masked column
    row_bytes: int = 0
    notices: list[str] = field(default_factory=list)


def encode_param(value) -> bytes | None:
    """A JSON parameter as PostgreSQL text: null -> NULL, true -> 'true', objects/arrays -> JSON text."""
    if value is None:
        return None
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, (int, float)):
        return repr(value).encode() if isinstance(value, float) else str(value).encode()
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value).encode()


def build_bind(params: list[bytes | None]) -> bytes:
    parts = [codec.cstr(""), codec.cstr(""), _I16.pack(0), _I16.pack(len(params))]
    for p in params:
        if p is None:
            parts.append(_I32.pack(-1))
        else:
            parts.append(_I32.pack(len(p)))
            parts.append(p)
    parts.append(_I16.pack(0))  # all results in text
    return codec.message("B", b"".join(parts))


def build_describe_portal() -> bytes:
    return codec.message("D", b"P" + codec.cstr(""))


def build_execute(max_rows: int) -> bytes:
    return codec.message("E", codec.cstr("") + _I32.pack(max_rows))


def to_json(raw: bytes | None, type_oid: int):
    if raw is None:
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        if type_oid in _INTS:
            return int(text)
        if type_oid in _FLOATS:
            number = float(text)
            return number if math.isfinite(number) else text
        if type_oid == _BOOL:
            return text == "t"
        if type_oid in _JSON:
            return json.loads(text)
    except ValueError:
        return text
    return text


class Upstream:
    """One logged-in connection to a PostgreSQL target."""

    def __init__(self, target: Target, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.target = target
        self.reader, self.writer = reader, writer
        self.key: codec.BackendKeyData | None = None
        self.framer = codec.MessageReader(1 << 30)

    @classmethod
    async def connect(cls, target: Target, password: str, *, timeout_s: float, application: str = "jitgate-agent",
                      max_scram_iterations: int = DEFAULT_MAX_SCRAM_ITERATIONS) -> "Upstream":
        params = {"client_encoding": "UTF8", "application_name": application,
                  "statement_timeout": str(max(1, int(timeout_s * 1000)))}
        try:
            connection = await open_upstream(target, password, params, max_scram_iterations=max_scram_iterations)
        except UpstreamLoginError as exc:
            raise UpstreamUnavailable(str(exc)) from None
        self = cls(target, connection.reader, connection.writer)
        self.key = connection.key
        return self

    async def _messages(self, timeout: float, row_budget: int | None = None) -> list[tuple[str, bytes]]:
        """The next complete messages. With ``row_budget``, a DataRow larger than the budget
        raises ``RowOverBudget`` as soon as its header arrives, before its bytes are held."""
        while True:
            messages = self.framer.messages()
            if messages:
                return messages
            if row_budget is not None:
                head = self.framer.head()
                if head is not None and head[0] == 0x44 and head[1] - 5 > row_budget:
                    raise RowOverBudget(head[1] - 5)
            chunk = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
            if not chunk:
                raise UpstreamUnavailable("the target closed the connection")
            self.framer.feed(chunk)

    async def cancel(self) -> None:
        if self.key is None:
            return
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.target.host, self.target.port), 5)
            writer.write(codec.build_cancel_request(self.key.pid, self.key.secret))
            await writer.drain()
            writer.close()
        except (OSError, asyncio.TimeoutError):
            pass

    def close(self) -> None:
        try:
            self.writer.write(codec.TERMINATE)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        self.writer.close()

    async def fetch_text(self, sql: str) -> list[tuple]:
        """Rows of a catalog query on this connection, as text (simple protocol, no parameters)."""
        self.writer.write(codec.build_query(sql))
        await self.writer.drain()
        rows: list[tuple] = []
        error = None
        while True:
            for kind, payload in await self._messages(30):
                if kind == "D":
                    rows.append(tuple(None if v is None else v.decode("utf-8", "replace")
                                      for v in codec.parse_data_row(payload)))
                elif kind == "E":
                    error = codec.parse_fields(payload).get("M", "catalog query failed")
                elif kind == "Z":
                    if error is not None:
                        raise UpstreamUnavailable(f"catalog lookup failed: {error}")
                    return rows

    async def run(self, sql: str, params: list, *, max_rows: int, max_bytes: int, masker=None, vet=None) -> QueryResult:
        """``vet(lineages)``: called with the statement's lineage before it is sent; it raises
        (``MaskingVerdict``) to stop the statement there."""
        lineage = None
        if masker is not None and getattr(masker, "follows_lineage", False):
            lineages = await masker.follow(sql, self.fetch_text)
            lineage = lineages[0] if lineages else None
            if vet is not None:
                vet(lineages)
        self.writer.write(
            codec.build_parse("", sql) + build_bind([encode_param(p) for p in params]) + build_describe_portal()
            + build_execute(max_rows) + codec.SYNC
        )
        await self.writer.drain()
        fields: list[codec.FieldDescription] = []
        raw_rows: list[bytes] = []
        kept_bytes = 0
        seen_rows = 0
        truncated, truncation, tag, error = False, None, None, None
        notices: list[str] = []
        order = ExecuteAnswerOrder()
        while True:
            try:
                # Once cut, no further row is held: the next one ends the read.
                batch = await self._messages(3600, 0 if truncated else max_bytes - kept_bytes)
            except RowOverBudget as over:
                # Stop reading: the row is never held. Cancel the statement and drop the connection
                # (run_query closes it), so neither side keeps producing or buffering it.
                await self.cancel()
                if not truncated:
                    truncated = True
                    truncation = (f"result larger than max_bytes: the next row is {over.size} bytes and the "
                                  f"{len(raw_rows)} row(s) kept already hold {kept_bytes} of the {max_bytes}-byte "
                                  "limit; select fewer or shorter columns (left(), substr()) or raise max_bytes")
                return await self._finish(fields, raw_rows, seen_rows, tag, truncated, truncation, error, notices,
                                          kept_bytes, masker, lineage, sql)
            for kind, payload in batch:
                order.see(kind)
                if kind == "D":
                    seen_rows += 1
                    if not truncated and kept_bytes + len(payload) > max_bytes:
                        truncated = True
                        truncation = (f"result larger than max_bytes: cut at {len(raw_rows)} rows, the rows kept reached "
                                      f"the {max_bytes}-byte limit; select fewer columns or add LIMIT/OFFSET to page through it")
                    if not truncated:
                        raw_rows.append(payload)
                        kept_bytes += len(payload)
                elif kind == "T":
                    fields = codec.parse_row_description(payload)
                elif kind == "C":
                    tag = codec.parse_command_complete(payload)
                elif kind == "s":  # PortalSuspended: more rows than max_rows
                    if not truncated:
                        truncated = True
                        truncation = (f"result cut at {max_rows} rows (max_rows); more rows exist; "
                                      "add LIMIT/OFFSET or a narrower WHERE to page through it")
                elif kind == "E":
                    error = codec.parse_fields(payload)
                elif kind == "N":
                    notices.append(codec.parse_fields(payload))  # (fields: masking may cut them)
                elif kind == "Z":
                    return await self._finish(fields, raw_rows, seen_rows, tag, truncated, truncation, error, notices,
                                              kept_bytes, masker, lineage, sql)

    @staticmethod
    def _notice_text(notice, masker, sql: str, lineage) -> str:
        """A notice's message (the broker's own are text; upstream ones are fields, which masking may cut)."""
        if isinstance(notice, str):
            return notice
        if masker is not None and hasattr(masker, "error_fields"):
            notice = masker.error_fields(notice, sql, lineage)
        return notice.get("M", "")

    async def _finish(self, fields, raw_rows, seen_rows, tag, truncated, truncation, error, notices, kept_bytes, masker,
                      lineage=None, sql: str = ""):
        active = masker is not None and getattr(masker, "active", False)

        inner = getattr(masker, "masker", masker)

        async def clean(text: str) -> str:
            if not (active and text):
                return text
            off_loop = getattr(masker, "mask_text_off_loop", None)
            return await off_loop(text) if off_loop is not None else masker.mask_text(text)

        if error is not None:
            if active and hasattr(inner, "error_fields"):  # what PostgreSQL wrote from the data it read goes
                error = inner.error_fields(error, sql, lineage)
            raise StatementFailed(error.get("C", ""), await clean(error.get("M", "")), await clean(error.get("D", "")),
                                  await clean(error.get("H", "")))
        plan = None
        if active and fields:
            plan = await self._plan(masker, fields, lineage)
        def convert() -> list:
            rows = []
            for payload in raw_rows:
                if plan is not None:
                    payload = plan.mask_row(payload)[5:]
                values = codec.parse_data_row(payload)
                rows.append([to_json(v, f.type_oid) for v, f in zip(values, fields)])
            return rows

        # Masking many or large values is linear but not free: off the loop, other sessions go on.
        rows = convert() if kept_bytes <= OFF_LOOP_ROW_BYTES else await asyncio.to_thread(convert)
        report = plan.report([f.name for f in fields]) if plan is not None else []
        if plan is not None and plan.notice:
            notices.append(plan.notice)
        row_count = codec.rows_from_tag(tag) if tag else None
        if row_count is None and not truncated:
            row_count = seen_rows
        return QueryResult(
            columns=[{"name": f.name, "type_oid": f.type_oid} for f in fields],
            rows=rows,
            row_count=None if truncated and tag is None else row_count,
            tag=tag,
            truncated=truncated,
            truncation=truncation,
            masked_columns=[r["column"] for r in report],
            masking=report,
            row_bytes=kept_bytes,
            notices=[await clean(self._notice_text(n, inner if active else None, sql, lineage)) for n in notices],
        )

    async def _plan(self, masker, fields, lineage=None):
        """The relay's RowPlan for these fields. The broker's SessionMasker wraps a pure Masker: use
        that with the catalog read on this connection; otherwise let the masker resolve names itself."""
        oids = {f.table_oid for f in fields if f.table_oid}
        inner = getattr(masker, "masker", masker)
        if isinstance(inner, Masker):
            table_names, column_names = await self._catalog(oids)
            return inner.plan(fields, table_names, column_names, lineage)
        resolve = getattr(masker, "resolve", None)
        if resolve is not None:
            await resolve(oids)
        return masker.plan(fields, lineage)

    async def _catalog(self, oids: set[int]) -> tuple[dict[int, str], dict[tuple[int, int], str]]:
        """Table names (schema.table) and column names for the masking plan, from the target's catalog."""
        if not oids:
            return {}, {}
        listed = ",".join(str(int(o)) for o in sorted(oids))
        sql = ("SELECT c.oid, n.nspname || '.' || c.relname, a.attnum, a.attname FROM pg_class c "
               "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_attribute a ON a.attrelid = c.oid "
               f"WHERE c.oid IN ({listed}) AND a.attnum > 0")
        self.writer.write(codec.build_query(sql))
        await self.writer.drain()
        tables: dict[int, str] = {}
        columns: dict[tuple[int, int], str] = {}
        while True:
            for kind, payload in await self._messages(30):
                if kind == "D":
                    oid, table, attnum, attname = (v.decode() for v in codec.parse_data_row(payload))
                    tables[int(oid)] = table
                    columns[(int(oid), int(attnum))] = attname
                elif kind == "Z":
                    return tables, columns


class MaskingVerdict(Exception):
    """Masking's classes (broker/pg/masking_step.masking_verdict) turned the statement's verdict into a
    hold or a refusal once its lineage was known; nothing was sent."""

    def __init__(self, verdict):
        super().__init__(verdict.message)
        self.verdict = verdict


class RowLimitExceeded(Exception):
    """A measured statement changed more rows than allowed; it was rolled back."""

    def __init__(self, reason: str, rows: int, changes: dict):
        super().__init__(reason)
        self.rows = rows
        self.changes = changes
        self.blind_write = None  # the caller's verdict when masking marked its writes blind


async def run_measured(upstream: "Upstream", sql: str, params: list, *, row_limit, **kwargs) -> QueryResult:
    """The statement inside a transaction of the gateway's, counted by PostgreSQL (broker/pg/measure.py):
    committed within ``row_limit`` changed rows, rolled back over it (RowLimitExceeded). ``row_limit``
    may be a function, asked once the statement ran (masking's vet can lower it to 0)."""
    from broker.pg.measure import SNAPSHOT_SQL, describe_changes, judge, parse_snapshot  # noqa: PLC0415

    def snapshot(rows):
        return parse_snapshot(*rows[0]) if rows else None

    before = snapshot(await upstream.fetch_text("BEGIN; " + SNAPSHOT_SQL))
    result = await upstream.run(sql, params, **kwargs)  # a failure raises: the connection closes uncommitted
    if result.truncated:
        # Cut rows cannot be counted back in: nothing is committed.
        raise RowLimitExceeded(f"its result was cut ({result.truncation}), so the gateway could not finish counting",
                               0, {})
    after = snapshot(await upstream.fetch_text(SNAPSHOT_SQL))
    tag_rows = codec.rows_from_tag(result.tag) if result.tag and result.tag.split(" ", 1)[0] in (
        "INSERT", "UPDATE", "DELETE", "MERGE") else 0
    problem, total, changes = judge(before, after, tag_rows or 0, row_limit() if callable(row_limit) else row_limit)
    if problem is not None:
        await upstream.fetch_text("ROLLBACK")
        detail = describe_changes(changes)
        raise RowLimitExceeded(problem + (f"; {detail}" if detail else ""), total, changes)
    await upstream.fetch_text("COMMIT")
    return result


async def run_query(target: Target, password: str, sql: str, params: list, *, max_rows: int, max_bytes: int,
                    timeout_s: float, masker=None, row_limit: int | None = None, vet=None,
                    max_scram_iterations: int = DEFAULT_MAX_SCRAM_ITERATIONS) -> tuple[QueryResult, float]:
    """Connect, run one statement, disconnect. Returns the result and the time spent in the target.
    With ``row_limit``, the statement is measured (run_measured)."""
    upstream = await Upstream.connect(target, password, timeout_s=timeout_s, max_scram_iterations=max_scram_iterations)
    started = time.perf_counter()
    try:
        try:
            run = (upstream.run(sql, params, max_rows=max_rows, max_bytes=max_bytes, masker=masker, vet=vet)
                   if row_limit is None
                   else run_measured(upstream, sql, params, row_limit=row_limit, max_rows=max_rows, max_bytes=max_bytes,
                                     masker=masker, vet=vet))
            result = await asyncio.wait_for(run, timeout_s + 2)
        except asyncio.TimeoutError:
            await upstream.cancel()
            raise StatementTimeout(f"the statement ran longer than {timeout_s:g}s and was cancelled") from None
        return result, started
    finally:
        upstream.close()
