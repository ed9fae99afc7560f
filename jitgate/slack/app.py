"""The Bolt app behind functions/slack_interactions: Approve and Deny buttons, the deny-reason modal.

Before any listener runs, middleware:
  1. Bolt's own RequestVerification: X-Slack-Signature (v0 HMAC-SHA256 of "v0:{ts}:{body}") and a
     timestamp at most 5 minutes old, else 401;
  2. ``reject_replays``: a (timestamp, signature) pair seen in the last 5 minutes is a replay -> 401
     (the timestamp check bounds how long a pair must be remembered);
  3. ``identify_approver``: the clicking Slack user -> an approver by verified email (users.info).
Listeners stay small: decide through jitgate.approvals (one store transaction: first decision wins),
update the original message, or answer the clicker ephemerally.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time

from slack_bolt import App, BoltResponse

from jitgate import approvals as ap
from jitgate.logs import log
from jitgate.slack import blocks as bk
from jitgate.slack import messages, web_client
from jitgate.slack.users import NotAnApprover, approver_from_slack

logger = logging.getLogger("jitgate.slack.app")

REPLAY_WINDOW = 5 * 60  # the same bound Slack's timestamp check uses


class ReplayGuard:
    """Remembers (timestamp, signature) pairs for REPLAY_WINDOW seconds. Per process: with several
    function instances a replay could land on another one; see the report (a store-backed set is the fix)."""

    def __init__(self, window: float = REPLAY_WINDOW, clock=time.time):
        self.window = window
        self.clock = clock
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def first_time(self, timestamp: str, signature: str) -> bool:
        now = self.clock()
        with self._lock:
            if len(self._seen) > 1000:
                self._seen = {k: t for k, t in self._seen.items() if now - t <= self.window}
            key = (timestamp, signature)
            seen_at = self._seen.get(key)
            if seen_at is not None and now - seen_at <= self.window:
                return False
            self._seen[key] = now
            return True


def _header(req, name: str) -> str:
    values = req.headers.get(name) or [""]
    return values[0] if isinstance(values, list) else values


def _when(record: dict) -> str:
    ts = record.get("decided_at")
    return f" ({bk.slack_date(ts)})" if ts else ""


def explain(exc: ap.DecisionError) -> str:
    record = exc.record or {}
    if exc.code == "already_decided":
        return f"This request was already decided: {ap.describe_decision(record)}{_when(record)}. Your click was not applied."
    if exc.code == "expired":
        return f"Request {record.get('approval_id', '')} expired{_when(record)} before it was decided; nothing was applied."
    if exc.code == "self_approval":
        return "You cannot approve or deny your own request; another approver must decide it."
    return str(exc)


def build_app(backends, env: dict | None = None) -> App:
    env = dict(os.environ if env is None else env)
    client = web_client(env)
    app = App(token=env["SLACK_BOT_TOKEN"], signing_secret=env["SLACK_SIGNING_SECRET"], client=client,
              process_before_response=True, token_verification_enabled=False)
    store = backends.approvals
    replays = ReplayGuard()

    @app.middleware
    def reject_replays(req, next):
        if not replays.first_time(_header(req, "x-slack-request-timestamp"), _header(req, "x-slack-signature")):
            log(logger, logging.WARNING, "replayed Slack request refused")
            return BoltResponse(status=401, body=json.dumps({"error": "replayed request"}))
        return next()

    @app.middleware
    def identify_approver(body, context, next):
        user_id = (body.get("user") or {}).get("id")
        if user_id and body.get("type") in ("block_actions", "view_submission"):
            try:
                context["approver"] = approver_from_slack(client, store, user_id, env)
            except NotAnApprover as exc:
                context["approver_error"] = str(exc)
        return next()

    def tell(channel: str | None, user: str, text: str) -> None:
        if channel:
            client.chat_postEphemeral(channel=channel, user=user, text=text)

    def refresh(record: dict, channel: str | None, ts: str | None) -> None:
        if not record.get("slack") and channel and ts:
            record = store.update_approval(record["approval_id"], lambda r: {**r, "slack": {"channel": channel, "ts": ts}}) or record
        messages.refresh_message(client, store, record)

    @app.action(bk.APPROVE_ACTION)
    def on_approve(ack, body, context):
        ack()
        user = body["user"]["id"]
        channel = (body.get("channel") or {}).get("id")
        ts = (body.get("message") or {}).get("ts") or (body.get("container") or {}).get("message_ts")
        approval_id = body["actions"][0]["value"]
        approver = context.get("approver")
        if approver is None:
            tell(channel, user, f"Not applied: {context.get('approver_error', 'you could not be identified')}.")
            return
        try:
            record = ap.apply_decision(backends, approval_id, approver, "approve")
        except ap.DecisionError as exc:
            tell(channel, user, explain(exc))
            if exc.code == "expired" and exc.record:
                refresh(exc.record, channel, ts)
            return
        log(logger, logging.INFO, "approval click applied", approval_id=approval_id, approver=approver.email, status=record["status"])
        refresh(record, channel, ts)

    @app.action(bk.DENY_ACTION)
    def on_deny(ack, body, context):
        ack()
        user = body["user"]["id"]
        channel = (body.get("channel") or {}).get("id")
        ts = (body.get("message") or {}).get("ts") or (body.get("container") or {}).get("message_ts")
        approval_id = body["actions"][0]["value"]
        approver = context.get("approver")
        if approver is None:
            tell(channel, user, f"Not applied: {context.get('approver_error', 'you could not be identified')}.")
            return
        record = store.get_approval(approval_id)
        if record is None:
            tell(channel, user, f"No approval request {approval_id}.")
            return
        # Early answers, so nobody types a reason for nothing; the transaction re-checks on submit.
        try:
            if record["status"] == ap.PENDING and time.time() >= record["expires_at"]:
                raise ap.DecisionError("expired", "expired", record)
            if record["status"] != ap.PENDING:
                raise ap.DecisionError("already_decided", "decided", record)
            why_not = ap.eligibility(record, approver)
            if why_not:
                raise ap.DecisionError("self_approval" if approver.email == record["requester"] else "not_approver", why_not, record)
        except ap.DecisionError as exc:
            tell(channel, user, explain(exc))
            return
        client.views_open(trigger_id=body["trigger_id"], view=bk.deny_modal(record, channel, ts))

    @app.view(bk.DENY_VIEW)
    def on_deny_reason(ack, body, view, context):
        meta = json.loads(view.get("private_metadata") or "{}")
        approval_id, channel, ts = meta.get("approval_id"), meta.get("channel"), meta.get("ts")
        reason = (((view.get("state") or {}).get("values") or {}).get(bk.REASON_BLOCK, {}).get(bk.REASON_INPUT, {}) or {}).get("value") or ""
        approver = context.get("approver")
        if approver is None:
            ack(response_action="errors", errors={bk.REASON_BLOCK: context.get("approver_error", "you could not be identified")[:150]})
            return
        try:
            record = ap.apply_decision(backends, approval_id, approver, "deny", reason=reason)
        except ap.DecisionError as exc:
            ack(response_action="errors", errors={bk.REASON_BLOCK: explain(exc)[:150]})
            if exc.record and exc.record.get("status") != ap.PENDING:
                tell(channel, body["user"]["id"], explain(exc))
            return
        ack()
        log(logger, logging.INFO, "denial applied", approval_id=approval_id, approver=approver.email)
        refresh(record, channel, ts)

    return app
