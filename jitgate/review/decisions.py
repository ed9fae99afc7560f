"""The one place the review console applies an approve/deny: it sends the decision, with the
approver's own ID token, to the approvals service (jitgate.approvals_client), which
authenticates the approver, checks their rights and signs the decision, as for Slack and the CLI."""
from __future__ import annotations

from jitgate import approvals as ap
from jitgate.approvals_client import DecisionRefused, submit_decision


def apply(backends, approval_id: str, approver: ap.Approver, action: str, reason: str, *, token: str = "") -> dict:
    """Decide one request; raises jitgate.approvals.DecisionError. Returns the request as stored.

    ``token``: the approver's ID token from their sign-in. Behind IAP there is none, and the
    approvals service does not take this console's word for who the approver is."""
    current = backends.approvals.get_approval(approval_id)
    if current is None:
        raise ap.DecisionError("not_found", f"no approval request {approval_id!r}")
    why_not = ap.eligibility(current, approver)
    if why_not and why_not.startswith("you cannot decide your own request"):
        # Answered here at once; the approvals service refuses it as well.
        raise ap.DecisionError("self_approval", why_not, current)
    if not token:
        raise ap.DecisionError("token_required", "this console has no ID token of yours (IAP sign-in); decide in Slack "
                               "or with `jitgate approvals approve|deny --token ...`")
    try:
        submit_decision(approval_id, action, token, reason=reason, via="console")
    except DecisionRefused as exc:
        raise ap.DecisionError(exc.code, str(exc)) from None
    record = backends.approvals.get_approval(approval_id)
    if record is None:
        raise ap.DecisionError("not_found", f"no approval request {approval_id!r}")
    return record
