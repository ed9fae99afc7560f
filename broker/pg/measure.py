"""Measured blast radius: how many rows a statement changes, counted by PostgreSQL itself.

No syntactic test can tell whether ``WHERE id = id`` or ``WHERE x > 0 OR true`` is
bounded, so for statements that write rows (INSERT, UPDATE, DELETE, MERGE, writable
CTEs, EXPLAIN ANALYZE of those) the broker measures instead of guessing:

1. it waits until everything sent before has been answered (so it knows the
   client's transaction state), then sends, in one write, ``BEGIN`` (or
   ``SAVEPOINT`` inside the client's transaction) with a snapshot of
   ``pg_stat_xact_user_tables``, the client's own Query (or Parse/Bind/Execute
   .../Sync batch) untouched, and a second snapshot;
2. the client's answer (RETURNING rows too) is withheld; the difference of the two
   snapshots (rows inserted, updated and deleted per table, triggers and functions
   included) and the command tags give the count;
3. within ``max_rows_changed`` it commits or releases the savepoint and the client
   gets the withheld answer unchanged (status byte of ReadyForQuery as a direct
   connection would have it): one round trip more;
4. over the limit it rolls back (the client's transaction survives), tells the
   client the count per table in a NOTICE, and holds the statement for approval.
   Approved, it runs again for real; refused, the client gets an error and its
   transaction is still usable.

What it cannot see: effects outside the transaction (sequences, dblink, NOTIFY
sent by triggers is rolled back with it), statements with their own transaction
control or COPY FROM in the same text (held for approval instead), and TRUNCATE
(its own class). See README "Measured row limit".

The pump (broker/pg/server.py) routes upstream messages here while a measurement
runs: ``Measurement.take_own`` removes the answers of the broker's own queries
from what the relay processes, and ``withhold`` keeps the client's.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
from dataclasses import dataclass, field

from broker.pg import codec
from broker.session import Verdict
from jitgate.guardrails.sql import unmeasured_reason
from jitgate.logs import log

logger = logging.getLogger("jitgate.broker.pg.measure")

SAVEPOINT = "jitgate_measure"
# Everything schema-qualified, operators included: the client controls search_path.
SNAPSHOT_SQL = (
    "SELECT pg_catalog.current_setting('track_counts'), (SELECT pg_catalog.json_agg(pg_catalog.json_build_array("
    "s.schemaname, s.relname, s.n_tup_ins, s.n_tup_upd, s.n_tup_del)) FROM pg_catalog.pg_stat_xact_user_tables s "
    "WHERE s.n_tup_ins OPERATOR(pg_catalog.+) s.n_tup_upd OPERATOR(pg_catalog.+) s.n_tup_del "
    "OPERATOR(pg_catalog.>) 0)"
)
# The client's answer is held while the broker counts; a bigger one is not buffered:
# the statement is rolled back and held for approval instead.
WITHHOLD_LIMIT = 32 * 1024 * 1024
# Kinds of upstream messages that are never part of a broker query's answer.
_ASYNC = {ord("A"), ord("S")}
_RESULT_KINDS = {ord("D"), ord("C"), ord("I"), ord("s"), ord("E")}


@dataclass
class _BrokerCycle:
    """One query the broker sent for itself, answered up to its ReadyForQuery."""

    position: int  # how many client cycles were answered before it
    # False for a bare Sync the broker sends to flush the client's own earlier messages:
    # it claims only its ReadyForQuery, the answers before it are the client's.
    claim_all: bool = True
    messages: list[tuple[int, bytes]] = field(default_factory=list)
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def error(self) -> bytes | None:
        for kind, payload in self.messages:
            if kind == ord("E"):
                return codec.message("E", payload)
        return None

    def snapshot(self) -> tuple[bool, dict[str, int]] | None:
        """(track_counts on, {table: rows changed so far}) from a SNAPSHOT_SQL answer."""
        for kind, payload in self.messages:
            if kind == ord("D"):
                track, changes = codec.parse_data_row(payload)
                return parse_snapshot((track or b"").decode(), changes.decode() if changes else None)
        return None


def parse_snapshot(track_counts: str | None, changes: str | None) -> tuple[bool, dict[str, tuple[int, int, int]]]:
    """One SNAPSHOT_SQL row: (track_counts on, {schema.table: (inserted, updated, deleted)})."""
    tables = {}
    for schema, name, ins, upd, dele in json.loads(changes) if changes else []:
        if not schema.startswith("pg_temp"):  # this session's temporary tables
            tables[f"{schema}.{name}"] = (int(ins), int(upd), int(dele))
    return track_counts == "on", tables


def judge(before, after, tag_rows: int, limit: int) -> tuple[str | None, int, dict]:
    """(why the statement must wait for a human or None, rows changed, changes per table)
    from the snapshots around it and its command tags' row count."""
    changes = _diff(before[1], after[1]) if before and after else {}
    total = max(sum(sum(c) for c in changes.values()), tag_rows)
    if not (before and after and before[0] and after[0]):
        return "the server does not count row changes (track_counts is off)", total, changes
    if total > limit:
        return f"it changed {total} rows, over the limit of {limit}", total, changes
    return None, total, changes


