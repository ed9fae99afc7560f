"""The session pipeline every protocol feeds: authenticate -> classify -> decide -> forward -> mask -> record.

A protocol adapter (broker/pg/server.py, later SSH and the agent API) owns the
bytes; it hands each statement or command to ``Session.check_*`` before
forwarding it and reports results back with ``Session.record_result``. Guardrails,
approvals, masking and recording are steps here with narrow interfaces, so a new
protocol brings a codec and a small adapter, not a copy of the policy logic.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from broker import metrics
from broker.recorder import Recorder
from jitgate.identity.oidc import Principal
from jitgate.logs import log
from jitgate.policy import Policy, Target
from jitgate.policy_explain import NUL_REFUSAL, explain_command

logger = logging.getLogger("jitgate.broker.session")

from jitgate.guardrails.shell import classify_command as _classify_command
from jitgate.guardrails.sql import MAX_CLASSIFIED_BYTES
from jitgate.guardrails.sql import classify_sql as _classify_sql
from jitgate.guardrails.sql import classify_sql_in_session

# What the client sends (statements, commands, their parameters) is recorded whole, masked, up to
# this many characters: any statement the classifier reads fits (a character is at least one
# byte). Longer text is refused before it runs (too_to_record), so a recorded statement's end is
# never cut off. (Text the server sends keeps masking.masker.MAX_FREE_TEXT.)
MAX_RECORDED_TEXT = MAX_CLASSIFIED_BYTES
# Statement classes that leave the database's catalog as it is (any other may change a view a
# masked session's lineage follows: see broker/pg/lineage_step.py).
CATALOG_UNCHANGED = frozenset({"read", "dml_bounded", "dml_unbounded", "session", "transaction", "pinned_setting"})
# In the recording in place of a statement the masking worker could not mask (it is refused).
WITHHELD_STATEMENT = "[withheld by jitgate: this statement could not be masked for the recording; it was refused]"


@dataclass
class Verdict:
    action: str  # allow | deny | approve
    classes: tuple[str, ...]
    reasons: tuple[str, ...] = ()
    message: str = ""
    approval_id: str | None = None
    # From the classifier, for the measured row limit (broker/pg/measure.py).
    writes_rows: bool = False
    unmeasurable: str | None = None
    # From masking (broker/pg/masking_step.py): the rows it changes come from sources the gateway
    # cannot follow (a function that is not built in), so any changed row is sensitive_write.
    blind_write: str | None = None

    @property
    def allowed(self) -> bool:
        return self.action == "allow"


def classify_sql(sql: str) -> tuple[frozenset[str], tuple[str, ...]]:
    return _reasons(_classify_sql(sql))


def classify_command(command: str | list[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    return _reasons(_classify_command(command))


def _reasons(result) -> tuple[frozenset[str], tuple[str, ...]]:
    reasons = tuple(r for s in result.statements for r in s.reasons)
    if result.error:
        reasons = reasons + (result.error,)
    return result.classes, reasons


_classify_in_session = None  # broker.sql_worker.classify_in_session, imported on first use
_FREE_TEXT_INLINE = None  # broker.masking.FREE_TEXT_INLINE, imported with it
# Decisions remembered per session: (classes, reasons, what) -> the verdict's fields. The decision is a
# function of those and of the session's target and groups, which a session never changes.
DECISION_CACHE_ENTRIES = 256

# An approval step: (session, statement text, verdict) -> final verdict. Installed by the approvals work.
ApprovalStep = Callable[["Session", str, Verdict], Awaitable[Verdict]]


@dataclass
class Session:
    principal: Principal
    target_name: str
    target: Target
    policy: Policy
    client: str
    recorder: Recorder
    kind: str
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.time)
    statements: int = 0
    approval_step: ApprovalStep | None = None
    masker: object | None = None
    # Masks what goes into the recording, even for callers who see clear text.
    record_masker: object | None = None
    # Set by the protocol adapter: tell the client something while it waits (a NOTICE for PostgreSQL).
    notify: Callable[[str], Awaitable[None]] | None = None
    # PREPAREd statement names -> their classes, so a later EXECUTE is classified, not refused.
    prepared: dict = field(default_factory=dict)
    _admission: Verdict | None = None
    # Metric children of this session's labels: a labels() lookup per statement costs more than the count.
    _counters: dict = field(default_factory=dict)
    _timer: object = None
    # Long statements masked for the recording in a worker process, before record_statement needs them.
    _masked_for_record: dict = field(default_factory=dict)
    # Predicate sources -> the masked columns among them (broker/pg/masking_step._sensitive_columns).
    sensitive_columns: dict = field(default_factory=dict)
    _decisions: dict = field(default_factory=dict)
    # (text, as recorded, its SHA-256) of the last statement recorded.
    _recorded_text: tuple = (None, None, None)

    @classmethod
    def open(cls, *, principal, target_name, policy, client, kind, settings, backends, session_id=None, live=None):
        session_id = session_id or uuid.uuid4().hex
        if live is not None:
            live.add(session_id)  # before the spool exists, so the sweeper never takes it for an orphan
        recorder = Recorder(settings, backends, session_id)
        target = policy.targets[target_name]
        session = cls(principal, target_name, target, policy, client, recorder, kind, session_id=session_id)
        recorder.event(
            "session.start",
            session=session_id,
            principal=principal.to_dict(),
            target=target_name,
            kind=kind,
            client=client,
            broker=settings.broker_id or socket.gethostname(),
            policy=policy.digest,
        )
        log(logger, logging.INFO, "session started", session_id=session_id, user=principal.username, target=target_name, client=client)
        metrics.SESSIONS.labels(kind, target_name).inc()
        metrics.SESSIONS_ACTIVE.inc()
        return session

    def decide_sql(self, sql: str) -> Verdict:
        return self._decide(*_reasons(classify_sql_in_session(sql, self.prepared)), what="statement")

    async def decide_sql_async(self, sql: str) -> Verdict:
        """decide_sql for the event loop: long text is classified in a worker process with a time limit."""
        global _classify_in_session, _FREE_TEXT_INLINE
        if _classify_in_session is None:  # broker-only, keeps the import light
            from broker.masking import FREE_TEXT_INLINE as _FREE_TEXT_INLINE  # noqa: PLC0415
            from broker.sql_worker import classify_in_session as _classify_in_session  # noqa: PLC0415

        classification = await _classify_in_session(sql, self.prepared, owner=self.principal.username)
        recordable = True
        if len(sql) > _FREE_TEXT_INLINE:  # (shorter text is masked inline by record_statement)
            recordable = await self.mask_statement_for_record(sql)
        verdict = self._decide(*_reasons(classification), what="statement")
        verdict.writes_rows, verdict.unmeasurable = classification.writes_rows, classification.unmeasurable
        if not CATALOG_UNCHANGED.issuperset(classification.classes):
            # DDL and the like (decided now, run soon): masked sessions of every target on this
            # database re-read the catalog for their lineage before they use it again.
            from broker.pg.lineage_step import catalog_key, catalog_may_change  # noqa: PLC0415

            catalog_may_change(catalog_key(self.target))
        return self._unrecordable(sql, recordable, verdict, "statement")

    def _unrecordable(self, text, masked: bool, verdict: Verdict, what: str) -> Verdict:
        """Refuses, whatever the policy says, what the recording could not hold whole: text over
        MAX_RECORDED_TEXT, or text the masking worker failed on (its end is the operation an
        auditor must see; a statement that runs unrecorded is worse than one refused)."""
        if isinstance(text, str) and len(text) > MAX_RECORDED_TEXT:
            why = (f"it is {len(text)} characters, over the {MAX_RECORDED_TEXT} the session recording holds; "
                   f"split it, or load bulk data with COPY")
        elif not masked:
            why = "the gateway could not mask it for the session recording in time; retry, or send it shorter"
        else:
            return verdict
        return Verdict("deny", verdict.classes or ("unclassified",), verdict.reasons,
                       f"jitgate: {what} refused on target {self.target_name!r}: {why}")

    def decide_command(self, command: str | list[str]) -> Verdict:
        """Exec commands and shells (SSH, kubectl exec, agent exec) through the shell guardrails."""
        decision = explain_command(self.target, command, self.principal.groups)
        if decision.classification.error and "NUL byte" in decision.classification.error:
            # exec would cut the command at the NUL: refuse whatever the policy says.
            return Verdict("deny", ("unclassified",), ("NUL byte",), f"jitgate: command refused: {NUL_REFUSAL}")
        return self._verdict(decision.action, list(decision.why), decision.classification.classes, decision.reasons,
                             what="command")

    async def decide_command_async(self, command: str | list[str]) -> Verdict:
        """``decide_command`` on a worker thread: parsing is bounded (MAX_COMMAND_BYTES,
        MAX_WORK) but a long command must still not hold up every other session on the loop.
        A command line is recorded whole like a statement (masked in a worker when long)."""
        text = command if isinstance(command, str) else " ".join(command)
        masked = await self.mask_statement_for_record(text)
        verdict = await asyncio.to_thread(self.decide_command, command)
        return self._unrecordable(text, masked, verdict, "command")

    def _decide(self, classes: frozenset[str], reasons: tuple[str, ...], what: str) -> Verdict:
        decisions = self._decisions
        if decisions.get(None) is not self.target:  # (a session keeps its target; checked all the same)
            decisions.clear()
            decisions[None] = self.target
        key = (classes, reasons, what)
        known = decisions.get(key)
        if known is None:
            action, why = self.target.decide(classes, self.principal.groups)
            known = self._verdict(action, why, classes, reasons, what)
            if len(decisions) > DECISION_CACHE_ENTRIES:
                decisions.clear()
                decisions[None] = self.target
            decisions[key] = known
        # A Verdict of its own: callers add to it (writes_rows, approval ids).
        return Verdict(known.action, known.classes, known.reasons, known.message)

    def _verdict(self, action: str, why: list[str], classes, reasons: tuple[str, ...], what: str) -> Verdict:
        message = ""
        if action == "deny":
            message = (
                f"jitgate: {what} refused by policy on target {self.target_name!r} "
                f"(class: {', '.join(why)}{'; ' + '; '.join(reasons) if reasons else ''})"
            )
        elif action == "approve":
            message = f"jitgate: {what} needs approval on target {self.target_name!r} (class: {', '.join(why)})"
            if "not_read_only" in why:
                message += "; only read-only commands run without approval here (commands.mode: allowlist)"
        return Verdict(action, tuple(sorted(classes)), reasons, message)

    def use_masking(self, factory) -> None:
        """Masking for this session from the broker's masker factory: the recording is always
        masked (auditors are not all in the clear-text group); the data path only for callers
        outside the target's clear-text groups."""
        if factory is None:
            return
        masker = factory(self.target, self.principal)
        self.record_masker = masker
        self._recorded_text = (None, None, None)  # recorded before masking was on: not reused
        if not self.target.sees_clear_text(self.principal.groups):
            self.masker = masker

    async def admit(self) -> Verdict:
        """Time-boxed access (Target.session_approval): one approval for the whole session,
        asked before its first statement runs. Allow when the target does not ask for it."""
        if not self.target.session_approval:
            return Verdict("allow", ())
        if self._admission is None:
            what = f"{self.kind} session on {self.target_name} as {self.target.username}"
            verdict = Verdict("approve", ("session",), (),
                              f"jitgate: target {self.target_name!r} needs an approval for each session (time-boxed access)")
            final = await self.resolve(what, verdict)
            if final.action != "allow" and final.approval_id and "pending" in final.message:
                final = Verdict(final.action, final.classes, final.reasons,
                                f"jitgate: access to target {self.target_name!r} waits for approval request "
                                f"{final.approval_id}; once it is approved, connect again (see `jitgate approvals show "
                                f"{final.approval_id}`)", final.approval_id)
            self.recorder.event("session.approval", decision=final.action, approval_id=final.approval_id,
                                reason=final.message if final.action != "allow" else None)
            self._admission = final
        return self._admission

    async def resolve(self, statement: str, verdict: Verdict) -> Verdict:
        """Turn 'approve' into allow or deny by waiting for a human (when approvals are wired in)."""
        if verdict.action != "approve":
            return verdict
        if self.approval_step is None:
            return Verdict(
                "deny",
                verdict.classes,
                verdict.reasons,
                verdict.message + "; approvals are not configured on this gateway, so it is refused",
            )
        return await self.approval_step(self, statement, verdict)

    def record_statement(self, sql: str, *, protocol: str, verdict: Verdict, params=None, statement_id=None) -> int:
        self.statements += 1
        sid = statement_id if statement_id is not None else self.statements
        counter = self._counters.get(verdict.action)
        if counter is None:
            counter = self._counters[verdict.action] = metrics.STATEMENTS.decisions(self.kind, self.target_name, verdict.action)
        counter[0] += 1
        if verdict.action != "allow" or verdict.approval_id:
            for klass in verdict.classes:
                metrics.GUARDRAIL_HITS.labels(self.target_name, klass).inc()
        recorded = self._recorded_text
        if recorded[0] is not sql and recorded[0] != sql:
            # An extended-protocol statement is recorded at each Execute with the same text: masked
            # and hashed once. (The session's masker does not change; masking is deterministic.)
            recorded = self._recorded_text = (sql, self.client_text_for_record(sql),
                                              hashlib.sha256(sql.encode()).hexdigest())
        fields = {
            "id": sid,
            "sql": recorded[1],
            "protocol": protocol,
            "classes": list(verdict.classes),
            "decision": verdict.action,
            "sha256": recorded[2],
        }
        if params:
            fields["params"] = [self._param_for_record(p) for p in params]
        if verdict.approval_id:
            fields["approval_id"] = verdict.approval_id
        if verdict.action == "deny":
            fields["reason"] = verdict.message
        self.recorder.event_fields("statement", fields)
        return sid

    def _param_for_record(self, param):
        if isinstance(param, str):
            return self.client_text_for_record(param)
        masker = self.record_masker or self.masker
        if isinstance(param, dict) and "binary" in param and masker is not None and getattr(masker, "active", False):
            # A binary-format value cannot be scanned as text, and its hex would carry the clear value.
            return {"binary_bytes": len(param["binary"]) // 2, "withheld": "binary parameter on a masked target"}
        return param

    def mask_for_record(self, text: str, limit: int | None = None) -> str:
        """``text`` masked for the recording, cut at ``limit`` characters (default: the masker's
        MAX_FREE_TEXT, for what the server sends; MAX_RECORDED_TEXT for what the client sends)."""
        masker = self.record_masker or self.masker
        if masker is not None and getattr(masker, "active", False):
            done = self._masked_for_record.get((text, limit))
            if done is not None:
                return done
            return masker.mask_text(text) if limit is None else masker.mask_text(text, limit)
        return text

    def client_text_for_record(self, text: str) -> str:
        """What the client sent (a statement, a command, a parameter), masked whole for the recording."""
        return self.mask_for_record(text, MAX_RECORDED_TEXT)

    async def mask_statement_for_record(self, text: str) -> bool:
        """Masks long client text (a statement, a command) whole for the recording, in a worker,
        ahead of record_statement (issue 21: masking 100 KB of hostile text costs tens of ms on
        the loop, holding every session). False when the worker failed: the recording then holds
        WITHHELD_STATEMENT for it and the caller must refuse it (Session._unrecordable)."""
        masked = await self._mask_off_loop(text, MAX_RECORDED_TEXT)
        return masked is not WITHHELD_STATEMENT

    async def mask_for_record_off_loop(self, text: str) -> None:
        """Masks long server text (an error) for the recording in a worker, cut at MAX_FREE_TEXT;
        WITHHELD when the worker fails (it tells what happened; it does not run)."""
        await self._mask_off_loop(text, None)

    async def _mask_off_loop(self, text: str, limit: int | None):
        """Client text (a limit given) fails closed (WITHHELD_STATEMENT); server text gets
        broker.masking.WITHHELD."""
        masker = self.record_masker or self.masker
        off_loop = getattr(masker, "mask_text_off_loop", None)
        if off_loop is None or not getattr(masker, "active", False):
            return None
        key = (text, limit)
        known = self._masked_for_record.get(key)
        if known is not None:
            return known
        if len(text) <= _free_text_inline():
            return None  # masked inline by mask_for_record
        masked = await (off_loop(text) if limit is None else off_loop(text, limit, None))
        known = self._masked_for_record[key] = WITHHELD_STATEMENT if masked is None else masked
        while len(self._masked_for_record) > 8:  # the statements and errors in flight, not a history
            del self._masked_for_record[next(iter(self._masked_for_record))]
        return known

    def record_result(self, statement_id: int, *, started: float, rows: int | None, tag: str | None, error: str | None) -> None:
        if self._timer is None:
            self._timer = metrics.STATEMENTS.seconds(self.kind)
        seconds = time.perf_counter() - started
        metrics.StatementTally.observe(self._timer, seconds)
        self.recorder.event_fields("result", {
            "id": statement_id,
            "duration_ms": int(seconds * 1e6 + 0.5) / 1000,  # round(seconds * 1000, 3), cheaper
            "rows": rows,
            "tag": tag,
            "error": self.mask_for_record(error) if error else None,
        })

    async def close(self, reason: str) -> None:
        metrics.SESSIONS_ACTIVE.dec()
        await self.recorder.close(reason)
        log(logger, logging.INFO, "session ended", session_id=self.session_id, reason=reason, statements=self.statements)


def _free_text_inline() -> int:
    from broker.masking import FREE_TEXT_INLINE  # noqa: PLC0415 - broker-only, keeps the import light

    return FREE_TEXT_INLINE


def new_backend_key(pid: int | None = None) -> tuple[int, bytes]:
    """The (pid, secret) the client sees. The pid is the upstream's real one when known, so
    ``pg_terminate_backend(pid)`` and NOTIFY sender pids match; the secret is always the
    broker's own, so a cancel key never reaches the client."""
    return (pid if pid is not None else secrets.randbelow(2**31 - 1) + 1), secrets.token_bytes(4)
