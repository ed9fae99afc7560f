"""The one place the review console applies an approve/deny: the same path as Slack and the CLI."""
from __future__ import annotations

from jitgate import approvals as ap
from jitgate.slack.messages import refresh_if_configured


def apply(backends, approval_id: str, approver: ap.Approver, action: str, reason: str, *, token: str = "") -> dict:
    """Decide one request; raises jitgate.approvals.DecisionError. The Slack message follows.

    ``token``: the approver's ID token from their sign-in (empty behind IAP), for a decision
    service that authenticates the approver itself rather than trusting this console."""
    record = ap.apply_decision(backends, approval_id, approver, action, reason=reason)
    refresh_if_configured(backends.approvals, record)
    return record
