"""The approval step of the session pipeline: hold a statement until a human decides.

``install`` plugs ``ApprovalStep`` into the PostgreSQL listener (broker/main.py calls it).
While the step awaits, the listener holds the statement and everything the client
pipelined behind it (broker/pg/server.py ``_gate``); a CancelRequest cancels the wait.

The decision is made and signed by the approvals service (functions/approvals; Slack
clicks, the web console and ``jitgate approvals`` all go through it). The step acts only
on a decision whose signature verifies with the approvals public key (``ApprovalKeys``):
a record that says "approved" without one keeps the statement held. It polls the store
every POLL_SECONDS while it holds a statement, and also wakes up early on
``approval-decided`` events when the bus delivers them to this process (the GCP backend's
subscription; the embedded bus only delivers events published in-process).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

from broker.session import Session, Verdict
from jitgate import approvals as ap
from jitgate.backends.base import TOPIC_APPROVAL_DECIDED, TOPIC_APPROVAL_REQUESTED
from jitgate.logs import log

logger = logging.getLogger("jitgate.broker.approvals")

# Held statements wake on a push: the approval-decided event (Pub/Sub subscription on the GCP set)
# or, on the embedded set, a change of the SQLite file seen by one watcher for all of them
# (PRAGMA data_version, every WATCH_SECONDS). Each held statement also re-reads its request every
# POLL_SECONDS as a slow fallback, so 50 idle held statements cost about 25 reads a second.
POLL_SECONDS = 2.0
WATCH_SECONDS = 0.1
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


class ApprovalKeys:
    """The approvals service's public keys (key id -> Ed25519PublicKey), which verify decisions.

    JITGATE_APPROVALS_PUBLIC_KEY (a PEM, or the path of one) pins the key; otherwise it is fetched
    from JITGATE_APPROVALS_URL/keys, again when a decision names an unknown key id (at most every
    REFETCH_SECONDS). No key: nothing is released (fail closed), and the hold says why."""

    REFETCH_SECONDS = 30.0

    def __init__(self, env: dict):
        self.env = env
        self.keys: dict = {}
        self._fetched_at = 0.0
        pinned = (env.get("JITGATE_APPROVALS_PUBLIC_KEY") or "").strip()
        if pinned:
            from pathlib import Path

            from jitgate.keys import key_id_of, load_public_key

            pem = pinned.encode() if pinned.startswith("-----") else Path(pinned).read_bytes()
            key = load_public_key(pem)
            self.keys = {key_id_of(key): key}
            self._pinned = True
        else:
            self._pinned = False

    def refresh(self) -> None:
        """Blocking (call it from a thread): fetch the JWKS when allowed."""
        url = (self.env.get("JITGATE_APPROVALS_URL") or "").rstrip("/")
        if self._pinned or not url or time.monotonic() - self._fetched_at < self.REFETCH_SECONDS and self.keys:
            return
        import httpx

        from jitgate.identity.grants import keys_from_jwks

        self._fetched_at = time.monotonic()
        try:
            response = httpx.get(url + "/keys", timeout=10)
            response.raise_for_status()
            self.keys = keys_from_jwks(response.json()) or self.keys
        except Exception as exc:  # noqa: BLE001 - keep the keys we have; decisions wait
            log(logger, logging.WARNING, "approvals public key not fetched", error=str(exc))

    def wants(self, record: dict) -> bool:
        """A decision signed by a key we do not know (yet)."""
        decision = record.get("decision") or {}
        return isinstance(decision, dict) and decision.get("key_id") not in self.keys


class UsedOnce:
    """The one-time approvals this broker has consumed, kept on its own disk.

    The store says "consumed" too, but a process that can write the store could put back the
    record as it was before (approved, with its genuine signed decision) and have the same
    statement run again. Two records stop that: a create-only use record in the store
    (``update_approval(once=True)``), which every broker reads, a new VM's included; and this
    file beside the spool, which a writer who deletes the store's use record too cannot reach.
    It keeps every one-time approval this broker used until that approval could no longer be used
    anyway (its request's expiry), across restarts of the broker process. A line that cannot be read is skipped and
    logged: the file is the broker's own, and whoever can write it already runs the broker."""

    def __init__(self, path: Path | None):
        self.path = path
        self._until: dict[str, float] = {}
        if path is None or not path.exists():
            return
        now = time.time()
        kept = []
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            try:
                entry = json.loads(line)
                approval_id, until = str(entry["approval_id"]), float(entry["until"])
            except (ValueError, KeyError, TypeError):
                log(logger, logging.WARNING, "unreadable line in the used one-time approvals file skipped",
                    path=str(path), line=number)
                continue
            if until > now:
                self._until[approval_id] = until
                kept.append(line)
        self._rewrite(kept)

    def __contains__(self, approval_id: str) -> bool:
        return approval_id in self._until

    def add(self, approval_id: str, until: float) -> None:
        self._until[approval_id] = until
        if self.path is None:
            return
        line = json.dumps({"approval_id": approval_id, "until": until}) + "\n"
        try:
            with open(self.path, "a") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:  # still remembered in memory for this process
            log(logger, logging.ERROR, "could not write the used one-time approvals file", path=str(self.path),
                error=str(exc))

    def _rewrite(self, lines: list[str]) -> None:
        """Drop the entries that expired (the file stays as small as the live one-time grants)."""
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text("".join(line + "\n" for line in lines))
            os.replace(tmp, self.path)
        except OSError as exc:
            log(logger, logging.WARNING, "could not compact the used one-time approvals file", path=str(self.path),
                error=str(exc))


class ApprovalStep:
    def __init__(self, backends, *, where: str = "in Slack, the review console or `jitgate approvals`",
                 keys: ApprovalKeys | None = None, used_once_path: Path | None = None):
        self.backends = backends
        self.keys = keys or ApprovalKeys({})
        # One-time approvals this broker consumed, kept against store rewrites and broker restarts.
        self._used_once = UsedOnce(used_once_path)
        self.store = backends.approvals
        self.where = where
        self._waiters: dict[str, set[asyncio.Event]] = {}  # approval id -> one event per waiting session
        self._watcher: asyncio.Task | None = None
        self.watch_checks = 0
        self.store_reads = 0  # re-reads of held requests (the bench counts them)
        self._loop: asyncio.AbstractEventLoop | None = None
        try:
            backends.bus.subscribe(TOPIC_APPROVAL_DECIDED, self._on_decided)
        except Exception:  # pragma: no cover - a bus without subscriptions still works by polling
            pass

    def _on_decided(self, payload: dict) -> None:
        for event in list(self._waiters.get(payload.get("approval_id", ""), ())):
            if self._loop is not None:
                self._loop.call_soon_threadsafe(event.set)

    def _ensure_watcher(self) -> None:
        if self._watcher is None or self._watcher.done():
            if hasattr(self.store, "data_version"):
                self._watcher = asyncio.get_running_loop().create_task(self._watch_store())

    async def _watch_store(self) -> None:
        """One loop for every held statement: wake them all when the store file changed."""
        try:
            last = await self._io(self.store.data_version)
            while self._waiters:
                await asyncio.sleep(WATCH_SECONDS)
                self.watch_checks += 1
                version = await self._io(self.store.data_version)
                if version != last:
                    last = version
                    for events in list(self._waiters.values()):
                        for event in list(events):
                            event.set()
        except Exception as exc:  # noqa: BLE001 - the slow poll still runs
            log(logger, logging.WARNING, "store watcher stopped", error=str(exc))

    def _leave(self, session: Session, approval_id: str, reason: str) -> None:
        """Synchronous on purpose: it runs while the hold is being cancelled, and must finish."""
        try:
            changed = self.store.update_approval(approval_id, lambda r: ap.leave_waiter(r, session.session_id, reason))
        except Exception as exc:  # noqa: BLE001 - the store is down: the request expires at its TTL
            log(logger, logging.WARNING, "could not withdraw the approval request", approval_id=approval_id, error=str(exc))
            return
        if changed is None:
            return
        if changed["status"] == ap.WITHDRAWN:
            session.recorder.event("approval.withdrawn", approval_id=approval_id, reason=reason,
                                   note="the statement did not run; a later approval runs nothing")
            log(logger, logging.INFO, "approval request withdrawn", approval_id=approval_id, session_id=session.session_id,
                reason=reason)
            try:
                self.backends.bus.publish(TOPIC_APPROVAL_DECIDED, ap.public_view(changed))
            except Exception:  # noqa: BLE001 - expire_approvals reconciles the Slack message
                pass
        else:
            session.recorder.event("approval.left", approval_id=approval_id, reason=reason,
                                   still_waiting=len(changed.get("waiters", [])),
                                   note="the statement did not run; the request stays open for the other sessions waiting on it")

    async def _io(self, fn, *args):
        return await asyncio.to_thread(fn, *args)

    async def _trusted(self, record: dict | None) -> dict | None:
        """The record as its signed decision tells it; None: it claims an approval nobody signed."""
        if record is None or record.get("status") not in (ap.APPROVED, ap.CONSUMED):
            return record
        if self.keys.wants(record):
            await self._io(self.keys.refresh)
        return ap.trusted_view(record, self.keys.keys)

    async def __call__(self, session: Session, statement: str, verdict: Verdict) -> Verdict:
        self._loop = asyncio.get_running_loop()
        config = session.target.approvals
        # One identity per person (the verified email, or the policy's identity_claim): requests are
        # filed, matched and checked against self-approval by it. Without it, no approval is possible.
        requester = session.principal.identity
        if not requester:
            from jitgate.identity.oidc import missing_identity_reason

            session.recorder.event("approval.refused", reason="no canonical identity in the token")
            return self._refused(verdict, None, "jitgate: this statement needs an approval, but "
                                 + missing_identity_reason(session.policy.identity))
        sha = ap.statement_sha256(statement)
        now = time.time()

        # Indexed lookup: this statement by this person on this target, or this session's requests.
        known = await self._io(lambda: self.store.find_approvals(target=session.target_name, requester=requester,
                                                                 sha256=sha, session_id=session.session_id))
        # 1. An earlier approval already covers it: same statement (or JIT session access) within the window.
        for stored in (r for r in known if r["status"] == ap.APPROVED):
            record = await self._trusted(stored)
            if record is not None and ap.grant_covers(record, requester=requester, target=session.target_name, sha256=sha,
                               session_id=session.session_id, now=now):
                return await self._run_under(session, record, statement, verdict, reused=True)

        # 2. The same statement already waits for a decision (the client retried after a time-out): wait on it.
        # Each session waits for itself: it joins the request's waiters, and a cancel withdraws only its own wait.
        record = None
        for candidate in (r for r in known if r["status"] == ap.PENDING):
            if ap.same_request(candidate, requester=requester, target=session.target_name, sha256=sha, now=now):
                joined = await self._io(self.store.update_approval, candidate["approval_id"],
                                        lambda r: ap.join_waiter(r, session.session_id))
                if joined is not None or session.session_id in candidate.get("waiters", []):
                    record = joined or candidate
                    break
        if record is None:
            record = ap.new_request(
                requester=requester, requester_groups=session.principal.groups, target=session.target_name,
                session_id=session.session_id, statement=statement, classes=verdict.classes, reasons=verdict.reasons,
                config=config, kind=session.kind, now=now, policy_digest=session.policy.digest,
                shown_statement=session.client_text_for_record(statement),
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
            scope = ap.coverage(record)
            try:
                await session.notify(
                    f"jitgate: approval request {approval_id} ({', '.join(record['classes'])} on target "
                    f"{session.target_name!r}) waits for {_deciders(record)} {self.where}; "
                    f"holding the statement for up to {_human(wait)} (cancel with Ctrl-C). The approval {scope}."
                )
            except (ConnectionError, OSError):
                pass

        # 3. Hold until decided, expired, or the wait runs out.
        wake = asyncio.Event()
        self._waiters.setdefault(approval_id, set()).add(wake)
        self._ensure_watcher()
        deadline = time.monotonic() + wait
        forged_seen = False
        try:
            while True:
                wake.clear()  # before the read: a change that lands during the read wakes the next wait
                stored = await self._io(self.store.get_approval, approval_id)
                self.store_reads += 1
                if stored is None:
                    return self._refused(verdict, approval_id, f"jitgate: approval request {approval_id} disappeared from the store")
                current = await self._trusted(stored)
                if current is None:
                    # "approved" without a decision signed by the approvals service: not an approval.
                    if not forged_seen:
                        forged_seen = True
                        session.recorder.event("approval.unverified", approval_id=approval_id, status=stored.get("status"),
                                               note="the store says approved, but no decision signed by the approvals "
                                                    "service verifies; the statement stays held")
                        log(logger, logging.WARNING, "approval without a valid signed decision ignored",
                            approval_id=approval_id, session_id=session.session_id)
                    current = {**stored, "status": ap.PENDING}
                if current["status"] == ap.PENDING and time.time() >= current["expires_at"]:
                    current = await self._io(self.store.update_approval, approval_id,
                                             lambda r: ap.expire_if_due(r, time.time())) or current
                if current["status"] != ap.PENDING:
                    return await self._decided(session, current, statement, verdict)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(wake.wait(), min(POLL_SECONDS, remaining))
                except asyncio.TimeoutError:
                    pass
        except asyncio.CancelledError as exc:
            # The client cancelled (CancelRequest) or went away: this session no longer waits. When
            # nobody else waits for the same request, it is withdrawn and a later approval runs nothing.
            reason = (exc.args[0] if exc.args and isinstance(exc.args[0], str) else "") or "the client cancelled the statement"
            self._leave(session, approval_id, reason)
            raise
        finally:
            waiting = self._waiters.get(approval_id)
            if waiting is not None:
                waiting.discard(wake)
                if not waiting:
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
        requester = session.principal.identity

        keys = self.keys.keys

        def take(stored: dict) -> dict | None:
            # Re-checked inside the transaction, by the same rule as everywhere: the grant must
            # still cover exactly this statement (or this session) for this requester, by its
            # signed decision (the stored record as read now, not as read before).
            replayed.clear()  # (a transaction that retries runs this again on fresh data)
            current = ap.trusted_view(stored, keys)
            if current is None or not ap.grant_covers(current, requester=requester, target=session.target_name, sha256=sha,
                                   session_id=session.session_id, now=time.time()):
                return None
            if approval_id in self._used_once:  # a store writer turned a consumed one-time approval back
                replayed.append("this broker's disk")
                return None
            new = ap.use(current)
            if new["status"] == ap.CONSUMED:  # if the store then finds its use record, it was put back
                replayed.append("the store's use record")
            return new

        replayed: list[str] = []  # what caught a consumed approval put back as approved (a store writer's work)

        try:
            # once=True: a one-time use is also written to the store create-only, so it outlives this
            # broker's disk (a new VM, another broker of the group) against a store writer's rewind.
            used = await self._io(lambda: self.store.update_approval(approval_id, take, once=True))
        except Exception as exc:  # noqa: BLE001 - the use cannot be recorded: nothing runs under it
            log(logger, logging.WARNING, "approval use not recorded: store unreachable", approval_id=approval_id,
                error=type(exc).__name__)
            session.recorder.event("approval.unrecorded", approval_id=approval_id, error=type(exc).__name__)
            return self._refused(verdict, approval_id,
                                 f"jitgate: approval {approval_id} could not be marked as used in the approvals store "
                                 f"({type(exc).__name__}); the statement did not run. Run it again once the store "
                                 "answers: the approval still covers it")
        if used is not None and used["status"] == ap.CONSUMED:
            # Usable at most until the request expires (grant_covers); remember it that long.
            self._used_once.add(approval_id, max(used.get("grant_until") or 0, used.get("expires_at") or 0))
        if used is None:
            if replayed:
                # Evidence of tampering with the store: say so where a reviewer looks.
                log(logger, logging.WARNING, "consumed one-time approval found approved again in the store; refused",
                    approval_id=approval_id, caught_by=replayed[-1], session_id=session.session_id)
                session.recorder.event("approval.replay_refused", approval_id=approval_id, caught_by=replayed[-1],
                                       note="a one-time approval already used was approved again in the store")
            return self._refused(verdict, approval_id,
                                 f"jitgate: approval {approval_id} no longer covers this statement (used up, expired, or for another statement)")
        if reused:
            session.recorder.event("approval.reused", approval_id=approval_id, sha256=sha, uses=used["uses"])
        return Verdict("allow", verdict.classes, verdict.reasons, "", approval_id=approval_id)

    @staticmethod
    def _refused(verdict: Verdict, approval_id: str | None, message: str) -> Verdict:
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
        last = seen.get(principal.identity)
        if principal.identity and (last is None or last[0] != key or time.monotonic() - last[1] > PRINCIPAL_REFRESH_SECONDS):
            seen[principal.identity] = (key, time.monotonic())
            asyncio.get_running_loop().run_in_executor(None, write, principal.identity, key)
        return grant

    pg.authz.authorize = authorize


def install(pg, settings, backends) -> ApprovalStep:
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    step = ApprovalStep(backends, keys=ApprovalKeys(settings.env),
                        used_once_path=settings.spool_dir.parent / f"{settings.spool_dir.name}-used-approvals.jsonl")
    pg.approval_step = step
    _remember_sign_ins(pg, backends)
    return step
