"""Cloud Function (HTTP): Slack interactivity (Approve / Deny buttons, the deny-reason modal).

A thin adapter: the Bolt app in jitgate.slack.app verifies Slack's signature and timestamp,
refuses replays, maps the clicking user to an approver and applies the decision.
"""
import functions_framework
from flask import Request
from slack_bolt.adapter.flask import SlackRequestHandler

from jitgate import logs
from jitgate.backends import open_backends
from jitgate.settings import Settings
from jitgate.slack.app import build_app

logs.setup()  # JSON lines on stderr: Cloud Logging's structured format (incl. each decision)

_handler: SlackRequestHandler | None = None


def _get() -> SlackRequestHandler:
    global _handler
    if _handler is None:
        _handler = SlackRequestHandler(build_app(open_backends(Settings.from_env())))
    return _handler


@functions_framework.http
def slack_interactions(request: Request):
    return _get().handle(request)