def limit_for(session, verdict: Verdict) -> int:
    """The rows ``verdict``'s statement may change unasked: none when masking marked its writes
    blind (``Verdict.blind_write``), else the target's measured row limit for the caller."""
    return 0 if verdict.blind_write else session.target.row_limit(session.principal.groups)


def blind_write_verdict(session, verdict: Verdict, total: int, detail: str) -> Verdict:
    """The decision on a statement that changed ``total`` > 0 rows through what masking cannot
    follow (rolled back): sensitive_write, held for approval or refused as the policy says."""
    groups = session.principal.groups
    action = session.target.action_for("sensitive_write", groups)
    why = (f"it changed {total} row(s) running code the gateway cannot see ({verdict.blind_write}), "
           "which can copy masked values into a table others read in clear"
           + (f"; {detail}" if detail else ""))
    classes = tuple(sorted(set(verdict.classes) | {"sensitive_write"}))
    reasons = verdict.reasons + (f"sensitive_write: measured: {why}",)
    where = f"on target {session.target_name!r}"
    if action == "deny":
        return Verdict("deny", classes, reasons, f"jitgate: statement rolled back and refused by policy {where} "
                                                 f"(class: sensitive_write; {why})")
    return Verdict("approve", classes, reasons, f"jitgate: statement rolled back and needs approval {where} "
                                                f"(class: sensitive_write; {why})")


