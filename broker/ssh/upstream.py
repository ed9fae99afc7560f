"""The broker's own login to a VM: the held private key, and the host key the policy pins.

The upstream host key is never trusted on first use: the policy's ``host_key``
(an OpenSSH public key line) is the only key accepted, and a mismatch refuses
the session with both fingerprints so an administrator can tell a reinstalled
VM from an interception.
"""
from __future__ import annotations

import asyncio

import asyncssh

from broker.ssh.coalesce import assert_no_cbc, speed_up
from jitgate.policy import Target

CONNECT_TIMEOUT = 15
KEEPALIVE_INTERVAL = 30
KEEPALIVE_COUNT_MAX = 3
# Flow control towards the VM: a window of 8 MiB keeps a fast VM sending while the client drains
# (asyncssh's default of 2 MiB stalls it at every window adjust), and packets of up to 256 KiB
# (OpenSSH's own packet limit) let sshd send what it has read in fewer packets: every packet costs
# the relay a decryption and a round through asyncssh's Python.
WINDOW = 8 * 1024 * 1024
MAX_PKTSIZE = 256 * 1024
# AES-GCM first (one OpenSSL call per packet); never CBC (broker/ssh/coalesce.py drops its countermeasure).
CIPHERS = assert_no_cbc(["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                         "aes128-ctr", "aes256-ctr"])


class UpstreamError(Exception):
    """The broker could not log in to the target; the text is shown to the user."""


def pinned_key(target_name: str, target: Target) -> asyncssh.SSHKey:
    try:
        return asyncssh.import_public_key(target.host_key or "")
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise UpstreamError(
            f"jitgate: target {target_name!r} has an unusable host_key in the policy ({exc}); "
            "set it to the VM's OpenSSH public key line (ssh-keyscan, then check the fingerprint)") from None


async def connect(target_name: str, target: Target, private_key: bytes, *,
                  agent_socket: str | None = None) -> asyncssh.SSHClientConnection:
    """Log in to the target as its policy ``username`` with the held key. Raises UpstreamError.

    ``agent_socket``: where the client's forwarded agent answers (ssh -A, when the target allows
    it); the VM's agent requests go there. The held key never comes from an agent."""
    expected = pinned_key(target_name, target)
    try:
        key = asyncssh.import_private_key(private_key)
    except (asyncssh.KeyImportError, ValueError):
        raise UpstreamError(
            f"jitgate: the held credential of target {target_name!r} is not an SSH private key; "
            "an administrator must fix the credential reference") from None
    options = dict(
        username=target.username,
        client_keys=[key],
        known_hosts=([expected], [], []),
        server_host_key_algs=[expected.get_algorithm()],
        agent_path=None,
        agent_forwarding=agent_socket or False,
        x11_forwarding=False,
        encryption_algs=CIPHERS,
        keepalive_interval=KEEPALIVE_INTERVAL,
        keepalive_count_max=KEEPALIVE_COUNT_MAX,
        password=None,
        kbdint_auth=False,
        window=WINDOW,
        max_pktsize=MAX_PKTSIZE,
        client_factory=_RelayClient,
        gss_host=None,
        config=[],
    )
    try:
        return await asyncio.wait_for(asyncssh.connect(target.host, target.port, **options), CONNECT_TIMEOUT)
    except asyncssh.HostKeyNotVerifiable:
        offered = await _offered_fingerprint(target, expected.get_algorithm())
        raise UpstreamError(
            f"jitgate: the host key of target {target_name!r} ({target.address}) does not match the policy: "
            f"expected {expected.get_fingerprint()}, the server offered {offered}. The VM may have been rebuilt, "
            "or someone is in the way; verify the new key out of band and update host_key in the policy") from None
    except asyncssh.PermissionDenied:
        raise UpstreamError(
            f"jitgate: target {target_name!r} refused the gateway's key for user {target.username!r}; "
            "an administrator must install the held key's public half on the VM") from None
    except (OSError, asyncio.TimeoutError) as exc:
        raise UpstreamError(f"jitgate: target {target_name!r} ({target.address}) is unreachable ({type(exc).__name__})") from None
    except asyncssh.Error as exc:
        raise UpstreamError(f"jitgate: login to target {target_name!r} failed: {exc.reason}") from None


class _RelayClient(asyncssh.SSHClient):
    """The broker's side of the VM connection: coalesced writes (broker/ssh/coalesce.py)."""

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        speed_up(conn)


async def _offered_fingerprint(target: Target, algorithm: str) -> str:
    try:
        key = await asyncio.wait_for(
            asyncssh.get_server_host_key(target.host, target.port, server_host_key_algs=[algorithm]), CONNECT_TIMEOUT)
    except (OSError, asyncio.TimeoutError, asyncssh.Error):
        key = None
    if key is None:
        return f"no {algorithm} key"
    return key.get_fingerprint()
