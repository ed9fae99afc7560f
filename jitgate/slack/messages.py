"""Post and update the approval message. Shared by notify_approvers, the approvals service,
expire_approvals, the console and the CLI, so that any decision updates Slack the same way."""
from __future__ import annotations

import logging
import time

from jitgate import approvals as ap
from jitgate.logs import log
from jitgate.slack import blocks as bk
from jitgate.slack import configured, default_channel, web_client

logger = logging.getLogger("jitgate.slack")


def post_request(client, store, record: dict, env: dict | None = None) -> dict:
    """Post the request (idempotent under redelivery: a record that has a message is left alone)."""
    current = store.get_approval(record["approval_id"]) or record
    if current.get("slack"):
        return current
    channel = current.get("slack_channel") or default_channel(env)
    response = client.chat_postMessage(channel=channel, text=bk.fallback_text(current), blocks=bk.message_blocks(current),
                                       unfurl_links=False, unfurl_media=False)
    channel_id, ts = response["channel"], response["ts"]
    _, shortened = bk.statement_preview(current["statement"])
    if shortened:
        chunks = bk.statement_chunks(current["statement"])
        for i in range(0, len(chunks), 40):
            part = chunks[i:i + 40]
            client.chat_postMessage(channel=channel_id, thread_ts=ts, text=f"Full statement of {current['approval_id']}",
                                    blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": c}} for c in part])
    info = {"channel": channel_id, "ts": ts, "posted_at": time.time(), "shows": current["status"]}

    def attach(r: dict) -> dict:
        return {**r, "slack": info}

    updated = store.update_approval(current["approval_id"], attach)
    if updated and updated["status"] != current["status"]:
        refresh_message(client, store, updated)  # decided (console/CLI) while we were posting
    return updated or current


def refresh_message(client, store, record: dict) -> bool:
    """Make the Slack message show the record's state: outcome, who decided and when."""
    slack = record.get("slack")
    if not slack:
        return False
    client.chat_update(channel=slack["channel"], ts=slack["ts"], text=bk.fallback_text(record), blocks=bk.message_blocks(record))
    shows = record["status"]

    def mark(r: dict) -> dict | None:
        if not r.get("slack"):
            return None
        return {**r, "slack": {**r["slack"], "shows": shows, "updated_at": time.time()}}

    store.update_approval(record["approval_id"], mark)
    return True


def refresh_if_configured(store, record: dict, env: dict | None = None) -> None:
    """After a console / CLI decision: update the Slack message too, when Slack is configured."""
    if not configured(env) or not record.get("slack"):
        return
    try:
        refresh_message(web_client(env), store, record)
    except Exception as exc:  # the decision stands; expire_approvals reconciles the message later
        log(logger, logging.WARNING, "slack message not updated", approval_id=record["approval_id"], error=str(exc))


def reconcile(client, store, limit: int = 500) -> int:
    """Messages that still show an older state than their record (e.g. after an outage): fix them."""
    fixed = 0
    for status in (ap.APPROVED, ap.DENIED, ap.EXPIRED, ap.CANCELLED, ap.WITHDRAWN, ap.CONSUMED):
        for record in store.list_approvals(status=status, limit=limit):
            slack = record.get("slack")
            if slack and slack.get("shows") != record["status"] and not (
                    slack.get("shows") in (ap.APPROVED,) and record["status"] == ap.CONSUMED):
                refresh_message(client, store, record)
                fixed += 1
    return fixed
