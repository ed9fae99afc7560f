"""The approval step of the session pipeline: hold a statement until a human decides.

``install`` plugs ``ApprovalStep`` into the PostgreSQL listener (broker/main.py calls it).
While the step awaits, the listener holds the statement and everything the client
pipelined behind it (broker/pg/server.py ``_gate``); a CancelRequest cancels the wait.

The decision is made in another process (functions/slack_interactions, the web
console, ``jitgate approvals``), so the step polls the store every POLL_SECONDS
while it holds a statement, and also wakes up early on ``approval-decided``
events when the bus delivers them to this process (the GCP backend's
subscription; the embedded bus only delivers events published in-process).
"""
from __future__ import annotations

import asyncio
import logging
import time

from broker.session import Session, Verdict
from jitgate import approvals as ap
from jitgate.backends.base import TOPIC_APPROVAL_DECIDED, TOPIC_APPROVAL_REQUESTED
from jitgate.logs import log

logger = logging.getLogger("jitgate.broker.approvals")

# Decisions reach a held statement within this (plus a store read). One indexed read per held
# statement per tick is cheap next to the human wait; 50 ms keeps click-to-run well under a second.
POLL_SECONDS = 0.05
# Sign-ins refresh an approver's remembered groups at most this often (one store write each).
PRINCIPAL_REFRESH_SECONDS = 3600


def _human(seconds: float | None) -> str:
    if not seconds:
        return "0s"
    seconds = int(seconds)
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _deciders(record: dict) -> str:
    parts = []
    if record["approver_groups"]:
        parts.append("group " + ", ".join(record["approver_groups"]))
    if record["approver_users"]:
        parts.append(", ".join(record["approver_users"]))
    who = " or ".join(parts) or "nobody (the policy names no approvers)"
    need = f"{record['required']} approvals from " if record["required"] > 1 else ""
    return need + who


