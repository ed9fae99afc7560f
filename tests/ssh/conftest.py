"""A real OpenSSH server for the SSH broker tests, and targets pointing at it.

The sshd runs as root on a free 127.0.0.1 port with its own sshd_config, host key
and authorized_keys (the broker's held key), and logs in a non-root account,
``jitgate-ssh``. The targets are appended to the shared stack's policy, which the
broker and functions/authorize reload for new sessions.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ssh.sshd import LOGIN_USER, SSHD, Sshd, keygen, start_sshd

def _need(*tools: str) -> None:
    missing = [t for t in tools if not (shutil.which(t) or os.path.exists(t))]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: scripts/install.sh installs them")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    _need(SSHD, "ssh", "ssh-keygen", "sshpass")
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="jitgate-sshd-"))
    server = start_sshd(root)
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


SSH_TARGETS = """
  vm-test:
    kind: ssh
    address: 127.0.0.1:{port}
    username: {user}
    credential: file:{key}
    host_key: "{host_key}"
    allow:
      groups: [sre]
    guardrails:
      privilege: deny
  vm-nofiles:
    kind: ssh
    address: 127.0.0.1:{port}
    username: {user}
    credential: file:{key}
    host_key: "{host_key}"
    allow_file_transfer: false
    allow:
      groups: [sre]
  vm-forward:
    kind: ssh
    address: 127.0.0.1:{port}
    username: {user}
    credential: file:{key}
    host_key: "{host_key}"
    allow_port_forwarding: true
    allow:
      groups: [sre]
  vm-rekeyed:
    kind: ssh
    address: 127.0.0.1:{port}
    username: {user}
    credential: file:{key}
    host_key: "{other_key}"
    allow:
      groups: [sre]
  vm-jit:
    kind: ssh
    address: 127.0.0.1:{port}
    username: {user}
    credential: file:{key}
    host_key: "{host_key}"
    session_approval: true
    approvals:
      approver_groups: [sre-leads]
      wait: 3s
    allow:
      groups: [sre]
"""


@dataclass
class SshTargets:
    port: int  # the broker's SSH port
    sshd: Sshd
    work: Path


@pytest.fixture(scope="session")
def ssh_targets(stack, sshd, tmp_path_factory) -> SshTargets:
    if "ssh" not in stack.broker_info:
        pytest.fail(f"the broker did not start its SSH listener: {stack.broker_info}")
    work = tmp_path_factory.mktemp("ssh-work")
    other = keygen(work / "other_host_key", "someone-else")
    with open(stack.policy_path, "a") as fh:
        fh.write(SSH_TARGETS.format(port=sshd.port, user=LOGIN_USER, key=sshd.client_key, host_key=sshd.host_key_line,
                                    other_key=other))
    time.sleep(0.05)
    return SshTargets(int(stack.broker_info["ssh"].rpartition(":")[2]), sshd, work)


@pytest.fixture(scope="session")
def ssh_cmd(ssh_targets, token):
    """argv prefix for OpenSSH tools through the broker, with the token fed by sshpass."""

    def make(tool: str = "ssh", target: str = "vm-test", user: str = "alice@example.com", groups=("sre",),
             password: str | None = None) -> tuple[list[str], dict]:
        env = dict(os.environ, SSHPASS=password if password is not None else token(user, groups))
        port_flag = "-P" if tool in ("scp", "sftp") else "-p"
        opts = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "PreferredAuthentications=password,keyboard-interactive", "-o", "PubkeyAuthentication=no",
                "-o", "NumberOfPasswordPrompts=1", "-o", "ConnectTimeout=20"]
        if tool == "ssh":
            argv = ["sshpass", "-e", "ssh", *opts, port_flag, str(ssh_targets.port), "-l", f"{user}+{target}"]
        else:
            argv = ["sshpass", "-e", tool, *opts, port_flag, str(ssh_targets.port), "-o", f"User={user}+{target}"]
        return argv, env

    return make
