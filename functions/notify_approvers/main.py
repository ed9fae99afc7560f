"""Cloud Function (Pub/Sub CloudEvent on approval-requested): post the approval message to Slack.

Without SLACK_BOT_TOKEN it only acknowledges: the local web console and `jitgate approvals`
show pending requests from the store. Redelivery is harmless (a request that already has a
message is left alone).
"""
import logging

import functions_framework

from jitgate import logs
from jitgate.backends import open_backends
from jitgate.events import decode_pubsub_event
from jitgate.logs import log
from jitgate.settings import Settings
from jitgate.slack import configured, web_client
from jitgate.slack.messages import post_request

logs.setup()  # JSON lines on stderr: Cloud Logging's structured format

logger = logging.getLogger("jitgate.functions.notify_approvers")
_state = {}


def _deps():
    if not _state:
        _state["backends"] = open_backends(Settings.from_env())
        _state["client"] = web_client() if configured() else None
    return _state["backends"], _state["client"]


@functions_framework.cloud_event
def notify_approvers(cloud_event):
    record = decode_pubsub_event(cloud_event)
    backends, client = _deps()
    if client is None:
        log(logger, logging.INFO, "Slack not configured; request left to the console/CLI", approval_id=record.get("approval_id"))
        return
    posted = post_request(client, backends.approvals, record)
    log(logger, logging.INFO, "approval request posted", approval_id=record.get("approval_id"),
        channel=(posted.get("slack") or {}).get("channel"))