class Measurement:
    """What the pump routes while one measured run is in flight (sans-IO)."""

    def __init__(self):
        self.cycles: collections.deque[_BrokerCycle] = collections.deque()
        self.withheld = bytearray()
        self.overflow = False

    def add_cycle(self, position: int, claim_all: bool = True) -> _BrokerCycle:
        cycle = _BrokerCycle(position, claim_all)
        self.cycles.append(cycle)
        return cycle

    def take_own(self, data: bytes, spans: list, ready_cycle: int) -> tuple[bytes, list]:
        """Remove the broker's own answers from a chunk; the rest goes through the relay as usual."""
        position = ready_cycle
        keep, out, size = [], [], 0
        for kind, start, end in spans:
            cycle = self.cycles[0] if self.cycles else None
            if (cycle is not None and cycle.position == position and kind not in _ASYNC
                    and (cycle.claim_all or kind == ord("Z"))):
                cycle.messages.append((kind, data[start + 5 : end]))
                if kind == ord("Z"):
                    self.cycles.popleft()
                    cycle.done.set_result(None)
                continue
            if kind == ord("Z"):
                position += 1
            keep.append(data[start:end])
            out.append((kind, size, size + end - start))
            size += end - start
        return b"".join(keep), out

    def withhold(self, output: bytes) -> None:
        if self.overflow:
            return
        if len(self.withheld) + len(output) > WITHHOLD_LIMIT:
            self.overflow = True
            self.withheld.clear()
            return
        self.withheld += output

    def swallow_large_row(self, framer: codec.MessageReader, limit: int) -> int:
        """A DataRow over the relay's message limit while counting: held back like any answer
        (which makes the answer too large to hold: the statement is held for approval).
        Returns how many of its bytes are still to come."""
        head = framer.head()
        if head is None or head[0] != ord("D") or head[1] <= limit:
            return 0
        taken = framer.take(head[1])
        self.withhold(taken)
        return head[1] - len(taken)

    def messages(self) -> list[tuple[int, int, int]]:
        reader = codec.MessageReader(1 << 31)
        reader.feed(bytes(self.withheld))
        return reader.spans()[1]

    def client_status(self) -> str:
        """The transaction status the client's cycle ended in (I, T or E)."""
        data = bytes(self.withheld)
        for kind, start, end in reversed(self.messages()):
            if kind == ord("Z"):
                return chr(data[end - 1])
        return "E"

    def client_failed(self) -> bool:
        return any(kind == ord("E") for kind, _, _ in self.messages())

    def rows_from_tags(self) -> int:
        data = bytes(self.withheld)
        total = 0
        for kind, start, end in self.messages():
            if kind == ord("C"):
                tag = codec.parse_command_complete(data[start + 5 : end])
                if tag.split(" ", 1)[0] in ("INSERT", "UPDATE", "DELETE", "MERGE"):
                    total += codec.rows_from_tag(tag) or 0
        return total

    def release(self, status: str, error: bytes | None = None) -> bytes:
        """The withheld answer with its last ReadyForQuery saying ``status`` (and ``error`` before it)."""
        data = bytes(self.withheld)
        spans = self.messages()
        for kind, start, end in reversed(spans):
            if kind == ord("Z"):
                return data[:start] + (error or b"") + codec.build_ready(status) + data[end:]
        return data + (error or b"") + codec.build_ready(status)

    def until_first_result(self) -> bytes:
        """The withheld answers that precede any Execute's result (ParseComplete, BindComplete,
        descriptions): what a server sends when the first Execute fails."""
        data = bytes(self.withheld)
        keep = []
        for kind, start, end in self.messages():
            if kind in _RESULT_KINDS or kind == ord("Z"):
                break
            keep.append(data[start:end])
        return b"".join(keep)


def _count(messages: bytes, kind: int) -> int:
    reader = codec.MessageReader(1 << 31)
    reader.feed(messages)
    return sum(1 for k, _, _ in reader.spans()[1] if k == kind)


def describe_changes(changes: dict[str, int]) -> str:
    parts = []
    for table, (ins, upd, dele) in sorted(changes.items()):
        for verb, count in (("delete", dele), ("update", upd), ("insert", ins)):
            if count:
                parts.append(f"would {verb} {count} row{'s' if count != 1 else ''} {'from' if verb == 'delete' else 'in' if verb == 'update' else 'into'} {table}")
    return "; ".join(parts)


def _diff(before: dict, after: dict) -> dict[str, tuple[int, int, int]]:
    out = {}
    for table, counts in after.items():
        old = before.get(table, (0, 0, 0))
        delta = tuple(max(0, a - b) for a, b in zip(counts, old))
        if any(delta):
            out[table] = delta
    return out


