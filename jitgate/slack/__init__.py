"""Slack: the approvals UI when SLACK_BOT_TOKEN is configured.

- ``blocks``: Block Kit builders (pure: record in, blocks out);
- ``users``: a clicking Slack user -> an approver (verified email, then groups);
- ``messages``: post and update the approval message (used by the functions, console and CLI);
- ``app``: the Bolt app behind functions/approvals (POST /slack).
"""
from __future__ import annotations

import os

DEFAULT_API_URL = "https://slack.com/api/"
DEFAULT_CHANNEL = "#jitgate-approvals"


def configured(env: dict | None = None) -> bool:
    return bool((env if env is not None else os.environ).get("SLACK_BOT_TOKEN"))


def web_client(env: dict | None = None):
    """A WebClient for the bot; JITGATE_SLACK_API_URL points it elsewhere (the tests' stand-in)."""
    from slack_sdk import WebClient

    env = env if env is not None else os.environ
    base = env.get("JITGATE_SLACK_API_URL") or DEFAULT_API_URL
    return WebClient(token=env.get("SLACK_BOT_TOKEN"), base_url=base if base.endswith("/") else base + "/", timeout=10)


def default_channel(env: dict | None = None) -> str:
    return (env if env is not None else os.environ).get("JITGATE_SLACK_CHANNEL") or DEFAULT_CHANNEL