class ApprovalStep:
    def __init__(self, backends, *, where: str = "in Slack, the approval console or `jitgate approvals`"):
        self.backends = backends
        self.store = backends.approvals
        self.where = where
        self._waiters: dict[str, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        try:
            backends.bus.subscribe(TOPIC_APPROVAL_DECIDED, self._on_decided)
        except Exception:  # pragma: no cover - a bus without subscriptions still works by polling
            pass

    def _on_decided(self, payload: dict) -> None:
        event = self._waiters.get(payload.get("approval_id", ""))
        if event is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(event.set)

    async def _io(self, fn, *args):
        return await asyncio.to_thread(fn, *args)

    async def __call__(self, session: Session, statement: str, verdict: Verdict) -> Verdict:
        self._loop = asyncio.get_running_loop()
        config = session.target.approvals
        requester = session.principal.username.lower()
        sha = ap.statement_sha256(statement)
        now = time.time()

        # 1. An earlier approval already covers it: same statement (or JIT session access) within the window.
        for record in await self._io(lambda: self.store.list_approvals(status=ap.APPROVED, target=session.target_name)):
            if ap.grant_covers(record, requester=requester, target=session.target_name, sha256=sha,
                               session_id=session.session_id, now=now):
                return await self._run_under(session, record, statement, verdict, reused=True)

        # 2. The same statement already waits for a decision (the client retried after a time-out): wait on it.
        record = None
        for candidate in await self._io(lambda: self.store.list_approvals(status=ap.PENDING, target=session.target_name)):
            if ap.same_request(candidate, requester=requester, target=session.target_name, sha256=sha, now=now):
                record = candidate
                break
        if record is None:
            record = ap.new_request(
                requester=requester, requester_groups=session.principal.groups, target=session.target_name,
                session_id=session.session_id, statement=statement, classes=verdict.classes, reasons=verdict.reasons,
                config=config, kind=session.kind, now=now, policy_digest=session.policy.digest,
                shown_statement=session.mask_for_record(statement),
                requester_ids=(session.principal.username, session.principal.subject),
            )
            await self._io(self.store.create_approval, record)
            session.recorder.event(
                "approval.requested", approval_id=record["approval_id"], scope=record["scope"], classes=record["classes"],
                sha256=sha, requester=requester, approvers=_deciders(record), required=record["required"],
                expires_at=record["expires_at"],
            )
            try:
                await self._io(self.backends.bus.publish, TOPIC_APPROVAL_REQUESTED, ap.public_view(record))
            except Exception as exc:  # the request stands; the console and CLI still see it
                log(logger, logging.WARNING, "approval-requested not published", approval_id=record["approval_id"], error=str(exc))
            log(logger, logging.INFO, "statement held for approval", approval_id=record["approval_id"],
                session_id=session.session_id, user=requester, target=session.target_name)
        else:
            session.recorder.event("approval.rejoined", approval_id=record["approval_id"], sha256=sha)

        approval_id = record["approval_id"]
        wait = max(0.0, min(config.wait, record["expires_at"] - time.time()))
        if session.notify is not None:
            scope = ("unlocks this session for " + _human(record["session_access"])
                     if record["scope"] == ap.SCOPE_SESSION else "covers this exact statement")
            try:
                await session.notify(
                    f"jitgate: approval request {approval_id} ({', '.join(record['classes'])} on target "
                    f"{session.target_name!r}) waits for {_deciders(record)} {self.where}; "
                    f"holding the statement for up to {_human(wait)} (cancel with Ctrl-C). The approval {scope}."
                )
            except (ConnectionError, OSError):
                pass

        # 3. Hold until decided, expired, or the wait runs out.
        wake = self._waiters.setdefault(approval_id, asyncio.Event())
        deadline = time.monotonic() + wait
        try:
            while True:
                current = await self._io(self.store.get_approval, approval_id)
                if current is None:
                    return self._refused(verdict, approval_id, f"jitgate: approval request {approval_id} disappeared from the store")
                if current["status"] == ap.PENDING and time.time() >= current["expires_at"]:
                    current = await self._io(self.store.update_approval, approval_id,
                                             lambda r: ap.expire_if_due(r, time.time())) or current
                if current["status"] != ap.PENDING:
                    return await self._decided(session, current, statement, verdict)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), min(POLL_SECONDS, remaining))
                except asyncio.TimeoutError:
                    pass
        except asyncio.CancelledError:
            # The client cancelled (CancelRequest) or went away: nobody waits for this request any more.
            changed = self.store.update_approval(approval_id, lambda r: ap.cancel(r, "the client cancelled the statement"))
            if changed is not None:
                session.recorder.event("approval.decided", approval_id=approval_id, status=ap.CANCELLED,
                                       decided_by=None, reason=changed["reason"])
                try:
                    self.backends.bus.publish(TOPIC_APPROVAL_DECIDED, ap.public_view(changed))
                except Exception:
                    pass
            raise
        finally:
            self._waiters.pop(approval_id, None)

        session.recorder.event("approval.timeout", approval_id=approval_id, waited_s=round(wait, 3))
        window = record["session_access"] if record["scope"] == ap.SCOPE_SESSION else record["grant_window"]
        return self._refused(
            verdict, approval_id,
            f"jitgate: approval request {approval_id} is still pending after {_human(wait)}; the statement did not run. "
            f"Once {_deciders(record)} approves it (`jitgate approvals list`), run the same statement again within "
            f"{_human(window)} and it passes without a new request (the request expires in "
            f"{_human(max(0, record['expires_at'] - time.time()))}).",
        )

    async def _decided(self, session: Session, record: dict, statement: str, verdict: Verdict) -> Verdict:
        approval_id = record["approval_id"]
        session.recorder.event(
            "approval.decided", approval_id=approval_id, status=record["status"], decided_by=record.get("decided_by"),
            approvers=[a["email"] for a in record.get("approvals", [])],
            via=sorted({a.get("via", "") for a in record.get("approvals", [])} | ({record["denial"]["via"]} if record.get("denial") else set())),
            reason=record.get("reason"), decided_at=record.get("decided_at"),
        )
        if record["status"] in (ap.APPROVED, ap.CONSUMED):
            return await self._run_under(session, record, statement, verdict, reused=False)
        if record["status"] == ap.DENIED:
            return self._refused(verdict, approval_id, f"jitgate: approval request {approval_id} was {ap.describe_decision(record)}")
        if record["status"] == ap.EXPIRED:
            return self._refused(verdict, approval_id,
                                 f"jitgate: approval request {approval_id} expired without a decision; run the statement again to ask anew")
        return self._refused(verdict, approval_id, f"jitgate: approval request {approval_id} was {ap.describe_decision(record)}")

    async def _run_under(self, session: Session, record: dict, statement: str, verdict: Verdict, *, reused: bool) -> Verdict:
        approval_id = record["approval_id"]
        sha = ap.statement_sha256(statement)
        requester = session.principal.username.lower()

        def take(current: dict) -> dict | None:
            # Re-checked inside the transaction, by the same rule as everywhere: the grant must
            # still cover exactly this statement (or this session) for this requester.
            if not ap.grant_covers(current, requester=requester, target=session.target_name, sha256=sha,
                                   session_id=session.session_id, now=time.time()):
                return None
            return ap.use(current)

        used = await self._io(self.store.update_approval, approval_id, take)
        if used is None:
            return self._refused(verdict, approval_id,
                                 f"jitgate: approval {approval_id} no longer covers this statement (used up, expired, or for another statement)")
        if reused:
            session.recorder.event("approval.reused", approval_id=approval_id, sha256=sha, uses=used["uses"])
        return Verdict("allow", verdict.classes, verdict.reasons, "", approval_id=approval_id)

    @staticmethod
    def _refused(verdict: Verdict, approval_id: str, message: str) -> Verdict:
        return Verdict("deny", verdict.classes, verdict.reasons, message, approval_id=approval_id)


def _remember_sign_ins(pg, backends) -> None:
    """Wrap the authorizer: each verified sign-in records the person's IdP groups, so a Slack
    click by the same email can be checked against approver_groups (jitgate.approvals.known_groups)."""
    original = pg.authz.authorize
    seen: dict[str, tuple[tuple, float]] = {}

    def write(email: str, groups: tuple) -> None:
        try:
            ap.remember_principal(backends.approvals, email, groups)
        except Exception as exc:
            log(logger, logging.WARNING, "could not remember the signed-in principal", error=str(exc))

    async def authorize(token, target, user):
        grant = await original(token, target, user)
        principal = grant.principal
        key = tuple(sorted(principal.groups))
        last = seen.get(principal.username.lower())
        if last is None or last[0] != key or time.monotonic() - last[1] > PRINCIPAL_REFRESH_SECONDS:
            seen[principal.username.lower()] = (key, time.monotonic())
            asyncio.get_running_loop().run_in_executor(None, write, principal.username, key)
        return grant

    pg.authz.authorize = authorize


def install(pg, settings, backends) -> ApprovalStep:
    step = ApprovalStep(backends)
    pg.approval_step = step
    _remember_sign_ins(pg, backends)
    return step
