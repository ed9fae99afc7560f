"""SIGTERM drains: no new sessions, live ones finish their work, then the broker exits and seals them."""
from __future__ import annotations

import signal
import time

import httpx
import psycopg

from jitgate.devstack import start_broker
from tests.conftest import wait_sealed


def test_sigterm_lets_live_sessions_finish_then_exits(stack, broker_dsn):
    env = dict(stack.env, JITGATE_PG_LISTEN="127.0.0.1:0", JITGATE_SSH_LISTEN="", JITGATE_HTTP_LISTEN="",
               JITGATE_K8S_LISTEN="")
    proc, info = start_broker(stack.home, env, stack.home / "logs", name="broker-drain")
    port = int(info["pg"].rpartition(":")[2])
    dsn = broker_dsn().replace(f"port={stack.broker_port}", f"port={port}")
    readyz, healthz = f"http://{info['metrics']}/readyz", f"http://{info['metrics']}/healthz"
    try:
        assert httpx.get(readyz, timeout=10).status_code == 200
        with psycopg.connect(dsn) as conn:
            session_id = conn.info.parameter_status("jitgate_session_id")
            proc.popen.send_signal(signal.SIGTERM)
            # The load balancer's health check must see the drain (infra/broker.tf, broker_lb: /readyz);
            # autohealing's (/healthz) must not, or it would recreate the VM under its live sessions.
            deadline = time.monotonic() + 15
            ready = httpx.get(readyz, timeout=10)
            while ready.status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.1)
                ready = httpx.get(readyz, timeout=10)
            assert ready.status_code == 503 and ready.json()["draining"] is True
            assert httpx.get(healthz, timeout=10).status_code == 200
            deadline = time.monotonic() + 15
            refused = False
            while not refused and time.monotonic() < deadline:  # draining: the listener closes
                try:
                    psycopg.connect(dsn).close()
                    time.sleep(0.1)
                except psycopg.OperationalError:
                    refused = True
            assert refused, "the broker kept accepting new sessions after SIGTERM"
            assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] >= 5  # the live session still works
        assert proc.popen.wait(20) == 0  # the last session ended: the broker exits well before the deadline
    finally:
        proc.stop()
    wait_sealed(stack, session_id)


def test_drain_closes_idle_agent_sessions_at_once_and_seals_every_session_as_a_normal_end(stack, broker_dsn, token):
    """Ctrl-C on `jitgate up` (SIGTERM to the broker): an idle MCP session's recorded session ends at
    once, an idle psql session at the drain deadline; both are sealed as normal ends before the broker exits."""
    import asyncio
    import ssl

    import httpx2
    from mcp.client import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    from jitgate.backends import open_backends
    from jitgate.settings import Settings

    env = dict(stack.env, JITGATE_PG_LISTEN="127.0.0.1:0", JITGATE_SSH_LISTEN="", JITGATE_HTTP_LISTEN="127.0.0.1:0",
               JITGATE_K8S_LISTEN="", JITGATE_DRAIN_SECONDS="20", JITGATE_SPOOL_DIR=str(stack.home / "spool-drain"))
    proc, info = start_broker(stack.home, env, stack.home / "logs", name="broker-drain-idle")
    port = int(info["pg"].rpartition(":")[2])
    dsn = broker_dsn().replace(f"port={stack.broker_port}", f"port={port}")
    backends = open_backends(Settings.from_env(stack.env))
    tls = ssl.create_default_context(cafile=str(stack.home / "tls" / "broker-dev.crt"))
    seen: dict = {}

    async def mcp_then_drain(conn) -> None:
        client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token()}"}, verify=tls,
                                    timeout=httpx2.Timeout(30, read=120))
        try:
            async with client, streamable_http_client(f"https://{info['http']}/mcp", http_client=client) as (r, w):
                async with ClientSession(r, w) as session:
                    await session.initialize()
                    result = await session.call_tool("query", {"target": "demo", "sql": "SELECT 'mcp before drain'"})
                    seen["mcp"] = result.structured_content["session_id"]
                    proc.popen.send_signal(signal.SIGTERM)
                    deadline = time.monotonic() + 15  # before the 20 s drain deadline
                    while time.monotonic() < deadline and backends.index.get_session(seen["mcp"]) is None:
                        await asyncio.sleep(0.2)
                    seen["mcp_sealed_while_psql_open"] = backends.index.get_session(seen["mcp"]) is not None
                    seen["broker_still_draining"] = proc.popen.poll() is None
        except Exception:  # noqa: BLE001 - the broker goes away under the MCP client; that is the point
            pass

    try:
        conn = psycopg.connect(dsn, autocommit=True)  # an idle psql session, left open
        try:
            seen["psql"] = conn.info.parameter_status("jitgate_session_id")
            conn.execute("SELECT 'psql before drain'").fetchall()
            asyncio.run(mcp_then_drain(conn))
            assert seen.get("mcp_sealed_while_psql_open"), seen
            assert seen.get("broker_still_draining"), seen
            assert proc.popen.wait(40) == 0  # the drain deadline closes psql; sealed, then exit
        finally:
            conn.close()
        for session_id in (seen["mcp"], seen["psql"]):
            entry = backends.index.get_session(session_id)  # sealed before the broker exited
            assert entry and entry["end_reason"] == "broker shutting down", entry
        assert not list((stack.home / "spool-drain").glob("*.jsonl"))  # nothing left for the next start
    finally:
        proc.stop()
