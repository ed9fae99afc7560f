"""The SSH listener (JITGATE_SSH_LISTEN): host key, asyncssh server, stop hook.

The broker's own host key: with JITGATE_SSH_HOST_KEY (a secret reference, e.g.
``gcp-secret:...``; how infra/ runs it) one key shared by the whole fleet, so clients see
the same key behind the load balancer and across rollouts. Otherwise an Ed25519 key
generated on first start in ``$JITGATE_HOME/keys/ssh_host_ed25519_key`` (mode 0600, with
a ``.pub`` beside it for known_hosts files), reused afterwards.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import asyncssh

from broker.ssh import upstream
from broker.ssh.coalesce import assert_no_cbc
from broker.ssh.server import SshGateway
from jitgate.logs import log

logger = logging.getLogger("jitgate.broker.ssh")

HOST_KEY_NAME = "ssh_host_ed25519_key"
LOGIN_TIMEOUT = 120
KEEPALIVE_INTERVAL = 30
KEEPALIVE_COUNT_MAX = 3
# AES-GCM runs in OpenSSL in one call per packet; asyncssh's chacha20-poly1305 and CTR+HMAC take
# several Python-level steps per packet, which halves the relay's throughput. The client's order
# decides among what the server offers, so the broker offers the GCM ciphers only (every OpenSSH
# since 6.2 has them).
CIPHERS = assert_no_cbc(["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"])


def ensure_host_key(keys_dir: Path) -> asyncssh.SSHKey:
    path = keys_dir / HOST_KEY_NAME
    if path.exists():
        return asyncssh.read_private_key(str(path))
    keys_dir.mkdir(parents=True, exist_ok=True)
    key = asyncssh.generate_private_key("ssh-ed25519", comment="jitgate-broker")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.export_private_key())
    path.with_name(HOST_KEY_NAME + ".pub").write_bytes(key.export_public_key())
    log(logger, logging.INFO, "generated the broker's SSH host key", path=str(path), fingerprint=key.get_fingerprint())
    return key


def load_host_key(settings, backends) -> asyncssh.SSHKey:
    ref = settings.env.get("JITGATE_SSH_HOST_KEY")
    if not ref:
        return ensure_host_key(settings.keys_dir)
    try:
        return asyncssh.import_private_key(backends.secrets.get(ref))
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ValueError(f"JITGATE_SSH_HOST_KEY ({ref}) is not an unencrypted private key ({exc}); "
                         "create one with `openssl genpkey -algorithm ed25519` (docs/deploy.md)") from None


async def start(ctx) -> dict[str, str] | None:
    address = ctx.settings.listen("ssh")
    if not address:
        return None
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    key = load_host_key(ctx.settings, ctx.backends)
    # asyncssh logs every channel request (commands included) at INFO; the session recording is the audit trail.
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    gateway = SshGateway(ctx)
    server = await asyncssh.create_server(
        gateway.new_connection, host, int(port),
        server_host_keys=[key],
        server_version="jitgate",
        encryption_algs=CIPHERS,
        encoding=None,
        # the relay passes bytes through; asyncssh's line editor (on by default) would only wrap every
        # channel and session in a pass-through layer (it edits nothing without an encoding)
        line_editor=False,
        window=upstream.WINDOW,  # same flow control as towards the VM (broker/ssh/upstream.py)
        max_pktsize=upstream.MAX_PKTSIZE,
        agent_forwarding=False,  # switched on per connection when the target allows it
        x11_forwarding=False,
        allow_scp=False,
        login_timeout=LOGIN_TIMEOUT,
        keepalive_interval=KEEPALIVE_INTERVAL,
        keepalive_count_max=KEEPALIVE_COUNT_MAX,
        public_key_auth=False,
        password_auth=True,
        kbdint_auth=True,
        gss_host=None,
        config=[],
    )
    bound = server.sockets[0].getsockname()

    async def stop() -> None:
        server.close()
        await gateway.stop()

    ctx.stoppers.append(stop)
    log(logger, logging.INFO, "ssh listener ready", address=f"{host}:{bound[1]}", host_key=key.get_fingerprint())
    return {"ssh": f"{host}:{bound[1]}"}
