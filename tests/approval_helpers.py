"""Deciding approvals in tests the way people do: an OIDC token sent to the approvals service,
which checks and signs the decision (jitgate.approvals_client). Nothing here writes the store."""
from __future__ import annotations

import threading
import time
from typing import Callable

import psycopg

from jitgate import approvals as ap
from jitgate.approvals_client import submit_decision
from jitgate.devstack import dev_token


def decide_via_service(stack, approval_id: str, action: str = "approve", *, user: str = "dana@example.com",
                       groups=("dba",), reason: str = "") -> dict:
    token = dev_token(stack.issuer.issuer, user, list(groups))
    return submit_decision(approval_id, action, token, reason=reason or ("no" if action == "deny" else ""),
                           via="cli", url=stack.env["JITGATE_APPROVALS_URL"])


def run_held(dsn: str, statement: str, out: dict) -> threading.Thread:
    """Run a statement that the broker holds for approval in a thread; ``out`` gets ``ok`` or ``error``."""
    def run():
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(statement)
                out["ok"] = True
        except Exception as exc:  # noqa: BLE001 - the test inspects whatever the client raised
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_pending(backends, target: str, match: Callable[[dict], bool], *, timeout: float = 30,
                 what: str = "the held operation") -> dict:
    """The first pending request on ``target`` that ``match`` accepts, polling the store until ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in backends.approvals.list_approvals(status=ap.PENDING, target=target):
            if match(record):
                return record
        time.sleep(0.2)
    raise AssertionError(f"no pending approval request on {target} for {what} within {timeout:g} s")
