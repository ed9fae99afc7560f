"""Approvals: the state machine every decider shares (Slack, the web console, the CLI, the broker).

    pending -> approved | denied | expired | cancelled | withdrawn
    approved -> consumed            (one-time grants: grant_window == 0)

withdrawn: every client that waited for the request has gone (disconnected or cancelled); a
later approval is refused and nothing runs.

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
WITHDRAWN = "withdrawn"

# The legal transitions, in one place.
TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({APPROVED, DENIED, EXPIRED, CANCELLED, WITHDRAWN}),
    APPROVED: frozenset({CONSUMED}),
    DENIED: frozenset(),
    EXPIRED: frozenset(),
    CANCELLED: frozenset(),
    CONSUMED: frozenset(),
    WITHDRAWN: frozenset(),
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
    # Where the groups came from (the directory now, a token, a sign-in N h ago), for refusals.
    groups_source: str = ""

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
    # An agent's approval releases one execution unless the policy sets grant_window for the target.
    grant_window = config.grant_window if kind != "agent" or "grant_window" in config.model_fields_set else 0
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
        # The approvals service checks the shown statement against sha256 when nothing was masked.
        "statement_masked": shown_statement is not None and shown_statement != statement
        or len(statement) > MAX_STATEMENT_CHARS,
        "classes": sorted(classes),
        "reasons": list(reasons),
        "approver_groups": list(config.approver_groups),
        "approver_users": [u.lower() for u in config.approver_users],
        "required": config.required,
        "grant_window": grant_window,
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
        # Sessions whose client holds this statement now; when the last one leaves, the request is withdrawn.
        "waiters": [session_id],
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
    source = ""
    if approver.groups_source.startswith("nowhere: "):
        source = "; " + approver.groups_source[len("nowhere: "):]
    elif approver.groups_source:
        source = f"; your groups, from {approver.groups_source}: {', '.join(sorted(approver.groups)) or 'none'}"
    return f"{approver.email} is not an approver for target {record['target']!r} (approvers: {'; '.join(who)}{source})"


def _duration(seconds) -> str:
    seconds = int(seconds or 0)
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def coverage(record: dict) -> str:
    """What an approval of this request releases, with its expiry: every message says it the same way
    (the NOTICE, the agent API's answer, Slack, the console, the CLI)."""
    if record.get("scope") == SCOPE_SESSION:
        what = f"unlocks session {record['session_id']} for {_duration(record.get('session_access'))} after approval"
    elif not record.get("grant_window"):
        what = "releases this exact statement once"
    else:
        what = (f"releases this exact statement, and repeated runs of it by {record['requester']}, "
                f"for {_duration(record['grant_window'])} after approval")
    if record.get("status") in (APPROVED, CONSUMED) and record.get("grant_until"):
        if record["status"] == CONSUMED:
            return f"{what}; used"
        return f"{what} (until {_utc(max(record['grant_until'], record['decided_at'] or 0))})"
    return f"{what}; the request expires at {_utc(record['expires_at'])}"


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
    if status == WITHDRAWN:
        return "withdrawn: " + (record.get("reason") or "the client that asked is gone")
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


def join_waiter(record: dict, session_id: str) -> dict | None:
    """Another session waits on the same pending request (same requester, same statement)."""
    if record["status"] != PENDING or session_id in record.get("waiters", []):
        return None
    return {**record, "waiters": [*record.get("waiters", []), session_id]}


def leave_waiter(record: dict, session_id: str, reason: str, now: float | None = None) -> dict | None:
    """One session stops waiting (its client cancelled or went away). The request is withdrawn
    when nobody waits any more; otherwise it stays pending for the others."""
    if record["status"] != PENDING:
        return None
    waiters = [w for w in record.get("waiters", [record.get("session_id")]) if w != session_id]
    new = {**record, "waiters": waiters}
    if not waiters:
        _transition(new, WITHDRAWN)
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


def apply_decision(backends, approval_id: str, approver: Approver, action: str, *, signer, reason: str = "",
                   now: float | None = None, config=None, public_keys: dict | None = None) -> dict:
    """Decide in one store transaction, sign, then publish approval-decided. Raises DecisionError.

    Only the approvals service calls this (it holds ``signer``, the approvals key). ``config`` is the
    target's ApprovalConfig from the current policy: who may approve and how many approvals are needed
    come from it, not from the stored request (which anyone who can write the store could edit).
    Approver entries already on the record count only when their signature verifies."""
    from jitgate.backends.base import TOPIC_APPROVAL_DECIDED
    from jitgate.keys import load_public_key

    keys = public_keys if public_keys is not None else {signer.key_id: load_public_key(signer.public_key_pem())}
    failure: list[DecisionError] = []

    def change(record: dict) -> dict | None:
        failure.clear()  # the store may run this again (a Firestore transaction retry): only the last attempt counts
        t = time.time() if now is None else now
        expired = expire_if_due(record, t)
        if expired is not None:
            failure.append(DecisionError("expired", f"approval {approval_id} expired before it was decided", expired))
            return expired  # persist the expiry, then report it
        if record["status"] in (APPROVED, CONSUMED) and trusted_view(record, keys) is None:
            # "approved" written by someone without the key: not a decision; the request is still open.
            record = dict(record, status=PENDING, decision=None, decided_by=None, decided_at=None, grant_until=None)
        checked = dict(record, approvals=verified_entries(record, keys))
        if config is not None:
            checked.update(approver_groups=list(config.approver_groups),
                           approver_users=[u.lower() for u in config.approver_users], required=config.required)
        if not record.get("statement_masked", True) and statement_sha256(record.get("statement", "")) != record["sha256"]:
            failure.append(DecisionError("tampered", f"approval {approval_id}: the stored statement does not match the "
                                         "statement the broker holds (its SHA-256 differs); nothing was applied", record))
            return None
        try:
            new = decide(checked, approver, action, reason=reason, now=t)
        except DecisionError as exc:
            failure.append(exc)
            return None
        if action == "approve":
            new["approvals"] = new["approvals"][:-1] + [sign_entry(new, new["approvals"][-1], signer)]
        if new["status"] != PENDING:
            new = sign_decision(new, signer)
        return new

    result = backends.approvals.update_approval(approval_id, change)
    if failure:
        raise failure[0]
    if result is None:
        raise DecisionError("not_found", f"no approval request {approval_id!r}")
    if result["status"] != PENDING:
        backends.bus.publish(TOPIC_APPROVAL_DECIDED, public_view(result))
    return result


def expire_due(backends, now: float | None = None, batch: int = 200, max_batches: int = 1000) -> list[dict]:
    """Expire every pending request past its TTL, oldest expiry first, in batches of ``batch``
    until none is overdue (functions/expire_approvals, the console's sweep). Newer pending
    requests never starve older overdue ones: the query asks for overdue ones only."""
    from jitgate.backends.base import TOPIC_APPROVAL_DECIDED

    now = time.time() if now is None else now
    expired: list[dict] = []
    for _ in range(max_batches):
        overdue = backends.approvals.overdue_approvals(now, batch)
        if not overdue:
            break
        progressed = False
        for record in overdue:
            new = backends.approvals.update_approval(record["approval_id"], lambda r: expire_if_due(r, now))
            if new is not None:
                progressed = True
                expired.append(new)
                backends.bus.publish(TOPIC_APPROVAL_DECIDED, public_view(new))
        if not progressed:  # rows whose record disagrees with its index columns: nothing more to do here
            break
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
# Sign-in groups are a fallback (no directory configured or reachable): trusted this long.
PRINCIPAL_MAX_AGE = 86400


def signin_max_age(env: dict | None = None) -> float:
    import os

    raw = (env if env is not None else os.environ).get("JITGATE_SIGNIN_GROUPS_MAX_AGE", "")
    return float(raw) if raw.strip() else PRINCIPAL_MAX_AGE


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
    return fallback_groups(store, email, now=now, env=env)[0]


def fallback_groups(store, email: str, *, now: float | None = None, env: dict | None = None) -> tuple[frozenset[str], str]:
    """Groups when no directory answers: the last sign-in if fresh enough, else the static file.
    Returns (groups, where they came from); ("", ...) says why nothing is known."""
    now = time.time() if now is None else now
    max_age = signin_max_age(env)
    record = store.get_approval(PRINCIPAL_PREFIX + email.lower())
    if record and now - record.get("seen_at", 0) <= max_age:
        hours = (now - record.get("seen_at", 0)) / 3600
        return frozenset(record.get("groups", [])), f"your last jitgate sign-in ({hours:.1f} h ago)"
    static = directory_groups(email, env)
    if static is not None:
        return static, "the static approver list (JITGATE_APPROVER_DIRECTORY)"
    why = (f"your last jitgate sign-in is older than {max_age / 3600:g} h" if record
           else "you never signed in to jitgate")
    return frozenset(), (f"nowhere: jitgate has no fresh record of your groups ({why}) and no directory is configured; "
                         "sign in once with `jitgate login`, or decide with your token in the review console or "
                         "`jitgate approvals approve`")


def is_request(record: dict) -> bool:
    return not record["approval_id"].startswith(PRINCIPAL_PREFIX)


def approver_from_token(token: str, identity, *, via: str, store=None, verifier=None) -> Approver:
    """The console and the CLI: an approver is whoever presents a valid OIDC token (real groups).
    Raises jitgate.identity.oidc.TokenError. Also refreshes the remembered groups for Slack."""
    from jitgate.identity.oidc import OIDCVerifier

    from jitgate.identity.oidc import TokenError, missing_identity_reason

    principal = (verifier or OIDCVerifier(identity)).verify(token.strip())
    if not principal.identity:
        raise TokenError("cannot decide approvals: " + missing_identity_reason(identity))
    if store is not None:
        try:
            remember_principal(store, principal.identity, principal.groups)
        except Exception:  # remembering is a convenience for Slack; the decision does not depend on it
            pass
    return Approver(email=principal.identity, groups=frozenset(principal.groups), via=via)


# -- signed decisions ------------------------------------------------------------------------------
#
# Only the approvals service (functions/approvals, jitgate.approvals_service) holds the approvals
# key. It signs every approver's entry and the final decision; the broker releases a statement
# only on a decision whose signature verifies with the approvals public key and whose claims name
# the request, the statement's SHA-256, the requester, the approvers and the time. Whatever else
# the stored record says (status, grant_until, approvals) is a hint: a process that can write the
# store but does not hold the key cannot approve.

DECISION_VERSION = 1


def _canonical(claims: dict) -> bytes:
    import json

    return json.dumps(claims, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def entry_claims(record: dict, entry: dict) -> dict:
    """What one approver's signed entry covers (counted towards `required` only when it verifies)."""
    return {"v": DECISION_VERSION, "kind": "approver", "approval_id": record["approval_id"], "sha256": record["sha256"],
            "email": entry["email"], "via": entry.get("via", ""), "at": entry["at"]}


def decision_claims(record: dict) -> dict:
    """What the final decision's signature covers: everything the broker needs to release a statement."""
    return {
        "v": DECISION_VERSION, "kind": "decision", "approval_id": record["approval_id"], "status": record["status"],
        "sha256": record["sha256"], "target": record["target"], "requester": record["requester"],
        "session_id": record["session_id"], "scope": record.get("scope", SCOPE_STATEMENT),
        "approvers": [a["email"] for a in record.get("approvals", [])] if record["status"] == APPROVED
        else [record.get("decided_by")],
        "decided_at": record["decided_at"], "grant_until": record.get("grant_until"),
        "grant_window": record.get("grant_window") or 0, "session_access": record.get("session_access"),
        "expires_at": record["expires_at"],
    }


def _sign(signer, claims: dict) -> dict:
    return {"claims": claims, "key_id": signer.key_id, "signature": _b64(signer.sign(_canonical(claims)))}


def sign_entry(record: dict, entry: dict, signer) -> dict:
    return {**entry, "sig": _sign(signer, entry_claims(record, entry))}


def sign_decision(record: dict, signer) -> dict:
    return {**record, "decision": _sign(signer, decision_claims(record))}


def _verified_claims(signed, public_keys: dict) -> dict | None:
    """The claims of a {claims, key_id, signature} object if the signature verifies, else None."""
    from cryptography.exceptions import InvalidSignature

    if not isinstance(signed, dict) or not isinstance(signed.get("claims"), dict):
        return None
    key = public_keys.get(signed.get("key_id"))
    if key is None:
        return None
    try:
        key.verify(_unb64(str(signed.get("signature", ""))), _canonical(signed["claims"]))
    except (InvalidSignature, ValueError, TypeError):
        return None
    return signed["claims"]


def verified_entries(record: dict, public_keys: dict) -> list[dict]:
    """The approver entries whose signature verifies and names this request and statement."""
    out = []
    for entry in record.get("approvals", []):
        claims = _verified_claims(entry.get("sig"), public_keys)
        if (claims and claims.get("kind") == "approver" and claims.get("approval_id") == record["approval_id"]
                and claims.get("sha256") == record["sha256"] and claims.get("email") == entry.get("email")
                and all(e["email"] != entry["email"] for e in out)):
            out.append(entry)
    return out


def trusted_view(record: dict, public_keys: dict) -> dict | None:
    """The record as its signed decision tells it, for the broker to act on.

    approved/consumed: only with a decision that verifies and names this record's request,
    statement, requester and target; its claims overwrite the stored fields (a store writer's
    edit of grant_until, scope or approvals changes nothing). Returns None when the record claims
    an approval without a valid decision: the broker treats it as not approved (still pending).
    Other states need no signature: they release nothing."""
    if record.get("status") not in (APPROVED, CONSUMED):
        return record
    claims = _verified_claims(record.get("decision"), public_keys)
    if (not claims or claims.get("kind") != "decision" or claims.get("status") != APPROVED
            or any(claims.get(k) != record.get(k) for k in ("approval_id", "sha256", "target", "requester", "session_id"))):
        return None
    trusted = dict(record)
    trusted.update(scope=claims["scope"], grant_until=claims["grant_until"], grant_window=claims["grant_window"],
                   session_access=claims["session_access"], expires_at=claims["expires_at"],
                   decided_at=claims["decided_at"], decided_by=claims["approvers"][-1] if claims["approvers"] else None,
                   approvals=[a for a in record.get("approvals", []) if a.get("email") in claims["approvers"]])
    return trusted


def jwks(signer) -> dict:
    """The approvals public key as a JWKS (GET /keys of the approvals service)."""
    from cryptography.hazmat.primitives import serialization

    from jitgate.keys import load_public_key

    raw = load_public_key(signer.public_key_pem()).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": _b64(raw), "kid": signer.key_id, "alg": "EdDSA", "use": "sig"}]}
