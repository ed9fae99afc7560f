"""The client side of "submit a decision": the CLI, the web console (and anything else that
lets a person approve) send the approver's OIDC token and the decision to the approvals
service (functions/approvals), which checks and signs it. Nothing here writes the store.
"""
from __future__ import annotations

import os

import httpx

DEFAULT_URL = "http://127.0.0.1:8093"


class DecisionRefused(Exception):
    """The service did not apply the decision. ``status``: HTTP status (0: unreachable); ``code``: stable."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


def service_url(env: dict | None = None) -> str:
    env = os.environ if env is None else env
    return (env.get("JITGATE_APPROVALS_URL") or DEFAULT_URL).rstrip("/")


def submit_decision(approval_id: str, action: str, token: str, *, reason: str = "", via: str = "cli",
                    url: str | None = None, timeout: float = 30.0) -> dict:
    """POST the decision; returns the service's answer {status, summary, approvals, required}.
    Raises DecisionRefused with the service's reason (or why it could not be reached)."""
    base = (url or service_url()).rstrip("/")
    try:
        response = httpx.post(base + "/decisions", timeout=timeout,
                              headers={"Authorization": f"Bearer {token.strip()}"},
                              json={"approval_id": approval_id, "action": action, "reason": reason, "via": via})
    except httpx.HTTPError as exc:
        raise DecisionRefused(0, "unavailable", f"the approvals service at {base} is unreachable "
                              f"({type(exc).__name__}); nothing was applied, try again shortly") from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200 or not isinstance(body, dict) or not body.get("ok"):
        raise DecisionRefused(response.status_code, body.get("code", "refused") if isinstance(body, dict) else "refused",
                              (body.get("error") if isinstance(body, dict) else None)
                              or f"the approvals service answered HTTP {response.status_code}")
    return body
