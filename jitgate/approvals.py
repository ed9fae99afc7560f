"""Approvals: the state machine every decider shares (Slack, the web console, the CLI, the broker).

    pending -> approved | denied | expired | cancelled
    approved -> consumed            (one-time grants: grant_window == 0)

A request is bound to the requester, the target, the session and the SHA-256 of
the exact statement; a grant is never valid for another statement. The
functions here are pure: they take a record (a dict, as the store keeps it) and
return the changed record or raise ``DecisionError``. The store applies them
inside one transaction (``ApprovalStore.update_approval``), which is how the first
decision wins when two approvers click at the same moment.

``apply_decision`` at the bottom is the one thin piece with I/O: store update,
then the ``approval-decided`` event. Slack, the console and the CLI all call it.
"""
from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

PENDING = "pending"
APPROVED = "approved"
DENIED = "denied"
EXPIRED = "expired"
CANCELLED = "cancelled"
CONSUMED = "consumed"

# The legal transitions, in one place.
TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({APPROVED, DENIED, EXPIRED, CANCELLED}),
    APPROVED: frozenset({CONSUMED}),
    DENIED: frozenset(),
    EXPIRED: frozenset(),
    CANCELLED: frozenset(),
    CONSUMED: frozenset(),
}
TERMINAL = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)

SCOPE_STATEMENT = "statement"
SCOPE_SESSION = "session"

# Requests keep the full statement; what a Slack message shows is shortened (jitgate.slack.blocks).
MAX_STATEMENT_CHARS = 100_000


class DecisionError(Exception):
    """A decision that cannot be applied. ``code`` is stable, the message is for people."""

    def __init__(self, code: str, message: str, record: dict | None = None):
        super().__init__(message)
        self.code = code
        self.record = record


@dataclass(frozen=True)
class Approver:
    """Someone deciding: an email (the identity key everywhere) and the groups we know for them."""

    email: str
    groups: frozenset[str] = field(default_factory=frozenset)
    via: str = "cli"  # slack | console | cli
    display: str = ""  # e.g. the Slack user id, for the message

    def to_dict(self) -> dict:
        return {"email": self.email, "groups": sorted(self.groups), "via": self.via, "display": self.display}


def statement_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def new_approval_id() -> str:
    return "apr_" + secrets.token_hex(8)


def _transition(record: dict, status: str) -> None:
    current = record["status"]
    if status not in TRANSITIONS[current]:
        raise DecisionError("illegal_transition", f"approval {record['approval_id']} is {current}; it cannot become {status}", record)
    record["status"] = status


