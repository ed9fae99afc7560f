"""What the agent endpoint does, free of HTTP and MCP: authenticate, decide, hold, run, mask, record.

Both faces (broker/agent/http.py and broker/agent/mcp.py) call ``AgentService``
and render its answers; an error is a ``Problem`` (RFC 9457 fields plus ``next``,
a sentence telling the agent what to do now).

Sessions. Every call runs inside a recorded jitgate ``Session`` (kind "agent"):
an HTTP request gets its own, closed when the call ends; an MCP client session
keeps one per target it touches, closed when the MCP session ends or idles out.

Approvals. ``Session.resolve`` runs the broker's approval step, which holds until
a human decides (up to the target's ``approvals.wait``). Agents should not hold
a connection that long, so the step runs as a background task (a *hold*): the
caller waits at most ``wait`` seconds (bounded by MAX_WAIT) and otherwise gets
``approval_required`` with the approval id. The hold keeps running; when it
ends approved and nobody is waiting, the permission is parked in ``_ready`` for
the same caller, target and exact statement, and the next identical request
runs under it. A second identical request while the hold runs joins it instead
of asking twice.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field

from broker.agent import pgquery, sshexec
from broker.authz import Refused
from broker.pg.codec import ProtocolError
from broker.pg.masking_step import masking_verdict
from broker.pg.measure import blind_write_verdict, describe_changes
from broker.session import Session, Verdict
from jitgate import approvals as ap
from jitgate.logs import log
from jitgate.masking.errors import MalformedRow, MaskingRefused

logger = logging.getLogger("jitgate.broker.agent")

# Defaults an agent gets without asking, and the ceilings it may raise them to.
DEFAULT_MAX_ROWS, MAX_ROWS = 500, 10_000
DEFAULT_MAX_BYTES, MAX_BYTES = 1 << 20, 16 << 20  # row bytes kept (after the row limit)
DEFAULT_TIMEOUT, MAX_TIMEOUT = 30.0, 300.0  # seconds a statement or command may run
# How long one HTTP/MCP call may block waiting for an approver; past it the caller gets the approval id.
MAX_WAIT = 120.0
RETRY_AFTER = 10  # seconds suggested between approval polls
SESSION_IDLE = 900.0  # MCP-bound sessions close after this long without a call
READY_KEEP = 900.0  # an approval that landed while nobody waited stays usable this long
MAX_STATEMENT = 1 << 20
_APPROVAL_ID = re.compile(r"apr_[0-9a-f]+")


class Problem(Exception):
    """An error for the agent: RFC 9457 problem details plus ``next`` (what to do now)."""

    def __init__(self, status: int, code: str, title: str, detail: str, next_step: str, *,
                 headers: dict | None = None, **extra):
        super().__init__(detail)
        self.status, self.code, self.title, self.detail, self.next_step = status, code, title, detail, next_step
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict:
        return {"type": f"urn:jitgate:problem:{self.code}", "title": self.title, "status": self.status,
                "detail": self.detail, "code": self.code, "next": self.next_step, **self.extra}


@dataclass
class Handle:
    """A recorded session and who is using it."""

    session: Session
    ephemeral: bool  # one HTTP call: close when the call (and any hold it started) ends
    users: int = 0
    holds: int = 0
    last_used: float = field(default_factory=time.monotonic)
    closed: bool = False


@dataclass
class Hold:
    key: tuple
    handle: Handle
    task: asyncio.Task
    approval_id: str | None = None
    known: asyncio.Event = field(default_factory=asyncio.Event)
    taken: bool = False


def _clamp(value, default, low, high, name: str):
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise Problem(422, "invalid_argument", "Invalid argument", f"{name} must be a number from {low:g} to {high:g}",
                      f"Send {name} within that range, or leave it out for the default ({default:g}).")
    return value


def approval_statement(sql: str, params: list) -> str:
    """What an approver sees and approves: the SQL, and the parameters it runs with (they change its meaning)."""
    if not params:
        return sql
    return f"{sql}\n-- params: {json.dumps(params, default=str)}"


class AgentService:
    def __init__(self, ctx):
        self.ctx = ctx
        self.handles: dict[tuple, Handle] = {}
        self.holds: dict[tuple, Hold] = {}
        self._ready: dict[tuple, tuple[Verdict, float]] = {}
        self._sweeper: asyncio.Task | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(30)
            now = time.monotonic()
            for key, handle in list(self.handles.items()):
                if not handle.users and not handle.holds and now - handle.last_used > SESSION_IDLE:
                    await self._close(key, handle, "idle")
            for key, (_, at) in list(self._ready.items()):
                if now - at > READY_KEEP:
                    self._ready.pop(key, None)

    async def stop(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
        for hold in list(self.holds.values()):
            hold.task.cancel()
        await asyncio.gather(*(h.task for h in self.holds.values()), return_exceptions=True)
        for key, handle in list(self.handles.items()):
            await self._close(key, handle, "broker shutting down")

    async def close_idle(self) -> None:
        """The broker is draining: sessions with no request in flight end now, as a normal end
        (an idle MCP session would otherwise hold the drain to its deadline)."""
        for key, handle in list(self.handles.items()):
            if not handle.users and not handle.holds:
                await self._close(key, handle, "broker shutting down")

    async def end_conversation(self, conversation: str) -> None:
        """The MCP client ended its session: close the recorded sessions it opened."""
        for key, handle in list(self.handles.items()):
            if key[0] == conversation and not handle.holds:
                await self._close(key, handle, "MCP session ended")

    async def _close(self, key, handle: Handle, reason: str) -> None:
        if handle.closed:
            return
        handle.closed = True
        if self.handles.get(key) is handle:
            del self.handles[key]
        try:
            await handle.session.close(reason)
        finally:
            self.ctx.pg.live_sessions.discard(handle.session.session_id)

    # -- identity ----------------------------------------------------------------------------

    async def authenticate(self, token: str):
        """The caller's principal. functions/authorize validates tokens per target, so ask for the
        targets in policy order until one grants; an invalid token fails on the first."""
        if not token:
            raise self._unauthenticated("no bearer token was sent")
        policy = self.ctx.policy.policy
        for name in policy.targets:
            try:
                grant = await self.ctx.authz.authorize(token, name, "")
            except Refused as exc:
                if exc.code in ("forbidden", "unknown_target", "user_mismatch"):
                    continue
                raise self._refused(exc, name) from None
            return grant.principal
        raise Problem(403, "no_targets", "No reachable targets",
                      "your token is valid, but the policy lets you reach no target",
                      "Ask an administrator to add one of your groups to a target's allow list.")

    def _unauthenticated(self, why: str) -> Problem:
        return Problem(401, "unauthenticated", "Authentication required", f"jitgate: {why}",
                       "Send `Authorization: Bearer <OIDC ID token>` from the gateway's identity provider "
                       "(locally: `jitgate login --dev`); get a fresh token if it expired.",
                       headers={"WWW-Authenticate": 'Bearer realm="jitgate"'})

    def _refused(self, exc: Refused, target: str) -> Problem:
        if exc.code == "invalid_token":
            return self._unauthenticated(f"the token was refused: {exc.reason}")
        if exc.code == "unavailable":
            return Problem(503, "unavailable", "Authorization service unavailable", exc.reason,
                           "Retry in a few seconds.", headers={"Retry-After": "5"})
        if exc.code == "unknown_target":
            return Problem(404, "unknown_target", "Unknown target", exc.reason,
                           "Call list_targets (GET /v1/targets) and use one of the names it returns.", target=target)
        return Problem(403, exc.code if exc.code in ("forbidden", "user_mismatch") else "forbidden", "Access refused",
                       exc.reason, "Use a target listed by list_targets, or ask an administrator for access.", target=target)

    async def _grant(self, token: str, target_name: str, kind: str):
        if not token:
            raise self._unauthenticated("no bearer token was sent")
        try:
            grant = await self.ctx.authz.authorize(token, target_name, "")
        except Refused as exc:
            raise self._refused(exc, target_name) from None
        policy = self.ctx.policy.policy
        target = policy.target(target_name)
        if target is None:
            raise Problem(404, "unknown_target", "Unknown target", f"there is no target named {target_name!r}",
                          "Call list_targets and use one of the names it returns.", target=target_name)
        if not target.allow.admits(grant.principal.username, grant.principal.groups):
            raise Problem(403, "forbidden", "Access refused", f"{grant.principal.username} may no longer reach {target_name!r}",
                          "Ask an administrator for access.", target=target_name)
        if target.kind != kind:
            tool = {"postgres": "query", "ssh": "exec"}.get(target.kind, "a kubectl client through the broker")
            raise Problem(422, "wrong_target_kind", "Wrong kind of target",
                          f"target {target_name!r} is a {target.kind} target, not {kind}",
                          f"Use {tool} for this target.", target=target_name)
        return grant.principal, policy, target

    # -- sessions ----------------------------------------------------------------------------

    def _acquire(self, conversation: str | None, principal, policy, target_name: str, client: str) -> Handle:
        # Per-call authorization: a conversation (Mcp-Session-Id) reuses a session only for a call
        # authorized exactly like the one that opened it (same person, same groups, same policy). A
        # token with other groups gets its own session, so no group, clear-text right or approval
        # carries over from an earlier call.
        key = ((conversation, target_name, principal.username.lower(), principal.identity,
                tuple(sorted(principal.groups)), policy.digest) if conversation else None)
        handle = self.handles.get(key) if key else None
        if handle is None or handle.closed:
            session = Session.open(
                principal=principal, target_name=target_name, policy=policy, client=client, kind="agent",
                settings=self.ctx.settings, backends=self.ctx.backends, live=self.ctx.pg.live_sessions,
            )
            session.approval_step = self.ctx.pg.approval_step
            target = policy.targets[target_name]
            session.use_masking(self.ctx.pg.masker_factory)
            handle = Handle(session, ephemeral=key is None)
            self.handles[key or ("call", session.session_id)] = handle
        handle.users += 1
        handle.last_used = time.monotonic()
        return handle

    async def _release(self, handle: Handle) -> None:
        handle.users -= 1
        handle.last_used = time.monotonic()
        if handle.ephemeral and not handle.users and not handle.holds:
            await self._close(("call", handle.session.session_id), handle, "call finished")

    # -- the pipeline: decide, hold for approval, run --------------------------------------------

    async def _decide(self, handle: Handle, statement: str, verdict: Verdict, wait: float, again: bool = False) -> Verdict:
        """allow / deny, or 'approve' with approval_id set when the caller should come back later."""
        if verdict.action != "approve":
            return verdict
        session = handle.session
        key = (session.principal.username.lower(), session.target_name, hashlib.sha256(statement.encode()).hexdigest())
        parked = self._ready.pop(key, None)
        if parked is not None:
            session.recorder.event("agent.approval_reused", approval_id=parked[0].approval_id)
            return parked[0]
        hold = self.holds.get(key)
        if hold is None or hold.taken:
            hold = self._start_hold(key, handle, statement, verdict)
        # The step reports its approval id through session.notify right after it files the request.
        try:
            await asyncio.wait_for(asyncio.shield(self._first(hold)), 10)
        except asyncio.TimeoutError:
            pass
        if hold.approval_id is None and not hold.task.done():
            hold.approval_id = await self._find_request(session, key[2])
        if not hold.task.done() and wait > 0:
            try:
                await asyncio.wait_for(asyncio.shield(hold.task), wait)
            except asyncio.TimeoutError:
                pass
        if hold.task.done():
            if not hold.taken:
                hold.taken = True
                if self.holds.get(key) is hold:
                    del self.holds[key]
                try:
                    return hold.task.result()
                except (asyncio.CancelledError, Exception) as exc:  # noqa: BLE001 - the step failed: refuse, fail closed
                    return Verdict("deny", verdict.classes, verdict.reasons, f"jitgate: the approval step failed ({type(exc).__name__})")
            parked = self._ready.pop(key, None)  # it ended approved an instant before we looked
            if parked is not None:
                return parked[0]
            if not again:  # another call took the permission: ask the step again (it reuses a live grant)
                return await self._decide(handle, statement, verdict, wait, again=True)
        waiting = Verdict("approve", verdict.classes, verdict.reasons, verdict.message, approval_id=hold.approval_id)
        return waiting

    async def _find_request(self, session: Session, sha256: str) -> str | None:
        """The pending request the step filed for this statement (when its notice was not seen)."""
        def look():
            for record in self.ctx.backends.approvals.find_approvals(
                    target=session.target_name, requester=session.principal.identity, sha256=sha256):
                if record["status"] == ap.PENDING:
                    return record["approval_id"]
            return None
        try:
            return await asyncio.to_thread(look)
        except Exception:  # noqa: BLE001 - the id is a convenience; the hold still runs
            return None

    async def _first(self, hold: Hold) -> None:
        known = asyncio.ensure_future(hold.known.wait())
        try:
            await asyncio.wait({known, hold.task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            known.cancel()

    def _start_hold(self, key, handle: Handle, statement: str, verdict: Verdict) -> Hold:
        session = handle.session
        holder: dict = {}

        async def notify(text: str) -> None:
            found = _APPROVAL_ID.search(text)
            hold = holder.get("hold")
            if found and hold is not None and hold.approval_id is None:
                hold.approval_id = found.group(0)
                hold.known.set()

        session.notify = notify
        task = asyncio.get_running_loop().create_task(session.resolve(statement, verdict))
        hold = Hold(key, handle, task)
        holder["hold"] = hold
        handle.holds += 1
        self.holds[key] = hold

        def finished(t: asyncio.Task) -> None:
            handle.holds -= 1
            if self.holds.get(key) is hold:
                del self.holds[key]
            if not hold.taken and not t.cancelled() and t.exception() is None:
                result = t.result()
                if result.allowed:
                    hold.taken = True
                    self._ready[key] = (result, time.monotonic())
                    session.recorder.event("agent.approval_parked", approval_id=result.approval_id,
                                           note="approved while no call waited; the next identical request runs under it")
            if handle.ephemeral and not handle.users and not handle.holds:
                asyncio.get_running_loop().create_task(self._close(("call", session.session_id), handle, "approval hold ended"))

        task.add_done_callback(finished)
        return hold

    async def _pending_problem(self, verdict: Verdict, target_name: str, session: Session, waited: float) -> Problem:
        approval_id = verdict.approval_id
        approvers = session.target.approvals
        who = ", ".join(approvers.approver_groups + approvers.approver_users) or "an approver"
        record = await asyncio.to_thread(self.ctx.backends.approvals.get_approval, approval_id) if approval_id else None
        coverage = ap.coverage(record) if record else ""
        detail = (f"{verdict.message or 'this needs approval'}; approval request {approval_id} is pending"
                  + (f" after waiting {waited:g}s" if waited else "") + ". Nothing has run yet.")
        return Problem(
            202, "approval_required", "Approval required", detail,
            f"A human approver ({who}) must approve {approval_id}. Poll approval_status / GET /v1/approvals/{approval_id} "
            f"every {RETRY_AFTER}s or more (or re-send with wait_seconds up to {MAX_WAIT:g}); once it is approved, "
            "re-send exactly the same request to run it. Do not rephrase the statement: the approval covers only this exact text"
            + (f" and {coverage}." if coverage else "."),
            headers={"Retry-After": str(RETRY_AFTER), "Location": f"/v1/approvals/{approval_id}"},
            approval_id=approval_id, approval_status="pending", target=target_name, session_id=session.session_id,
            classes=list(verdict.classes), covers=coverage or None,
        )

    def _denied_problem(self, verdict: Verdict, target_name: str, session: Session) -> Problem:
        if verdict.approval_id:
            nxt = ("The approval was refused, expired or is unusable. Do not retry this exact statement unchanged; "
                   "explain to the user why it is needed, or find a way that does not need approval.")
            if "still pending" in verdict.message:
                nxt = (f"Nobody decided within the gateway's hold time; approval {verdict.approval_id} may still be "
                       "approved. Poll approval_status and re-send the same request once it is approved.")
        else:
            nxt = ("The policy forbids this class of operation on this target. Rewrite it (e.g. a bounded WHERE, "
                   "one statement per call, no DO/CALL), or ask a human to do it another way.")
        return Problem(403, "refused", "Refused by policy", verdict.message or "refused by policy", nxt,
                       target=target_name, session_id=session.session_id, classes=list(verdict.classes),
                       **({"approval_id": verdict.approval_id} if verdict.approval_id else {}))

    # -- operations --------------------------------------------------------------------------

    async def list_targets(self, token: str) -> dict:
        principal = await self.authenticate(token)
        policy = self.ctx.policy.policy
        out = []
        for name, target in policy.reachable(principal.username, principal.groups).items():
            classes = (pgquery_classes if target.kind == "postgres" else exec_classes)()
            decisions = {k: target.action_for(k, principal.groups) for k in classes}
            out.append({
                "name": name,
                "kind": target.kind,
                "description": target.description,
                "tool": {"postgres": "query", "ssh": "exec"}.get(target.kind),
                "needs_approval": sorted(k for k, v in decisions.items() if v == "approve"),
                "denied": sorted(k for k, v in decisions.items() if v == "deny"),
                "approvers": {"groups": list(target.approvals.approver_groups), "users": list(target.approvals.approver_users),
                              "required": target.approvals.required},
                "masked": bool(target.masking.rules) and not target.sees_clear_text(principal.groups),
                **({"database": target.database} if target.kind == "postgres" else {}),
            })
        return {"user": principal.username, "groups": sorted(principal.groups), "targets": out,
                "limits": {"max_rows": MAX_ROWS, "max_bytes": MAX_BYTES, "max_timeout_seconds": MAX_TIMEOUT,
                           "max_wait_seconds": MAX_WAIT}}

    async def query(self, token: str, target_name: str, sql, params=None, *, max_rows=None, max_bytes=None,
                    timeout=None, wait=None, conversation: str | None = None, client: str = "agent", via: str = "http") -> dict:
        if not isinstance(sql, str) or not sql.strip():
            raise Problem(422, "invalid_argument", "Invalid argument", "sql must be a non-empty string",
                          "Send one SQL statement in `sql`, with $1, $2... placeholders for values in `params`.")
        if len(sql) > MAX_STATEMENT:
            raise Problem(413, "statement_too_large", "Statement too large", f"sql is longer than {MAX_STATEMENT} characters",
                          "Send a shorter statement; load bulk data another way.")
        params = [] if params is None else params
        if not isinstance(params, list):
            raise Problem(422, "invalid_argument", "Invalid argument", "params must be an array",
                          "Send params as a JSON array, one value per $n placeholder.")
        max_rows = int(_clamp(max_rows, DEFAULT_MAX_ROWS, 1, MAX_ROWS, "max_rows"))
        max_bytes = int(_clamp(max_bytes, DEFAULT_MAX_BYTES, 1024, MAX_BYTES, "max_bytes"))
        timeout = float(_clamp(timeout, DEFAULT_TIMEOUT, 0.1, MAX_TIMEOUT, "timeout_seconds"))
        wait = float(_clamp(wait, 0, 0, MAX_WAIT, "wait_seconds"))
        principal, policy, target = await self._grant(token, target_name, "postgres")
        handle = self._acquire(conversation, principal, policy, target_name, client)
        session = handle.session
        try:
            statement = approval_statement(sql, params)
            await session.mask_statement_for_record(sql)  # a long one off the loop (refused if it fails)
            session.recorder.event("agent.request", via=via, operation="query", target=target_name,
                                   sql=session.client_text_for_record(sql), params=len(params), max_rows=max_rows,
                                   max_bytes=max_bytes, timeout_s=timeout, wait_s=wait)
            verdict = await session.decide_sql_async(sql)
            verdict = await self._decide(handle, statement, verdict, wait)
            if verdict.action == "approve":
                session.record_statement(sql, protocol="agent", verdict=verdict, params=params)
                raise await self._pending_problem(verdict, target_name, session, wait)
            statement_id = session.record_statement(sql, protocol="agent", verdict=verdict, params=params)
            if not verdict.allowed:
                raise self._denied_problem(verdict, target_name, session)
            # Two things can still stop it once it meets the target, each ending in a human's decision
            # (or a refusal) and a second try that runs as decided: masking's classes, once the lineage
            # is known (nothing was sent), and the measured row limit (rolled back, with the count).
            while True:
                try:
                    return await self._run_query(session, statement_id, target, sql, params, max_rows, max_bytes,
                                                 timeout, verdict)
                except pgquery.MaskingVerdict as exc:
                    held = exc.verdict
                except pgquery.RowLimitExceeded as exc:
                    if exc.blind_write and exc.rows > 0:
                        held = blind_write_verdict(session, exc.blind_write, exc.rows, describe_changes(exc.changes))
                    else:
                        held = Verdict("approve", verdict.classes, verdict.reasons + (f"measured: {exc}",),
                                       f"jitgate: statement rolled back and needs approval on target {target_name!r}: {exc}")
                    session.recorder.event("statement.measured", rows=exc.rows, outcome="held",
                                           limit=target.row_limit(principal.groups))
                verdict = await self._decide(handle, statement, held, wait)
                statement_id = session.record_statement(sql, protocol="agent", verdict=verdict, params=params)
                if verdict.action == "approve":
                    raise await self._pending_problem(verdict, target_name, session, wait) from None
                if not verdict.allowed:
                    raise self._denied_problem(verdict, target_name, session) from None
        finally:
            await self._release(handle)

    async def _credential(self, session: Session, target) -> bytes:
        try:
            return await asyncio.to_thread(self.ctx.backends.secrets.get, target.credential)
        except Exception as exc:  # noqa: BLE001 - any store failure is the operator's to fix
            log(logger, logging.ERROR, "held credential unavailable", target=session.target_name, error=str(exc))
            raise Problem(502, "credential_unavailable", "Gateway credential unavailable",
                          f"the gateway cannot load its credential for target {session.target_name!r}",
                          "This is not something you can fix: tell a human that the gateway's held credential needs attention.",
                          session_id=session.session_id) from None

    async def _run_query(self, session, statement_id, target, sql, params, max_rows, max_bytes, timeout, verdict) -> dict:
        password = (await self._credential(session, target)).decode()
        started = time.perf_counter()
        try:
            # Statements that write rows are counted (broker/pg/measure.py); an approved one runs as approved.
            row_limit = target.row_limit(session.principal.groups) if verdict.writes_rows and not verdict.approval_id else None
            vetted = [verdict]  # what masking made of it (a blind write is measured with no rows allowed)

            def vet(lineages: list) -> None:
                """Masking's classes, as the relay applies them (a hold or a refusal stops it here)."""
                decided = masking_verdict(session, verdict, lineages)
                if decided.action != verdict.action or (decided.blind_write and row_limit is None):
                    raise pgquery.MaskingVerdict(decided)  # (a blind write not measured yet: again, measured)
                vetted[0] = decided
                if decided.classes != verdict.classes:
                    session.recorder.event("statement.classes", id=statement_id, classes=list(decided.classes),
                                           reasons=list(decided.reasons[len(verdict.reasons):]))

            result, started = await pgquery.run_query(target, password, sql, params, max_rows=max_rows,
                                                      max_bytes=max_bytes, timeout_s=timeout, masker=session.masker,
                                                      row_limit=None if row_limit is None else (
                                                          lambda: 0 if vetted[0].blind_write else row_limit),
                                                      vet=vet,
                                                      max_scram_iterations=self.ctx.settings.pg_max_scram_iterations)
        except pgquery.RowLimitExceeded as exc:
            exc.blind_write = vetted[0] if vetted[0].blind_write else None
            raise
        except pgquery.UpstreamUnavailable as exc:
            session.record_result(statement_id, started=started, rows=None, tag=None, error=str(exc))
            raise Problem(502, "target_unavailable", "Target unavailable", f"target {session.target_name!r}: {exc}",
                          "Retry later; if it persists, tell a human the target or its held credential needs attention.",
                          session_id=session.session_id, headers={"Retry-After": "30"}) from None
        except pgquery.StatementTimeout as exc:
            session.record_result(statement_id, started=started, rows=None, tag=None, error=str(exc))
            raise self._timeout(session, str(exc)) from None
        except pgquery.StatementFailed as exc:
            await session.mask_for_record_off_loop(f"{exc.sqlstate}: {exc.message}")
            session.record_result(statement_id, started=started, rows=None, tag=None, error=f"{exc.sqlstate}: {exc.message}")
            if exc.sqlstate == "57014":
                raise self._timeout(session, exc.message) from None
            raise Problem(422, "statement_failed", "The statement failed", f"PostgreSQL error {exc.sqlstate}: {exc.message}",
                          "Fix the statement using the error, detail and hint, then send it again. Nothing was committed.",
                          sqlstate=exc.sqlstate, pg_detail=exc.detail or None, pg_hint=exc.hint or None,
                          session_id=session.session_id) from None
        except MaskingRefused as exc:
            session.record_result(statement_id, started=started, rows=None, tag=None, error=f"{exc.sqlstate}: {exc}")
            raise Problem(403, "masking_refused", "Result withheld", f"jitgate: {session.mask_for_record(str(exc))}",
                          "The gateway could not mask this result safely, so it withheld it; select the columns as text "
                          "or leave out the sensitive ones.", session_id=session.session_id) from None
        except (ProtocolError, MalformedRow) as exc:
            # The target broke the protocol (a bad frame, a row that does not match its description):
            # nothing of its answer is passed on, and it is not the caller's statement to fix.
            session.record_result(statement_id, started=started, rows=None, tag=None, error=f"08P01: {exc}")
            log(logger, logging.ERROR, "upstream protocol error", target=session.target_name, error=str(exc))
            raise Problem(502, "upstream_protocol_error", "The target broke the PostgreSQL protocol",
                          f"target {session.target_name!r} sent a malformed answer: {session.mask_for_record(str(exc))}",
                          "Nothing of the answer was passed on. This is not something you can fix: tell a human the "
                          "target (or something between the gateway and it) needs attention.",
                          session_id=session.session_id) from None
        session.record_result(statement_id, started=started, rows=result.row_count, tag=result.tag, error=None)
        session.recorder.event("agent.result", id=statement_id, columns=[c["name"] for c in result.columns],
                               masked_columns=result.masked_columns, returned_rows=len(result.rows),
                               row_count=result.row_count, truncated=result.truncated, row_bytes=result.row_bytes,
                               sample=result.rows[:5] if session.masker is not None else None)
        return {
            "session_id": session.session_id,
            "statement_id": statement_id,
            "columns": result.columns,
            "rows": result.rows,
            "row_count": result.row_count,
            "returned_rows": len(result.rows),
            "command_tag": result.tag,
            "truncated": result.truncated,
            "truncation": result.truncation,
            "masked_columns": result.masked_columns,
            "masking": result.masking,
            "notices": result.notices,
            "approval_id": verdict.approval_id,
        }

    def _timeout(self, session, detail: str) -> Problem:
        return Problem(504, "timeout", "Timed out", detail,
                       f"Make it cheaper (narrower WHERE, LIMIT, an index) or raise timeout_seconds (at most {MAX_TIMEOUT:g}).",
                       session_id=session.session_id)

    async def exec(self, token: str, target_name: str, command, *, timeout=None, max_bytes=None, wait=None,
                   conversation: str | None = None, client: str = "agent", via: str = "http") -> dict:
        if not isinstance(command, str) or not command.strip():
            raise Problem(422, "invalid_argument", "Invalid argument", "command must be a non-empty string",
                          "Send one shell command line in `command`.")
        if len(command) > MAX_STATEMENT:
            raise Problem(413, "statement_too_large", "Command too large", "command is too long", "Send a shorter command.")
        timeout = float(_clamp(timeout, DEFAULT_TIMEOUT, 0.1, MAX_TIMEOUT, "timeout_seconds"))
        max_bytes = int(_clamp(max_bytes, DEFAULT_MAX_BYTES, 1024, MAX_BYTES, "max_bytes"))
        wait = float(_clamp(wait, 0, 0, MAX_WAIT, "wait_seconds"))
        principal, policy, target = await self._grant(token, target_name, "ssh")
        handle = self._acquire(conversation, principal, policy, target_name, client)
        session = handle.session
        try:
            await session.mask_statement_for_record(command)  # a long one off the loop (refused if it fails)
            session.recorder.event("agent.request", via=via, operation="exec", target=target_name,
                                   command=session.client_text_for_record(command), timeout_s=timeout, wait_s=wait)
            verdict = await session.decide_command_async(command)
            verdict = await self._decide(handle, command, verdict, wait)
            statement_id = session.record_statement(command, protocol="exec", verdict=verdict)
            if verdict.action == "approve":
                raise await self._pending_problem(verdict, target_name, session, wait)
            if not verdict.allowed:
                raise self._denied_problem(verdict, target_name, session)
            key = await self._credential(session, target)
            started = time.perf_counter()
            try:
                result = await sshexec.run_command(target, key, command, timeout_s=timeout, max_bytes=max_bytes)
            except sshexec.SshUnavailable as exc:
                session.record_result(statement_id, started=started, rows=None, tag=None, error=str(exc))
                raise Problem(502, "target_unavailable", "Target unavailable", f"target {target_name!r}: {exc}",
                              "Retry later; if it persists, tell a human the target or its held key needs attention.",
                              session_id=session.session_id, headers={"Retry-After": "30"}) from None
            except sshexec.ExecTimeout as exc:
                session.record_result(statement_id, started=started, rows=None, tag=None, error=str(exc))
                raise self._timeout(session, str(exc)) from None
            stdout, stderr = session.mask_for_record(result.stdout), session.mask_for_record(result.stderr)
            session.record_result(statement_id, started=started, rows=None, tag=f"exit {result.exit_status}", error=None)
            session.recorder.event("agent.result", id=statement_id, exit_status=result.exit_status,
                                   stdout_bytes=len(result.stdout), stderr_bytes=len(result.stderr), truncated=result.truncated)
            return {"session_id": session.session_id, "statement_id": statement_id, "stdout": stdout, "stderr": stderr,
                    "exit_status": result.exit_status, "exit_signal": result.exit_signal, "truncated": result.truncated,
                    "truncation": result.truncation, "approval_id": verdict.approval_id}
        finally:
            await self._release(handle)

    async def approval(self, token: str, approval_id: str) -> dict:
        principal = await self.authenticate(token)
        record = None
        if isinstance(approval_id, str) and _APPROVAL_ID.fullmatch(approval_id):
            record = await asyncio.to_thread(self.ctx.backends.approvals.get_approval, approval_id)
        me = principal.identity or principal.username.lower()
        visible = record is not None and ap.is_request(record) and (
            record["requester"] == me or ap.eligibility(record, ap.Approver(me, principal.groups)) is None)
        if not visible:
            raise Problem(404, "unknown_approval", "Unknown approval", f"no approval request {approval_id!r} that you may see",
                          "Use the approval_id from an approval_required answer to one of your own requests.")
        status = record["status"]
        now = time.time()
        if status == ap.PENDING and now >= record["expires_at"]:
            status = ap.EXPIRED
        # Kept for the caller's re-send: parked, or still held by a hold that consumes the approval
        # for them (the store says consumed an instant before the hold parks its result).
        parked = (any(v.approval_id == approval_id for v, _ in self._ready.values())
                  or any(h.approval_id == approval_id and not h.taken for h in self.holds.values()))
        if parked and status == ap.CONSUMED:
            # The hold took the one execution for the caller and keeps it for their re-send: to them
            # it is approved and not yet used.
            status = ap.APPROVED
        window = record.get("session_access") if record.get("scope") == ap.SCOPE_SESSION else record.get("grant_window")
        nxt = {
            ap.PENDING: f"Still waiting for a human approver. Poll again in {RETRY_AFTER}s or more; do not re-send the "
                        "statement with changes. Once approved, re-send exactly the same request.",
            ap.APPROVED: "Approved: re-send exactly the same request (same target, sql/command and params) now"
                         + (f", within {int(window)}s," if window else "") + " and it will run"
                         + ("." if window else " (once)."),
            ap.CONSUMED: "Approved and already used once; running it again needs a new approval.",
            ap.DENIED: "Denied: do not retry the same statement; explain to the user or find another way.",
            ap.EXPIRED: "Expired without a decision: re-send the request to ask again, and tell the user an approver is needed.",
            ap.CANCELLED: "Cancelled: re-send the request if it is still needed.",
            ap.WITHDRAWN: "Withdrawn: the call that asked went away before a decision; re-send the request if it is still needed.",
        }[status]
        if parked and status in (ap.APPROVED, ap.CONSUMED):
            nxt = "Approved while you were away: re-send exactly the same request now and it will run (once)."
        return {
            "approval_id": approval_id,
            "status": status,
            "decision": ap.describe_decision({**record, "status": status}),
            "target": record["target"],
            "requester": record["requester"],
            "classes": record.get("classes", []),
            "statement": record["statement"] if record["requester"] == me else None,
            "created_at": record["created_at"],
            "expires_at": record["expires_at"],
            "decided_by": record.get("decided_by"),
            "reason": record.get("reason"),
            "ready_to_run": parked or status == ap.APPROVED,
            "covers": ap.coverage({**record, "status": status}),
            "next": nxt,
        }


def pgquery_classes() -> tuple[str, ...]:
    from jitgate.policy import SQL_CLASSES

    return SQL_CLASSES


def exec_classes() -> tuple[str, ...]:
    from jitgate.policy import EXEC_CLASSES

    return EXEC_CLASSES