class RowLimit:
    """The measured row limit of one PostgreSQL connection (see the module docstring)."""

    def __init__(self, connection):
        self.conn = connection
        self.bypass: bytes | None = None  # an approved request, fed back once: runs without measuring

    def applies(self, verdict: Verdict) -> bool:
        return verdict.allowed and getattr(verdict, "writes_rows", False) and not getattr(verdict, "unmeasurable", None)

    def unmeasurable(self, verdict: Verdict) -> Verdict:
        """A text that writes rows but cannot be measured waits for a human instead."""
        why = unmeasured_reason(getattr(verdict, "writes_rows", False), getattr(verdict, "unmeasurable", None))
        if not (verdict.allowed and why):
            return verdict
        return Verdict("approve", verdict.classes, verdict.reasons + (why,),
                       f"jitgate: statement needs approval on target {self.conn.session.target_name!r}: {why} "
                       "(send the row-changing statement on its own)")

    async def run(self, request: bytes, sql: str, verdict: Verdict, *, parsed: list[str] = (), extended: bool = False,
                  flush_first: bool = False) -> bytes:
        """Run ``request`` (a Query, or an extended batch ending in Sync) measured.

        Returns bytes to feed back into the client stream: the request again when it was
        approved after a rollback, else nothing. ``parsed``: names of statements the batch
        Parses (closed again after a rollback, since Parse is not transactional).
        ``flush_first``: the batch began earlier with messages already sent (Parse, Describe,
        Flush; asyncpg prepares that way) and no Execute; a Sync of the broker's own ends
        that part first, as if the client had sent it, so the rest can be wrapped.
        """
        conn = self.conn
        if self.bypass is not None and self.bypass == request:
            self.bypass = None
            conn.u_writer.write(request)
            await conn.u_writer.drain()
            return b""
        position = conn.client_cycle - 1  # the request's own cycle (already counted by the caller)
        await conn.wait_answered(position)
        status = conn.tx_status
        if status == "E":  # the server refuses anything but ROLLBACK anyway
            conn.u_writer.write(request)
            await conn.u_writer.drain()
            return b""
        limit = limit_for(conn.session, verdict)
        opened = status == "I"
        m = Measurement()
        conn.measurement = m
        try:
            if flush_first:
                sync = m.add_cycle(position, claim_all=False)
                conn.u_writer.write(codec.build_sync())
                await conn.u_writer.drain()
                await sync.done
                if m.client_failed():
                    # The part already sent failed: the server would skip the rest up to the
                    # client's Sync, so only that Sync goes upstream.
                    conn.measurement = None
                    await conn._send_client(bytes(m.withheld))
                    conn.u_writer.write(codec.build_sync())
                    await conn.u_writer.drain()
                    return b""
            pre = m.add_cycle(position)
            post = m.add_cycle(position + 1)
            begin = "BEGIN" if opened else f"SAVEPOINT {SAVEPOINT}"
            conn.u_writer.write(codec.build_query(f"{begin}; {SNAPSHOT_SQL}") + request + codec.build_query(SNAPSHOT_SQL))
            await conn.u_writer.drain()
            await pre.done
            await post.done
            before, after = pre.snapshot(), post.snapshot()
            broker_error = pre.error() or (None if m.client_failed() else post.error())
            final = m.client_status()
            if broker_error is not None or m.client_failed():
                # The statement failed (or the broker's snapshot did): nothing to count.
                if opened:
                    await self._broker_query(m, position + 1, "ROLLBACK")
                    final = "I"
                elif broker_error is not None:
                    await self._broker_query(m, position + 1, f"ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}")
                    final = "T"
                answer = (broker_error + codec.build_ready(final)) if broker_error else m.release(final)
                return await self._answer(m, answer, final)
            problem, total, changes = judge(before, after, m.rows_from_tags(), limit)
            if problem is None and m.overflow:
                problem = f"its answer is over {WITHHOLD_LIMIT // (1024 * 1024)} MiB, too large to hold while counting"
            conn.session.recorder.event("statement.measured", rows=total, limit=limit,
                                        tables={t: dict(zip(("inserted", "updated", "deleted"), c)) for t, c in changes.items()},
                                        outcome="held" if problem else "kept")
            if problem is None:
                commit = "COMMIT" if opened else f"RELEASE SAVEPOINT {SAVEPOINT}"
                done = await self._broker_query(m, position + 1, commit)
                return await self._answer(m, m.release("I" if opened else "T", done.error()), "I" if opened else "T")
            # Over the limit: undo, then ask a human with the measured count.
            undo = "ROLLBACK" if opened else f"ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}"
            await self._broker_query(m, position + 1, undo)
        finally:
            conn.measurement = None
        final = "I" if opened else "T"
        conn.tx_status = final
        detail = describe_changes(changes)
        if verdict.blind_write and total > 0:
            held = blind_write_verdict(conn.session, verdict, total, detail)
        else:
            reason = f"measured: {problem}" + (f" ({detail})" if detail else "")
            held = Verdict("approve", verdict.classes, verdict.reasons + (reason,),
                           f"jitgate: statement rolled back and needs approval on target {conn.session.target_name!r}: "
                           f"{problem}" + (f"; {detail}" if detail else ""))
        log(logger, logging.INFO, "statement over the row limit; rolled back and held", session_id=conn.session.session_id,
            rows=total, limit=limit, blind_write=bool(verdict.blind_write))
        if held.action == "approve" and conn.session.notify is not None:
            await conn.session.notify(held.message)
        decided = await conn.hold_for(sql, held) if held.action == "approve" else held
        # Parse is not transactional: the statements the rolled-back run prepared still exist.
        if decided.allowed:
            await self._close_statements(parsed)  # the run for real prepares them again
            self.bypass = request
            return request
        refusal = conn._refusal(decided)
        if extended:  # answer as a server whose first Execute failed; forget what it did not acknowledge
            acknowledged = m.until_first_result()
            await self._close_statements(parsed[_count(acknowledged, ord("1")):])
            await conn._send_client(acknowledged + refusal + codec.build_ready(final))
        else:
            await conn._send_client(refusal + codec.build_ready(final))
        return b""

    async def _close_statements(self, names: list[str]) -> None:
        names = [n for n in names if n]  # the unnamed statement is replaced by the next Parse anyway
        if not names:
            return
        m = Measurement()
        self.conn.measurement = m
        try:
            await self._broker_close(m, self.conn.client_cycle, names)
        finally:
            self.conn.measurement = None

    async def _broker_query(self, m: Measurement, position: int, sql: str) -> _BrokerCycle:
        cycle = m.add_cycle(position)
        self.conn.u_writer.write(codec.build_query(sql))
        await self.conn.u_writer.drain()
        await cycle.done
        return cycle

    async def _broker_close(self, m: Measurement, position: int, names: list[str]) -> None:
        cycle = m.add_cycle(position)
        self.conn.u_writer.write(b"".join(codec.build_close("S", n) for n in names) + codec.build_sync())
        await self.conn.u_writer.drain()
        await cycle.done

    async def _answer(self, m: Measurement, answer: bytes, status: str) -> bytes:
        self.conn.tx_status = status
        self.conn.measurement = None
        await self.conn._send_client(answer)
        return b""


