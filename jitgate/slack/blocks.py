"""Block Kit for approval messages. Pure functions: an approval record in, blocks out.

Slack's limits (https://api.slack.com/reference/block-kit/blocks): section text <= 3000
characters, header <= 150, button text <= 75, modal title <= 24, 50 blocks a message.
Statements are escaped for mrkdwn (&, <, >) and shortened; the full text goes to the thread.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

from jitgate import approvals as ap

SECTION_LIMIT = 3000
# Room for the code fences and the "shortened" note inside one section.
STATEMENT_SHOWN = 2600
THREAD_CHUNK = 2900

APPROVE_ACTION = "approve"
DENY_ACTION = "deny"
DENY_VIEW = "deny_reason"
REASON_BLOCK = "reason"
REASON_INPUT = "reason_input"


def escape(text: str) -> str:
    """mrkdwn control characters; triple backticks would end the code block early."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("```", "`\u200b`\u200b`")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def slack_date(ts: float) -> str:
    """Shown in each reader's own time zone; the fallback is UTC."""
    return f"<!date^{int(ts)}^{{date_short_pretty}} at {{time}}|{_iso(ts)}>"


def statement_preview(statement: str) -> tuple[str, bool]:
    """(mrkdwn code block, shortened?)."""
    text = escape(statement)
    if len(text) <= STATEMENT_SHOWN:
        return f"```{text}```", False
    return f"```{text[:STATEMENT_SHOWN]}…```\n_Shortened ({len(statement):,} characters): the full statement is in the thread._", True


def statement_chunks(statement: str) -> list[str]:
    text = escape(statement)
    return [f"```{text[i:i + THREAD_CHUNK]}```" for i in range(0, len(text), THREAD_CHUNK)] or ["``` ```"]


def _approvers(record: dict) -> str:
    parts = []
    if record.get("approver_groups"):
        parts.append("group " + ", ".join(f"`{escape(g)}`" for g in record["approver_groups"]))
    if record.get("approver_users"):
        parts.append(", ".join(escape(u) for u in record["approver_users"]))
    need = record.get("required", 1)
    return (" or ".join(parts) or "_none configured_") + (f" ({need} approvals needed)" if need > 1 else "")


def _summary(record: dict) -> list[dict]:
    classes = ", ".join(f"`{escape(c)}`" for c in record["classes"]) or "-"
    groups = ", ".join(escape(g) for g in record.get("requester_groups", [])) or "none"
    scope = f"*Approval covers*\n{escape(ap.coverage(record))}"
    fields = [
        f"*Requester*\n{escape(record['requester'])}\ngroups: {groups}",
        f"*Target*\n`{escape(record['target'])}` ({escape(record.get('kind', ''))})",
        f"*Risk*\n{classes}",
        f"*Session*\n`{escape(record['session_id'])}`",
        f"*Expires*\n{slack_date(record['expires_at'])}",
        f"*Approvers*\n{_approvers(record)}",
        scope,
    ]
    preview, _ = statement_preview(record["statement"])
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": f"Approval needed on {record['target']}"[:150], "emoji": True}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f[:2000]} for f in fields]},
        {"type": "section", "text": {"type": "mrkdwn", "text": preview}},
    ]
    if record.get("reasons"):
        why = "; ".join(record["reasons"])
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": escape(why)[:2000]}]})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn",
                   "text": f"Request `{record['approval_id']}` · sha256 `{record['sha256'][:16]}…`"}]})
    return blocks


def request_blocks(record: dict) -> list[dict]:
    """The message while the request is pending: summary, statement, Approve / Deny."""
    blocks = _summary(record)
    if record.get("approvals"):
        got = ", ".join(f"{escape(a['email'])} ({slack_date(a['at'])})" for a in record["approvals"])
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn",
                       "text": f"{len(record['approvals'])} of {record['required']} approvals: {got}"}]})
    blocks.append({
        "type": "actions",
        "block_id": "decision",
        "elements": [
            {"type": "button", "action_id": APPROVE_ACTION, "style": "primary", "value": record["approval_id"],
             "text": {"type": "plain_text", "text": "Approve"}},
            {"type": "button", "action_id": DENY_ACTION, "style": "danger", "value": record["approval_id"],
             "text": {"type": "plain_text", "text": "Deny…"}},
        ],
    })
    return blocks


OUTCOME_ICON = {ap.APPROVED: ":white_check_mark:", ap.CONSUMED: ":white_check_mark:", ap.DENIED: ":no_entry:",
                ap.EXPIRED: ":hourglass:", ap.CANCELLED: ":heavy_multiplication_x:",
                ap.WITHDRAWN: ":heavy_multiplication_x:"}


def outcome_text(record: dict) -> str:
    status = record["status"]
    icon = OUTCOME_ICON.get(status, "")
    when = slack_date(record["decided_at"]) if record.get("decided_at") else ""
    if status in (ap.APPROVED, ap.CONSUMED):
        who = ", ".join(f"{escape(a['email'])} (via {a.get('via', '?')})" for a in record["approvals"])
        return f"{icon} *Approved* by {who} · {when}"
    if status == ap.DENIED:
        denial = record.get("denial") or {}
        return (f"{icon} *Denied* by {escape(record.get('decided_by') or '?')} (via {denial.get('via', '?')}) · {when}\n"
                f">{escape(record.get('reason') or '')}")[:SECTION_LIMIT]
    if status == ap.EXPIRED:
        return f"{icon} *Expired* without a decision · {when}"
    if status == ap.CANCELLED:
        return f"{icon} *Cancelled*: {escape(record.get('reason') or '')} · {when}"
    if status == ap.WITHDRAWN:
        return (f"{icon} *Withdrawn*: {escape(record.get('reason') or 'the client that asked is gone')}; "
                f"nothing will run, an approval is no longer possible · {when}")
    return "pending"


def message_blocks(record: dict) -> list[dict]:
    """Pending: with buttons. Decided: the buttons are gone; outcome, who decided and when."""
    if record["status"] == ap.PENDING:
        return request_blocks(record)
    return _summary(record) + [{"type": "section", "text": {"type": "mrkdwn", "text": outcome_text(record)}}]


def fallback_text(record: dict) -> str:
    state = "needs approval" if record["status"] == ap.PENDING else ap.describe_decision(record)
    return f"{record['requester']} on {record['target']}: {', '.join(record['classes'])} {state} ({record['approval_id']})"


def deny_modal(record: dict, channel: str | None, ts: str | None) -> dict:
    preview, _ = statement_preview(record["statement"][:500])
    return {
        "type": "modal",
        "callback_id": DENY_VIEW,
        "private_metadata": json.dumps({"approval_id": record["approval_id"], "channel": channel, "ts": ts}),
        "title": {"type": "plain_text", "text": "Deny request"},
        "submit": {"type": "plain_text", "text": "Deny"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn",
             "text": f"Deny `{record['approval_id']}` by {escape(record['requester'])} on `{escape(record['target'])}`:\n{preview}"[:SECTION_LIMIT]}},
            {"type": "input", "block_id": REASON_BLOCK, "label": {"type": "plain_text", "text": "Reason (the requester sees it)"},
             "element": {"type": "plain_text_input", "action_id": REASON_INPUT, "multiline": True, "max_length": 500,
                         "min_length": 3}},
        ],
    }
