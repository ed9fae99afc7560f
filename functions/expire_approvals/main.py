"""Cloud Function (HTTP, called by Cloud Scheduler): expire pending requests past their TTL
and bring Slack messages up to date with their requests (expired, or decided during an outage)."""
import logging

import functions_framework
from flask import jsonify

from jitgate import approvals as ap
from jitgate import logs
from jitgate.backends import open_backends
from jitgate.logs import log
from jitgate.settings import Settings
from jitgate.slack import configured, web_client
from jitgate.slack.messages import reconcile

logs.setup()  # JSON lines on stderr: Cloud Logging's structured format

logger = logging.getLogger("jitgate.functions.expire_approvals")
_state = {}


@functions_framework.http
def expire_approvals(request):
    if request.method not in ("POST", "GET"):
        return jsonify({"error": "use POST"}), 405
    if "backends" not in _state:
        _state["backends"] = open_backends(Settings.from_env())
    backends = _state["backends"]
    expired = ap.expire_due(backends)
    updated = 0
    if configured():
        updated = reconcile(web_client(), backends.approvals)
    log(logger, logging.INFO, "expiry sweep", expired=len(expired), messages_updated=updated)
    return jsonify({"expired": [r["approval_id"] for r in expired], "messages_updated": updated})