@dataclass
class Batch:
    """The client's open extended-protocol batch (messages since its last Sync), as the relay
    builds its outgoing buffer: a row-writing Execute is measured over the whole batch at Sync,
    which needs the batch's Executes not yet sent upstream."""

    start: int | None = None  # offset in the outgoing buffer where the unsent part begins
    sent: bool = False  # part of it already went upstream
    sent_execute: bool = False  # ... and that part held an Execute
    unsent_execute: bool = False
    measured: tuple[str, Verdict] | None = None  # the first row-writing Execute: (sql, verdict)
    execute_at: tuple[int, int] = (0, 0)  # that Execute's span in the outgoing buffer
    parsed: list[str] = field(default_factory=list)

    def message(self, out_length: int, execute: bool = False) -> None:
        if self.start is None:
            self.start = out_length
        self.unsent_execute = self.unsent_execute or execute

    def flushed(self, out_length: int) -> None:
        """The outgoing buffer (``out_length`` bytes) was written upstream."""
        if self.start is not None:
            if self.start < out_length:
                self.sent = True
                self.sent_execute = self.sent_execute or self.unsent_execute
                self.unsent_execute = False
                self.parsed = []  # prepared before the measured part: not the measurement's to undo
            self.start = 0

    def held_back(self, out: bytearray) -> tuple[bytes, bytes]:
        """At the end of a read: (bytes to send now, bytes to keep until the batch's Sync)."""
        start = self.start or 0
        self.start = 0
        at, length = self.execute_at
        self.execute_at = (at - start, length)
        return bytes(out[:start]), bytes(out[start:])

    def reset(self) -> None:
        self.start, self.sent, self.sent_execute, self.unsent_execute = None, False, False, False
        self.measured, self.execute_at, self.parsed = None, (0, 0), []


UNMEASURABLE_EXECUTE = ("jitgate: this Execute changes rows, but {why}, so the gateway cannot measure how many; "
                        "send it in its own Parse/Bind/Execute/Sync (without Flush before Sync)")