def new_request(
    *,
    requester: str,
    requester_groups,
    target: str,
    session_id: str,
    statement: str,
    classes,
    reasons=(),
    config,
    kind: str = "postgres",
    now: float | None = None,
    policy_digest: str = "",
    shown_statement: str | None = None,
    requester_ids: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A pending request; ``config`` is the target's ApprovalConfig (snapshotted into the record)."""
    now = time.time() if now is None else now
    scope = SCOPE_SESSION if config.session_access else SCOPE_STATEMENT
    return {
        "approval_id": new_approval_id(),
        "status": PENDING,
        "scope": scope,
        "requester": requester.lower(),
        # Every identifier of the requester (username, subject...): none of them may approve.
        "requester_ids": sorted({requester.lower(), *(i.lower() for i in requester_ids if i)}),
        "requester_groups": sorted(requester_groups),
        "target": target,
        "kind": kind,
        "session_id": session_id,
        # What approvers see (Slack, console, CLI, the bus): masked when the target masks, since
        # approvers are not all in the clear-text group. The binding is the raw statement's hash.
        "statement": (shown_statement if shown_statement is not None else statement)[:MAX_STATEMENT_CHARS],
        "statement_truncated": len(shown_statement if shown_statement is not None else statement) > MAX_STATEMENT_CHARS,
        "sha256": statement_sha256(statement),
        "classes": sorted(classes),
        "reasons": list(reasons),
        "approver_groups": list(config.approver_groups),
        "approver_users": [u.lower() for u in config.approver_users],
        "required": config.required,
        "grant_window": config.grant_window,
        "session_access": config.session_access,
        "slack_channel": config.slack_channel,
        "policy": policy_digest,
        "created_at": now,
        "expires_at": now + config.ttl,
        "approvals": [],
        "decided_by": None,
        "decided_at": None,
        "reason": None,
        "grant_until": None,
        "uses": 0,
        "slack": None,
    }


# -- who may decide ------------------------------------------------------------------------


def eligibility(record: dict, approver: Approver) -> str | None:
    """None if this approver may decide the request, else why not."""
    email = approver.email.lower()
    if not email:
        return "the approver has no verified email"
    if email == record["requester"] or email in record.get("requester_ids", ()):
        return "you cannot decide your own request"
    if email in record.get("approver_users", []):
        return None
    if approver.groups.intersection(record.get("approver_groups", [])):
        return None
    who = []
    if record.get("approver_groups"):
        who.append("groups " + ", ".join(record["approver_groups"]))
    if record.get("approver_users"):
        who.append("users " + ", ".join(record["approver_users"]))
    if not who:
        return f"target {record['target']!r} names no approvers in its policy"
    return f"{approver.email} is not an approver for target {record['target']!r} (approvers: {'; '.join(who)})"


def describe_decision(record: dict) -> str:
    status = record["status"]
    if status in (APPROVED, CONSUMED):
        who = ", ".join(a["email"] for a in record["approvals"])
        return f"approved by {who}"
    if status == DENIED:
        return f"denied by {record['decided_by']}" + (f": {record['reason']}" if record.get("reason") else "")
    if status == EXPIRED:
        return "expired without a decision"
    if status == CANCELLED:
        return "cancelled" + (f" ({record['reason']})" if record.get("reason") else "")
    return "pending"


# -- transitions (pure: record in, record out) ------------------------------------------------


def expire_if_due(record: dict, now: float) -> dict | None:
    """pending past its TTL -> expired; returns None when nothing changes."""
    if record["status"] == PENDING and now >= record["expires_at"]:
        new = dict(record)
        _transition(new, EXPIRED)
        new["decided_at"] = now
        return new
    return None


def decide(record: dict, approver: Approver, action: str, *, reason: str = "", now: float | None = None) -> dict:
    """Apply one approver's approve/deny. Raises DecisionError (already decided, self-approval,
    not an approver, expired, same approver twice). Returns the new record."""
    now = time.time() if now is None else now
    if action not in ("approve", "deny"):
        raise ValueError(f"unknown action {action!r}")
    status = record["status"]
    if status == PENDING and now >= record["expires_at"]:
        raise DecisionError("expired", f"approval {record['approval_id']} expired before it was decided", record)
    if status != PENDING:
        raise DecisionError("already_decided", f"approval {record['approval_id']} was already {describe_decision(record)}", record)
    why_not = eligibility(record, approver)
    if why_not:
        email = approver.email.lower()
        code = "self_approval" if email == record["requester"] or email in record.get("requester_ids", ()) else "not_approver"
        raise DecisionError(code, why_not, record)
    new = dict(record)
    new["approvals"] = list(record.get("approvals", []))
    entry = {**approver.to_dict(), "at": now}
    if action == "deny":
        _transition(new, DENIED)
        new.update(decided_by=approver.email.lower(), decided_at=now, reason=(reason or "").strip() or "no reason given")
        new["denial"] = entry
        return new
    if any(a["email"] == approver.email.lower() for a in new["approvals"]):
        raise DecisionError("duplicate_approver", f"{approver.email} already approved; {record['required']} distinct approvers are needed", record)
    new["approvals"].append({**entry, "email": approver.email.lower()})
    if len(new["approvals"]) >= record["required"]:
        _transition(new, APPROVED)
        window = record["session_access"] if record.get("scope") == SCOPE_SESSION else record["grant_window"]
        new.update(decided_by=approver.email.lower(), decided_at=now, grant_until=now + (window or 0), reason=(reason or "").strip() or None)
    return new


def cancel(record: dict, reason: str, now: float | None = None) -> dict | None:
    if record["status"] != PENDING:
        return None
    new = dict(record)
    _transition(new, CANCELLED)
    new.update(decided_at=time.time() if now is None else now, reason=reason)
    return new


def use(record: dict, now: float | None = None) -> dict:
    """The broker runs the statement under this grant: count it; a one-time grant is consumed."""
    now = time.time() if now is None else now
    if record["status"] != APPROVED:
        raise DecisionError("not_approved", f"approval {record['approval_id']} is {record['status']}", record)
    new = dict(record)
    new["uses"] = record.get("uses", 0) + 1
    new["last_used_at"] = now
    if record.get("scope") == SCOPE_STATEMENT and not record.get("grant_window"):
        _transition(new, CONSUMED)
    return new


def grant_covers(record: dict, *, requester: str, target: str, sha256: str, session_id: str, now: float) -> bool:
    """Does this approved record let this statement run without a new prompt?"""
    if record["status"] != APPROVED or record["target"] != target or record["requester"] != requester.lower():
        return False
    until = record.get("grant_until")
    if until is not None and record.get("scope") == SCOPE_STATEMENT and not record.get("grant_window") and not record.get("uses"):
        # A one-time approval that arrived after the hold gave up: the same statement may
        # still run once, until the request itself would have expired.
        until = max(until, record["expires_at"])
    if until is None or now >= until:
        return False
    if record.get("scope") == SCOPE_SESSION:
        return record["session_id"] == session_id
    return record["sha256"] == sha256


def same_request(record: dict, *, requester: str, target: str, sha256: str, now: float) -> bool:
    """A pending request for the same statement by the same person: wait on it instead of asking twice."""
    return (record["status"] == PENDING and record["target"] == target and record["requester"] == requester.lower()
            and record["sha256"] == sha256 and now < record["expires_at"] and record.get("scope") == SCOPE_STATEMENT)


# -- the one I/O helper every decider uses ---------------------------------------------------------


def apply_decision(backends, approval_id: str, approver: Approver, action: str, *, reason: str = "",
                   now: float | None = None) -> dict:
    """Decide in one store transaction, then publish approval-decided. Raises DecisionError."""
    from jitgate.backends.base import TOPIC_APPROVAL_DECIDED

    failure: list[DecisionError] = []

    def change(record: dict) -> dict | None:
        failure.clear()  # the store may run this again (a Firestore transaction retry): only the last attempt counts
        t = time.time() if now is None else now
        expired = expire_if_due(record, t)
        if expired is not None:
            failure.append(DecisionError("expired", f"approval {approval_id} expired before it was decided", expired))
            return expired  # persist the expiry, then report it
        try:
            return decide(record, approver, action, reason=reason, now=t)
        except DecisionError as exc:
            failure.append(exc)
            return None

    result = backends.approvals.update_approval(approval_id, change)
    if failure:
        raise failure[0]
    if result is None:
        raise DecisionError("not_found", f"no approval request {approval_id!r}")
    if result["status"] != PENDING:
        backends.bus.publish(TOPIC_APPROVAL_DECIDED, public_view(result))
    return result


def expire_due(backends, now: float | None = None, limit: int = 500) -> list[dict]:
    """Expire every pending request past its TTL (functions/expire_approvals, the console's sweep)."""
    from jitgate.backends.base import TOPIC_APPROVAL_DECIDED

    now = time.time() if now is None else now
    expired = []
    for record in backends.approvals.list_approvals(status=PENDING, limit=limit):
        if record["expires_at"] > now:
            continue
        new = backends.approvals.update_approval(record["approval_id"], lambda r: expire_if_due(r, now))
        if new is not None:
            expired.append(new)
            backends.bus.publish(TOPIC_APPROVAL_DECIDED, public_view(new))
    return expired


def public_view(record: dict) -> dict:
    """What travels on the bus: the record (the statement is needed by notify_approvers)."""
    return dict(record)


# -- approver groups for Slack clicks ----------------------------------------------------------
#
# Slack knows an approver's verified email, not their IdP groups. Two sources, in order:
#  1. the groups the person last presented in a verified OIDC token (any sign-in to the broker,
#     the console or the CLI writes a ``principal:<email>`` record), if at most PRINCIPAL_MAX_AGE old;
#  2. a static directory, JITGATE_APPROVER_DIRECTORY: a JSON file (or inline JSON) {email: [groups]},
#     for approvers who never sign in to the gateway themselves.
# ApprovalConfig.approver_users (emails) needs neither.

PRINCIPAL_PREFIX = "principal:"
PRINCIPAL_STATUS = "principal"
PRINCIPAL_MAX_AGE = 7 * 86400


def remember_principal(store, email: str, groups, *, now: float | None = None) -> None:
    now = time.time() if now is None else now
    email = email.lower()
    record = {"approval_id": PRINCIPAL_PREFIX + email, "target": "", "status": PRINCIPAL_STATUS, "created_at": now,
              "expires_at": now + PRINCIPAL_MAX_AGE, "email": email, "groups": sorted(groups), "seen_at": now}
    if store.update_approval(record["approval_id"], lambda _old: record) is None:
        try:
            store.create_approval(record)
        except Exception:  # a concurrent first sign-in created it: update instead
            store.update_approval(record["approval_id"], lambda _old: record)


def directory_groups(email: str, env: dict | None = None) -> frozenset[str] | None:
    import json
    import os
    from pathlib import Path

    raw = (env if env is not None else os.environ).get("JITGATE_APPROVER_DIRECTORY", "").strip()
    if not raw:
        return None
    data = json.loads(raw) if raw.startswith("{") else json.loads(Path(raw).read_text())
    lowered = {k.lower(): v for k, v in data.items()}
    groups = lowered.get(email.lower())
    return None if groups is None else frozenset(groups)


def known_groups(store, email: str, *, now: float | None = None, env: dict | None = None) -> frozenset[str]:
    now = time.time() if now is None else now
    record = store.get_approval(PRINCIPAL_PREFIX + email.lower())
    if record and now - record.get("seen_at", 0) <= PRINCIPAL_MAX_AGE:
        return frozenset(record.get("groups", []))
    return directory_groups(email, env) or frozenset()


def is_request(record: dict) -> bool:
    return not record["approval_id"].startswith(PRINCIPAL_PREFIX)


def approver_from_token(token: str, identity, *, via: str, store=None, verifier=None) -> Approver:
    """The console and the CLI: an approver is whoever presents a valid OIDC token (real groups).
    Raises jitgate.identity.oidc.TokenError. Also refreshes the remembered groups for Slack."""
    from jitgate.identity.oidc import OIDCVerifier

    principal = (verifier or OIDCVerifier(identity)).verify(token.strip())
    if store is not None:
        try:
            remember_principal(store, principal.username, principal.groups)
        except Exception:  # remembering is a convenience for Slack; the decision does not depend on it
            pass
    return Approver(email=principal.username.lower(), groups=frozenset(principal.groups), via=via)
