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


def _ids(value: str | None) -> set[str]:
    return {v.strip() for v in (value or "").split(",") if v.strip()}


def check_workspace(env: dict, *, team: str | None, enterprise: str | None, what: str) -> None:
    """Slack identities count only from the configured workspaces (JITGATE_SLACK_TEAM_IDS) and,
    on Enterprise Grid, organisations (JITGATE_SLACK_ENTERPRISE_IDS): an account in another
    workspace can carry an approver's email. Fails closed when nothing is configured."""
    teams, enterprises = _ids(env.get("JITGATE_SLACK_TEAM_IDS")), _ids(env.get("JITGATE_SLACK_ENTERPRISE_IDS"))
    if not teams:
        raise NotAnApprover("jitgate accepts Slack approvals from no workspace yet: its operator must set "
                            "JITGATE_SLACK_TEAM_IDS to the workspace's team id (Terraform variable slack_team_ids)")
    if team not in teams:
        raise NotAnApprover(f"{what} belongs to Slack workspace {team or 'unknown'}, not one jitgate accepts approvals "
                            f"from; decide in your organisation's workspace, the review console or `jitgate approvals`")
    if enterprises and enterprise not in enterprises:
        raise NotAnApprover(f"{what} belongs to Slack organisation {enterprise or 'none'}, not one jitgate accepts")
    if enterprise and not enterprises:
        raise NotAnApprover(f"{what} comes from Slack organisation {enterprise}; jitgate accepts an Enterprise Grid "
                            "organisation only when JITGATE_SLACK_ENTERPRISE_IDS names it")


def approver_from_slack(client, store, user_id: str, env: dict | None = None) -> ap.Approver:
    import os

    env = dict(os.environ if env is None else env)
    try:
        user = client.users_info(user=user_id)["user"]
    except SlackApiError as exc:
        raise NotAnApprover(f"Slack could not tell who you are ({exc.response.get('error', 'error')})") from None
    # The user's own home workspace (a Slack Connect guest from another organisation has theirs here).
    check_workspace(env, team=user.get("team_id"), enterprise=(user.get("enterprise_user") or {}).get("enterprise_id"),
                    what="your Slack account")
    if user.get("deleted") or user.get("is_bot"):
        raise NotAnApprover("bots and deactivated accounts cannot decide approvals")
    if user.get("is_restricted") or user.get("is_ultra_restricted"):
        raise NotAnApprover("guest accounts cannot decide approvals")
    email = (user.get("profile") or {}).get("email")
    if not email:
        raise NotAnApprover("your Slack profile shows no email (the app needs the users:read.email scope)")
    if user.get("is_email_confirmed") is False:
        raise NotAnApprover(f"your Slack email {email} is not confirmed")
    # The verified Slack profile email is the approver's canonical identity (the IdP's verified email).
    return ap.Approver(email=email.strip().lower(), groups=ap.known_groups(store, email, env=env), via="slack",
                       display=user_id)
