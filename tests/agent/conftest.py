"""Fixtures for the agent endpoint (HTTP API + MCP) against the shared stack's broker."""
from __future__ import annotations

import ssl
import time
import uuid

import httpx
import pytest

SHORT_TARGET = """
  agent-short:
    kind: postgres
    description: demo database with a 2-second approval hold and a 4-second request TTL (agent tests)
    address: 127.0.0.1:{pg_port}
    database: demo
    username: jitgate_broker
    credential: env:JITGATE_DEMO_DB_PASSWORD
    allow:
      groups: [agent-testers]
    approvals:
      approver_groups: [dba]
      wait: 2s
      ttl: 4s
"""


@pytest.fixture(scope="session")
def agent_url(stack) -> str:
    address = stack.broker_info.get("http")
    if not address:
        pytest.fail(f"the broker did not start its agent listener: {stack.broker_info}")
    return f"https://{address}"


@pytest.fixture(scope="session")
def broker_ca(stack) -> str:
    return str(stack.home / "tls" / "broker-dev.crt")


@pytest.fixture(scope="session")
def tls(broker_ca) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=broker_ca)


@pytest.fixture(scope="session")
def api(agent_url, tls, token):
    """api(token=None) -> an httpx.Client on the agent URL with that bearer token (default: alice, sre)."""
    clients = []

    def make(bearer: str | None = "default") -> httpx.Client:
        headers = {}
        if bearer == "default":
            bearer = token()
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        client = httpx.Client(base_url=agent_url, headers=headers, verify=tls, timeout=60)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


@pytest.fixture(scope="session")
def backends(stack):
    from jitgate.backends import open_backends
    from jitgate.settings import Settings

    b = open_backends(Settings.from_env(stack.env))
    yield b
    b.close()


@pytest.fixture(scope="session")
def decide(stack, backends):
    """decide(approval_id, 'approve'|'deny') as dana@example.com (dba), through the approvals service like the CLI."""
    from tests.approval_helpers import decide_via_service

    def run(approval_id: str, action: str = "approve", reason: str = "") -> dict:
        decide_via_service(stack, approval_id, action, reason=reason)
        return backends.approvals.get_approval(approval_id)

    return run


@pytest.fixture(scope="session")
def short_target(stack):
    with open(stack.policy_path, "a") as fh:
        fh.write(SHORT_TARGET.format(pg_port=stack.pg.port))
    time.sleep(0.05)
    return "agent-short"


def unique_ddl() -> tuple[str, str]:
    column = f"note_{uuid.uuid4().hex[:8]}"
    return column, f"ALTER TABLE orders ADD COLUMN {column} text"


def assert_problem(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    for key in ("type", "title", "status", "detail", "code", "next"):
        assert key in body, body
    assert body["status"] == status and body["next"]
    if code:
        assert body["code"] == code, body
    return body
