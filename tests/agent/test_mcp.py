"""The MCP server, driven by the official SDK client (streamable HTTP) against the running broker."""
from __future__ import annotations

import asyncio
import json

import httpx
import httpx2
import pytest
from mcp.client import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.agent.conftest import assert_problem, unique_ddl
from tests.conftest import wait_sealed


async def _with_session(url, tls, bearer, body):
    client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {bearer}"}, verify=tls,
                                timeout=httpx2.Timeout(30, read=120))
    async with client:
        async with streamable_http_client(url + "/mcp", http_client=client) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await body(session)


def _text(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def test_mcp_tools_query_and_approval(stack, agent_url, tls, token, decide):
    column, ddl = unique_ddl()

    async def body(session: ClientSession):
        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert set(tools) >= {"list_targets", "query", "exec", "approval_status"}
        assert {"target", "sql", "params"} <= set(tools["query"].input_schema["properties"])
        assert tools["query"].input_schema["required"] == ["target", "sql"]
        assert "approval" in tools["query"].description.lower()

        listed = await session.call_tool("list_targets", {})
        assert not listed.is_error and "demo (postgres)" in _text(listed)
        assert "ddl" in next(t for t in listed.structured_content["targets"] if t["name"] == "demo")["needs_approval"]

        rows = await session.call_tool("query", {"target": "demo", "sql": "SELECT email FROM customers WHERE id = $1", "params": [1]})
        assert not rows.is_error, _text(rows)
        data = rows.structured_content
        assert data["rows"][0][0].startswith("*") and "Masked columns: email" in _text(rows)
        session_id = data["session_id"]

        pending = await session.call_tool("query", {"target": "demo", "sql": ddl})
        assert not pending.is_error
        assert _text(pending).startswith("APPROVAL REQUIRED")
        approval_id = pending.structured_content["approval_id"]
        status = await session.call_tool("approval_status", {"approval_id": approval_id})
        assert _text(status).startswith("PENDING")

        await asyncio.to_thread(decide, approval_id, "approve")
        status = await session.call_tool("approval_status", {"approval_id": approval_id})
        assert _text(status).startswith("APPROVED") and "re-send" in _text(status)

        ran = await session.call_tool("query", {"target": "demo", "sql": ddl, "wait_seconds": 5})
        assert not ran.is_error, _text(ran)
        assert ran.structured_content["approval_id"] == approval_id
        assert ran.structured_content["session_id"] == session_id  # one MCP session, one recorded session

        check = await session.call_tool("query", {"target": "demo", "sql": f"SELECT {column} FROM orders LIMIT 1"})
        assert not check.is_error, _text(check)

        refused = await session.call_tool("query", {"target": "demo-private", "sql": "SELECT 1"})
        assert refused.is_error and _text(refused).startswith("REFUSED") and "Next:" in _text(refused)
        return session_id

    session_id = asyncio.run(_with_session(agent_url, tls, token(), body))
    # Generous: the lineage corpus before this test leaves about 130 one-statement agent sessions for
    # finalize to seal, one after the other (about 0.5 s each on the gcp stack), ahead of this one.
    wait_sealed(stack, session_id, timeout=180.0)
    from jitgate.backends import open_backends
    from jitgate.settings import Settings

    backends = open_backends(Settings.from_env(stack.env))
    try:
        entry = backends.index.get_session(session_id)
    finally:
        backends.close()
    assert entry is not None
    text = json.dumps(entry)
    assert "demo" in text


def test_mcp_refuses_forged_token(agent_url, tls, token):
    forged = token()[:-6] + "AAAAAA"
    with httpx.Client(verify=tls) as client:
        r = client.post(agent_url + "/mcp", headers={"Authorization": f"Bearer {forged}", "Accept": "application/json, text/event-stream"},
                        json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}})
    assert_problem(r, 401, "unauthenticated")

    async def body(session):
        return None

    with pytest.raises(Exception):
        asyncio.run(asyncio.wait_for(_with_session(agent_url, tls, forged, body), 20))


