"""The shell guardrails end to end through the broker and a real sshd, against a throwaway account.

Every bypass from issue 13 (and a sample of the corpus) is sent as an SSH exec to a
target whose agents get the allow-list; each must be refused, and the login account's
canary files must be intact afterwards. Read-only commands must still run. Shells:
``echo 'id' | ssh`` to a ``shells: approve`` target is held until a human approves, and
its stdin is in the recording. ``ssh -A`` works where agent forwarding is allowed.
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

import asyncssh
import pytest

from jitgate.backends import open_backends
from jitgate.devstack import dev_token
from jitgate.settings import Settings
from tests.approval_helpers import wait_pending
from tests.guardrails.shell_corpus import ISSUE_13, OWN
from tests.ssh.helpers import of_type, recording_events, sealed_session
from tests.ssh.sshd import LOGIN_USER

GUARD_TARGETS = """
  vm-guard:
    kind: ssh
    address: 127.0.0.1:{port}
    username: {user}
    credential: file:{key}
    host_key: "{host_key}"
    allow:
      groups: [agents]
    commands: {{mode: allowlist, approve_others: false}}
    shells: deny
    guardrails: {{destructive: deny, privilege: deny, service_control: deny, package_change: deny, system_write: deny}}
  vm-shells:
    kind: ssh
    address: 127.0.0.1:{port}
    username: {user}
    credential: file:{key}
    host_key: "{host_key}"
    allow:
      groups: [agents]
    shells: approve
    approvals:
      approver_groups: [sre-leads]
      wait: 60s
  vm-agent:
    kind: ssh
    address: 127.0.0.1:{port}
    username: {user}
    credential: file:{key}
    host_key: "{host_key}"
    allow_agent_forwarding: true
    allow:
      groups: [sre]
