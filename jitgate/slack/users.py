"""A clicking Slack user -> an approver: verified email (users.info), then the groups we know.

Only full members with a confirmed email count: bots, deactivated accounts and guests
(restricted / ultra-restricted) are refused. Groups come from jitgate.approvals.known_groups
(the person's last verified sign-in, or the JITGATE_APPROVER_DIRECTORY fallback).
"""
from __future__ import annotations

from slack_sdk.errors import SlackApiError

from jitgate import approvals as ap


class NotAnApprover(Exception):
    pass


def approver_from_slack(client, store, user_id: str, env: dict | None = None) -> ap.Approver:
    try:
        user = client.users_info(user=user_id)["user"]
    except SlackApiError as exc:
        raise NotAnApprover(f"Slack could not tell who you are ({exc.response.get('error', 'error')})") from None
    if user.get("deleted") or user.get("is_bot"):
        raise NotAnApprover("bots and deactivated accounts cannot decide approvals")
    if user.get("is_restricted") or user.get("is_ultra_restricted"):
        raise NotAnApprover("guest accounts cannot decide approvals")
    email = (user.get("profile") or {}).get("email")
    if not email:
        raise NotAnApprover("your Slack profile shows no email (the app needs the users:read.email scope)")
    if user.get("is_email_confirmed") is False:
        raise NotAnApprover(f"your Slack email {email} is not confirmed")
    return ap.Approver(email=email.lower(), groups=ap.known_groups(store, email, env=env), via="slack", display=user_id)
