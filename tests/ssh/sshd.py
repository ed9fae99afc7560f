"""A real OpenSSH server for tests and benchmarks: root sshd on a free 127.0.0.1 port, own config and keys.

The login account, ``jitgate-ssh``, is not root and has a random password set
(so sshd does not take it for a locked account); sshd only accepts the broker's
held key for it (``client_key``), listed in ``authorized_keys``.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from jitgate.devstack import Proc, free_port, spawn, wait_for

SSHD = "/usr/sbin/sshd"
LOGIN_USER = "jitgate-ssh"


def keygen(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


def ensure_login_user() -> None:
    """A non-root account whose password is set (so sshd does not see it as locked) but never used."""
    try:
        subprocess.run(["id", LOGIN_USER], check=True, capture_output=True)
    except subprocess.CalledProcessError:
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", LOGIN_USER], check=True)
    subprocess.run(["chpasswd"], input=f"{LOGIN_USER}:{os.urandom(18).hex()}\n", text=True, check=True)


@dataclass
class Sshd:
    root: Path
    port: int
    host_key_line: str
    client_key: Path
    proc: Proc

    def stop(self) -> None:
        self.proc.stop()


def start_sshd(root: Path) -> Sshd:
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)  # sshd reads authorized_keys as the login user
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    ensure_login_user()
    host_key = root / "ssh_host_ed25519_key"
    host_pub = keygen(host_key, "test-vm")
    client_key = root / "broker_key"
    client_pub = keygen(client_key, "jitgate-broker-held-key")
    authorized = root / "authorized_keys"
    authorized.write_text(client_pub + "\n")
    os.chmod(authorized, 0o644)
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        f"""Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {root}/sshd.pid
AuthorizedKeysFile {authorized}
UsePAM no
StrictModes no
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding yes
AllowAgentForwarding yes
X11Forwarding no
AcceptEnv LANG LC_*
MaxStartups 100:30:200
MaxSessions 50
PrintMotd no
Subsystem sftp internal-sftp
LogLevel VERBOSE
"""
    )
    proc = spawn(f"sshd-{port}", [SSHD, "-D", "-e", "-f", str(config)], root)

    def answers() -> bool:
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return s.recv(64).startswith(b"SSH-")

    wait_for(answers, 20, "sshd", proc)
    return Sshd(root, port, host_pub, client_key, proc)