"""

# The attacks sent end to end: every issue-13 command with an exec form, and a spread of our own.
E2E_ATTACKS = [c for c, _, _ in ISSUE_13 if c] + [c for c, agent, _ in OWN if agent != "A" and "\0" not in c][::6]
E2E_ALLOWED = ["ls -la ~/canary", "cat ~/canary/keep.txt", "time -p ls ~/canary", "find ~/canary -name '*.txt'",
               "bash -c 'wc -l ~/canary/keep.txt'"]


@pytest.fixture(scope="module")
def guard(stack, ssh_targets):
    with open(stack.policy_path, "a") as fh:
        fh.write(GUARD_TARGETS.format(port=ssh_targets.sshd.port, user=LOGIN_USER, key=ssh_targets.sshd.client_key,
                                      host_key=ssh_targets.sshd.host_key_line))
    time.sleep(0.05)
    account = pwd.getpwnam(LOGIN_USER)
    home = Path(account.pw_dir)
    canary = home / "canary"
    # The login account is the machine's, not the run's: a second suite running at the same time on
    # this machine would remove our canary under us. Hold the account's canary for this module.
    lock = open(Path("/tmp") / f"jitgate-canary-{LOGIN_USER}.lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    shutil.rmtree(canary, ignore_errors=True)
    canary.mkdir()
    files = {canary / "keep.txt": b"line one\nline two\n", home / "canary-top.txt": b"top\n",
             canary / "nested" / "deep.bin": os.urandom(256)}
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for path in [canary, canary / "nested", *files]:
        os.chown(path, account.pw_uid, account.pw_gid)
    yield {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
    shutil.rmtree(canary, ignore_errors=True)
    (home / "canary-top.txt").unlink(missing_ok=True)
    lock.close()  # releases the lock


async def _exec_all(port: int, token: str, target: str, commands: list[str]) -> list[asyncssh.SSHCompletedProcess]:
    async with asyncssh.connect("127.0.0.1", port, username=f"agent@example.com+{target}", password=token,
                                known_hosts=None, preferred_auth="password", client_keys=None, agent_path=None) as conn:
        return [await conn.run(command, check=False, timeout=60) for command in commands]


def test_attacks_are_refused_and_the_account_is_intact(guard, ssh_targets, token, stack):
    results = asyncio.run(_exec_all(ssh_targets.port, token("agent@example.com", ("agents",)), "vm-guard",
                                    E2E_ATTACKS + E2E_ALLOWED))
    attacks, allowed = results[: len(E2E_ATTACKS)], results[len(E2E_ATTACKS):]
    for command, result in zip(E2E_ATTACKS, attacks):
        assert result.exit_status == 126, (command, result.exit_status, result.stdout, result.stderr)
        assert "jitgate:" in result.stderr and ("refused" in result.stderr or "not allowed" in result.stderr), command
    for command, result in zip(E2E_ALLOWED, allowed):
        assert result.exit_status == 0, (command, result.stderr)
    assert "keep.txt" in allowed[0].stdout and allowed[1].stdout == "line one\nline two\n"
    for path, digest in guard.items():
        assert path.exists(), f"{path} was deleted"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path} was changed"
    assert len(E2E_ATTACKS) >= 40


def test_stdin_fed_shell_waits_for_approval_and_its_script_is_recorded(guard, ssh_cmd, stack, tmp_path):
    argv, env = ssh_cmd(target="vm-shells", user="piper@example.com", groups=("agents",))
    script = tmp_path / "script.sh"
    script.write_bytes(b"id -un\necho fed-by-stdin\n")  # echo 'id -un ...' | ssh host
    with open(script, "rb") as stdin:
        proc = subprocess.Popen(argv + ["-T", "127.0.0.1"], env=env, stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    try:
        request = wait_pending(open_backends(Settings.from_env(stack.env)), "vm-shells",
                               lambda r: r.get("requester") == "piper@example.com", what="the shell")
        assert "shell reading its commands from stdin" in request["statement"]
        assert proc.poll() is None  # held: nothing ran yet
        approver = dev_token(stack.issuer.issuer, "dana@example.com", ["sre-leads"])
        subprocess.run([*_jitgate(stack), "approvals", "approve", request["approval_id"], "--token", approver],
                       env=stack.env, check=True, capture_output=True, timeout=60)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.decode().split() == [LOGIN_USER, "fed-by-stdin"]
    assert b"needs approval" in err and b"shells: approve" in err
    events = recording_events(stack, sealed_session(stack, "piper@example.com"))
    fed = "".join(e["data"] for e in of_type(events, "ssh.stdin"))
    assert fed == "id -un\necho fed-by-stdin\n"
    [end] = of_type(events, "ssh.exit")
    assert end["stdin_sha256"] == hashlib.sha256(b"id -un\necho fed-by-stdin\n").hexdigest()
    [statement] = of_type(events, "statement")
    assert statement["decision"] == "allow" and statement["approval_id"] == request["approval_id"]


def test_pty_shell_is_refused_where_shells_are_denied(guard, ssh_cmd, stack):
    argv, env = ssh_cmd(target="vm-guard", user="denied-shell@example.com", groups=("agents",))
    r = subprocess.run(argv + ["-tt", "127.0.0.1"], env=env, input=b"id\nexit\n", capture_output=True, timeout=60)
    assert r.returncode == 126
    assert b"shells are not allowed" in r.stderr


def test_agent_forwarding_with_ssh_A(guard, ssh_cmd, tmp_path):
    key = tmp_path / "agent_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "forwarded-key", "-f", str(key)], check=True)
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env_agent = dict(os.environ, SSH_AUTH_SOCK=str(sock))
        subprocess.run(["ssh-add", str(key)], env=env_agent, check=True, capture_output=True, timeout=30)
        argv, env = ssh_cmd(target="vm-agent", user="forwarder@example.com")
        env["SSH_AUTH_SOCK"] = str(sock)
        r = subprocess.run(argv + ["-A", "127.0.0.1", "ssh-add -l"], env=env, capture_output=True, timeout=60)
    finally:
        agent.kill()
    assert r.returncode == 0, r.stderr
    assert b"forwarded-key" in r.stdout


def _jitgate(stack) -> list[str]:
    return [sys.executable, "-m", "jitgate.cli", "--home", str(stack.home)]


def test_agent_api_exec_refuses_the_attacks_and_nul_bytes(guard, stack, token):
    import ssl

    import httpx

    client = httpx.Client(base_url=f"https://{stack.broker_info['http']}",
                          verify=ssl.create_default_context(cafile=str(stack.home / "tls" / "broker-dev.crt")),
                          headers={"Authorization": f"Bearer {token('agent@example.com', ('agents',))}"}, timeout=60)
    with client:
        for command in [c for c, _, _ in ISSUE_13 if c]:
            r = client.post("/v1/targets/vm-guard/exec", json={"command": command})
            assert r.status_code == 403, (command, r.status_code, r.text)
        r = client.post("/v1/targets/vm-guard/exec", json={"command": "ls\u0000 -la"})
        assert r.status_code == 403 and "NUL byte" in r.text, r.text
        r = client.post("/v1/targets/vm-guard/exec", json={"command": "ls ~/canary"})
        assert r.status_code == 200 and "keep.txt" in r.json()["stdout"], r.text
    for path, digest in guard.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, path


def test_mcp_exec_refuses_the_attacks(guard, stack, token):
    """The same attacks through the MCP `exec` tool: none runs, the account's files are intact."""
    import asyncio
    import ssl

    from tests.agent.test_mcp import _text, _with_session

    tls = ssl.create_default_context(cafile=str(stack.home / "tls" / "broker-dev.crt"))

    async def body(session):
        for command in [c for c, _, _ in ISSUE_13 if c]:
            result = await session.call_tool("exec", {"target": "vm-guard", "command": command})
            text = _text(result)
            assert result.is_error or text.startswith("APPROVAL REQUIRED"), (command, text)
        control = await session.call_tool("exec", {"target": "vm-guard", "command": "ls ~/canary"})
        assert not control.is_error and "keep.txt" in _text(control), _text(control)

    asyncio.run(_with_session(f"https://{stack.broker_info['http']}", tls, token("agent@example.com", ("agents",)), body))
    for path, digest in guard.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, path
