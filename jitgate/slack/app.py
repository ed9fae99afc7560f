"""The Bolt app behind functions/approvals (POST /slack): Approve and Deny buttons, the deny-reason modal.

Before any listener runs, middleware:
  1. Bolt's own RequestVerification: X-Slack-Signature (v0 HMAC-SHA256 of "v0:{ts}:{body}") and a
     timestamp at most 5 minutes old, else 401;
  2. ``reject_replays``: a (timestamp, signature) pair seen in the last 5 minutes is a replay -> 401
     (the timestamp check bounds how long a pair must be remembered);
  3. ``identify_approver``: the clicking Slack user -> an approver by verified email (users.info).
Listeners stay small: decide through the approvals service (jitgate.approvals_service: one store
transaction, first decision wins, signed), update the original message, or answer the clicker ephemerally.
``SlackGate`` runs in front of Bolt: size cap and signature before any parsing, then a well-formed
payload, so hostile input gets a 4xx and never reaches Bolt's parser.
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
from jitgate.slack.users import NotAnApprover, approver_from_slack, check_workspace

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


def build_app(backends, env: dict | None = None, *, decide, rights=None) -> App:
    """``decide(approver, approval_id, action, reason)`` is the approvals service's (it signs);
    ``rights(approver, record)`` gives the approver's groups as of now (for the early answer)."""
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
                check_workspace(env, team=(body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id"),
                                enterprise=(body.get("enterprise") or {}).get("id"), what="this click")
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
            record = decide(approver, approval_id, "approve", "")
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
            why_not = ap.eligibility(record, rights(approver, record) if rights else approver)
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
            record = decide(approver, approval_id, "deny", reason)
        except ap.DecisionError as exc:
            ack(response_action="errors", errors={bk.REASON_BLOCK: explain(exc)[:150]})
            if exc.record and exc.record.get("status") != ap.PENDING:
                tell(channel, body["user"]["id"], explain(exc))
            return
        ack()
        log(logger, logging.INFO, "denial applied", approval_id=approval_id, approver=approver.email)
        refresh(record, channel, ts)

    return app


MAX_SLACK_BODY = 64 * 1024


class SlackGate:
    """functions/approvals POST /slack: checks what Bolt would only check after parsing the body."""

    def __init__(self, service, env: dict | None = None):
        from slack_bolt.adapter.flask import SlackRequestHandler

        env = dict(os.environ if env is None else env)
        if not env.get("SLACK_SIGNING_SECRET") or not env.get("SLACK_BOT_TOKEN"):
            raise RuntimeError("Slack is not configured: set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET")
        self._secret = env["SLACK_SIGNING_SECRET"].encode()

        def decide(approver, approval_id, action, reason):
            from jitgate.approvals_service import Refusal

            try:
                return service.decide(approver, approval_id, action, reason)
            except Refusal as exc:
                raise ap.DecisionError(exc.code, str(exc)) from None

        def rights(approver, record):
            target = service.policy.policy.targets.get(record.get("target", ""))
            return approver if target is None else service.fresh_rights(approver, target.approvals)

        self.handler = SlackRequestHandler(build_app(service.backends, env, decide=decide, rights=rights))

    def _signed(self, raw: bytes, timestamp: str, signature: str) -> bool:
        """Slack's v0 signature over the raw bytes (any bytes: nothing is decoded before it verifies)."""
        import hashlib
        import hmac

        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > REPLAY_WINDOW:
            return False
        expected = "v0=" + hmac.new(self._secret, b"v0:" + timestamp.encode() + b":" + raw, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace"))

    def handle(self, request):
        from flask import jsonify
        from urllib.parse import parse_qs

        raw = request.get_data(cache=True)
        if len(raw) > MAX_SLACK_BODY:
            return jsonify({"error": f"the body is over {MAX_SLACK_BODY} bytes"}), 413
        if not self._signed(raw, request.headers.get("X-Slack-Request-Timestamp", ""),
                            request.headers.get("X-Slack-Signature", "")):
            return jsonify({"error": "invalid or missing Slack signature (X-Slack-Signature, X-Slack-Request-Timestamp)"}), 401
        try:
            text = raw.decode("utf-8")
            form = parse_qs(text, strict_parsing=True) if text else {}
            if list(form) != ["payload"] or len(form["payload"]) != 1:
                raise ValueError("expected one form field, payload")
            payload = json.loads(form["payload"][0])
            if (not isinstance(payload, dict) or not isinstance(payload.get("type"), str)
                    or not isinstance(payload.get("user") or {}, dict)):
                raise ValueError("payload must be a JSON object with a type")
            if payload["type"] == "block_actions":
                actions = payload.get("actions")
                if (not isinstance(actions, list) or not actions or not isinstance(actions[0], dict)
                        or not isinstance(actions[0].get("value"), str)):
                    raise ValueError("block_actions without an action value")
            for part in ("channel", "message", "container", "view", "team", "enterprise"):
                if payload.get(part) is not None and not isinstance(payload[part], dict):
                    raise ValueError(f"{part} must be an object")
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            return jsonify({"error": f"malformed Slack interaction: {exc}"}), 400
        return self.handler.handle(request)
