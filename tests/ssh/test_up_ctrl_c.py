"""Ctrl-C on `jitgate up` (issue 16): with a psql, an SSH and an MCP session open (and a psql client
that vanishes at the same moment), every recording is sealed as a normal end within the drain
deadline, nothing is left in the spool, and `jitgate up` exits 0. Real clients, real `jitgate up`."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

from jitgate.devstack import dev_token, free_port
from tests.ssh.conftest import SSH_TARGETS
from tests.ssh.sshd import LOGIN_USER, keygen

DRAIN_SECONDS = 10


def _wait(what: str, check, timeout: float = 120.0, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise AssertionError(f"{what}: the process exited ({proc.returncode}) {err}")
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout}s")


class McpSession(threading.Thread):
    """An MCP client session (the official SDK) that runs one query and then stays open."""

    def __init__(self, url: str, token: str, cafile: Path):
        super().__init__(daemon=True)
        self.url, self.token, self.cafile = url, token, cafile
        self.session_id: str | None = None
        self.error: BaseException | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        import httpx2
        from mcp.client import ClientSession
        from mcp.client.streamable_http import streamable_http_client

        tls = ssl.create_default_context(cafile=str(self.cafile))
        client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {self.token}"}, verify=tls,
                                    timeout=httpx2.Timeout(30, read=300))
        try:
            async with client, streamable_http_client(self.url, http_client=client) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    result = await session.call_tool("query", {"target": "demo", "sql": "SELECT 'mcp before ctrl-c'"})
                    self.session_id = result.structured_content["session_id"]
                    self.ready.set()
                    await asyncio.sleep(300)  # idle until the stack goes away under it
        except BaseException as exc:  # noqa: BLE001 - the broker goes away under the client: that is the point
            self.error = exc
        finally:
            self.ready.set()


def test_ctrl_c_on_jitgate_up_seals_open_psql_ssh_and_mcp_sessions_as_normal_ends(sshd, tmp_path):
    home = tmp_path / "home"
    env = dict(os.environ, JITGATE_DRAIN_SECONDS=str(DRAIN_SECONDS), PYTHONUNBUFFERED="1")
    env.pop("JITGATE_HOME", None)
    log = open(tmp_path / "up.log", "wb")
    up = subprocess.Popen([sys.executable, "-m", "jitgate.cli", "--home", str(home), "up", "--port", str(free_port())],
                          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                          cwd=Path(__file__).resolve().parents[2], start_new_session=True)
    clients: list[subprocess.Popen] = []
    try:
        _wait("jitgate up", lambda: b"Press Ctrl-C to stop." in (tmp_path / "up.log").read_bytes(), proc=up)
        state = json.loads((home / "stack.json").read_text())
        broker = state["broker"]
        assert "ssh" in broker and "http" in broker, broker
        other = keygen(tmp_path / "other_host_key", "someone-else")
        with open(state["policy"], "a") as fh:  # the broker reloads its policy for new sessions
            fh.write(SSH_TARGETS.format(port=sshd.port, user=LOGIN_USER, key=sshd.client_key,
                                        host_key=sshd.host_key_line, other_key=other))
        token = dev_token(state["issuer"], "alice@example.com", ["sre"])
        pg_port = broker["pg"].rpartition(":")[2]
        dsn = f"host=127.0.0.1 port={pg_port} dbname=demo user=alice@example.com password={token} sslmode=require"

        # psql (psycopg), open and idle
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=20)
        psql_session = conn.info.parameter_status("jitgate_session_id")
        conn.execute("SELECT 'psql before ctrl-c'").fetchall()

        # a real psql whose client vanishes (SIGKILL) at the moment of Ctrl-C
        vanishing = subprocess.Popen(["psql", dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        clients.append(vanishing)
        seen = bytearray()
        threading.Thread(target=lambda: [seen.extend(line) for line in vanishing.stdout], daemon=True).start()
        vanishing.stdin.write(b"SELECT 'vanishing client' AS v;\n")
        vanishing.stdin.flush()
        _wait("the vanishing psql's answer", lambda: b"vanishing client" in seen, proc=vanishing)

        # OpenSSH, an exec that keeps running
        ssh_env = dict(env, SSHPASS=token)
        ssh = subprocess.Popen(
            ["sshpass", "-e", "ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "PreferredAuthentications=password,keyboard-interactive", "-o", "PubkeyAuthentication=no",
             "-o", "ConnectTimeout=20", "-p", broker["ssh"].rpartition(":")[2], "-l", "alice@example.com+vm-test", "127.0.0.1",
             "echo ssh-ready; sleep 120"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ssh_env)
        clients.append(ssh)
        _wait("the SSH session", lambda: ssh.stdout.readline().strip() == b"ssh-ready", proc=ssh)

        # MCP (official SDK), open and idle
        mcp = McpSession(f"https://{broker['http']}/mcp", token, home / "tls" / "broker-dev.crt")
        mcp.start()
        assert mcp.ready.wait(120) and mcp.session_id, mcp.error

        os.kill(up.pid, signal.SIGINT)  # Ctrl-C: the terminal signals `jitgate up` (children have their own session)
        vanishing.kill()
        code = up.wait(DRAIN_SECONDS + 20 + 60)  # the shared stop deadline, plus the other children's stop
        assert code == 0, (tmp_path / "up.log").read_text()
        output = (tmp_path / "up.log").read_text()
        assert "stopped." in output, output
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
        log.close()

    from jitgate.backends import open_backends
    from jitgate.settings import Settings

    backends = open_backends(Settings.from_env({"JITGATE_HOME": str(home), "JITGATE_POLICY": state["policy"]}))
    rows = {r["session_id"]: r for r in backends.index.list_sessions(limit=50)}
    kinds = {r["kind"] for r in rows.values()}
    assert {"postgres", "ssh"} <= kinds and psql_session in rows and mcp.session_id in rows, rows
    for session_id, row in rows.items():  # every session: sealed, and not as a crash
        assert not row["end_reason"].startswith("crash"), row
    assert rows[psql_session]["end_reason"] == "broker shutting down", rows[psql_session]
    assert len(rows) == 4, rows  # psql, the vanished psql, SSH, MCP: each sealed
    assert not list((home / "spool").glob("*.jsonl")), "nothing may be left unsealed for the next start"
    ssh_rows = [r for r in rows.values() if r["kind"] == "ssh"]
    assert len(ssh_rows) == 1 and ssh_rows[0]["end_reason"] == "broker shutting down", ssh_rows
    assert rows[mcp.session_id]["end_reason"] == "broker shutting down", rows[mcp.session_id]
    # psql is closed at the drain deadline, not after the agent listener's own graceful wait for
    # the MCP client's open HTTP stream (which would push it towards `jitgate up`'s kill).
    broker_log = (home / "logs" / "broker.log").read_text()
    psql_end = broker_log.index(f'"message": "session ended", "session_id": "{psql_session}"')
    assert psql_end < broker_log.index('"Finished server process'), "psql waited for the HTTP listener to stop"
