"""POST /v1/targets/{target}/exec of the agent API against the real sshd behind an SSH target."""
from __future__ import annotations

import ssl

import httpx
import pytest


@pytest.fixture()
def agent(stack, ssh_targets, token):
    address = stack.broker_info.get("http")
    if not address:
        pytest.fail(f"the broker did not start its agent listener: {stack.broker_info}")
    client = httpx.Client(base_url=f"https://{address}", verify=ssl.create_default_context(cafile=str(stack.home / "tls" / "broker-dev.crt")),
                          headers={"Authorization": f"Bearer {token()}"}, timeout=60)
    yield client
    client.close()


def test_exec_returns_streams_apart_and_the_exit_status(agent):
    r = agent.post("/v1/targets/vm-test/exec", json={"command": "echo out; echo err >&2; exit 7"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stdout"] == "out\n" and body["stderr"] == "err\n" and body["exit_status"] == 7
    assert body["session_id"]


def test_exec_is_refused_by_the_guardrails(agent):
    r = agent.post("/v1/targets/vm-test/exec", json={"command": "sudo id"})
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.status_code == 403, r.text  # vm-test denies the privilege class: it never runs


def test_exec_refuses_a_changed_host_key(agent):
    r = agent.post("/v1/targets/vm-rekeyed/exec", json={"command": "id"})
    assert r.status_code >= 400 and r.headers["content-type"].startswith("application/problem+json"), r.text
    assert "host key" in r.text.lower()