def test_mcp_session_that_switches_to_fewer_groups_is_held_and_masked_as_that_token(agent_url, tls, token):
    """Per-call authorization: the groups of an earlier call on the same Mcp-Session-Id do not carry over."""
    column, ddl = unique_ddl()
    wide = token("alice@example.com", ["sre", "dba", "privacy-officers"])
    narrow = token("alice@example.com", ["sre"])
    lookup = {"target": "demo", "sql": "SELECT email FROM customers WHERE id = $1", "params": [1]}

    async def run():
        client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {wide}"}, verify=tls,
                                    timeout=httpx2.Timeout(30, read=120))
        async with client:
            async with streamable_http_client(agent_url + "/mcp", http_client=client) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    clear = await session.call_tool("query", lookup)
                    assert not clear.is_error and "@" in clear.structured_content["rows"][0][0]
                    assert not clear.structured_content["rows"][0][0].startswith("*")  # privacy-officers: clear text
                    warm = await session.call_tool("query", {"target": "demo", "sql": "SELECT 1"})
                    assert not warm.is_error
                    client.headers["Authorization"] = f"Bearer {narrow}"  # same MCP session, fewer groups
                    masked = await session.call_tool("query", lookup)
                    assert not masked.is_error and masked.structured_content["rows"][0][0].startswith("*")
                    held = await session.call_tool("query", {"target": "demo", "sql": ddl})
                    assert _text(held).startswith("APPROVAL REQUIRED"), _text(held)  # dba's DDL right did not carry over

    asyncio.run(run())


def _raw_mcp_call(agent_url, tls, bearer: str, raw_call: bytes) -> dict:
    """One tools/call whose JSON body is sent as given (the SDK's client cannot send a lone surrogate)."""
    headers = {"Authorization": f"Bearer {bearer}", "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json"}

    def answer(response) -> dict:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
            return json.loads(data[-1])
        return response.json()

    with httpx.Client(verify=tls, timeout=60) as client:
        init = client.post(agent_url + "/mcp", headers=headers, json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
        assert init.status_code == 200, init.text
        headers["mcp-session-id"] = init.headers["mcp-session-id"]
        client.post(agent_url + "/mcp", headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        return answer(client.post(agent_url + "/mcp", headers=headers, content=raw_call))


@pytest.mark.parametrize("raw_arguments", [
    rb'{"target": "demo", "sql": "SELECT 1 AS x -- \ud800"}',
    rb'{"target": "demo", "sql": "SELECT $1::text AS x", "params": ["a\udfffb"]}',
    rb'{"target": "vm", "command": "echo \ud83d"}',
])
def test_mcp_lone_surrogate_gets_a_clear_answer(raw_arguments, agent_url, tls, token):
    """MCP's JSON can carry "\\ud800" (not UTF-8, so it could not be sent on or recorded): the MCP
    server's parser refuses the call as a JSON-RPC parse error that names the escape, before any tool
    runs, and the broker goes on (the HTTP API's 422 is in test_http_api.py)."""
    tool = b"exec" if b"command" in raw_arguments else b"query"
    reply = _raw_mcp_call(agent_url, tls, token(), b'{"jsonrpc": "2.0", "id": 2, "method": "tools/call", '
                          b'"params": {"name": "' + tool + b'", "arguments": ' + raw_arguments + b"}}")
    assert reply["error"]["code"] == -32700 and "escape" in reply["error"]["message"], reply
    assert "result" not in reply

    async def body(session: ClientSession):
        return await session.call_tool("query", {"target": "demo", "sql": "SELECT 1 AS one"})

    fine = asyncio.run(asyncio.wait_for(_with_session(agent_url, tls, token(), body), 60))
    assert not fine.is_error and "1 row(s)" in _text(fine), _text(fine)
