"""Deciding approvals in tests the way people do: an OIDC token sent to the approvals service,
which checks and signs the decision (jitgate.approvals_client). Nothing here writes the store."""
from __future__ import annotations

from jitgate.approvals_client import submit_decision
from jitgate.devstack import dev_token


def decide_via_service(stack, approval_id: str, action: str = "approve", *, user: str = "dana@example.com",
                       groups=("dba",), reason: str = "") -> dict:
    token = dev_token(stack.issuer.issuer, user, list(groups))
    return submit_decision(approval_id, action, token, reason=reason or ("no" if action == "deny" else ""),
                           via="cli", url=stack.env["JITGATE_APPROVALS_URL"])
