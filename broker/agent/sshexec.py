"""One command on an SSH target, run by the broker with its held key (asyncssh).

The upstream host key must equal the policy's ``host_key`` (never trust on first
use). No PTY, no forwarding, no agent: exec only, with stdin closed. Output is
capped at ``max_bytes`` per stream; past the cap the rest is read and dropped.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncssh

from jitgate.policy import Target


class SshUnavailable(Exception):
    """The gateway could not reach or log in to the target."""


class ExecTimeout(Exception):
    pass


@dataclass
class ExecResult:
    stdout: str
    stderr: str
    exit_status: int | None
    exit_signal: str | None
    truncated: bool
    truncation: str | None


async def _read_capped(stream, limit: int) -> tuple[bytes, bool]:
    kept = bytearray()
    cut = False
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return bytes(kept), cut
        room = limit - len(kept)
        if len(chunk) > room:
            kept += chunk[:max(room, 0)]
            cut = True
        else:
            kept += chunk


async def run_command(target: Target, private_key: bytes, command: str, *, timeout_s: float, max_bytes: int) -> ExecResult:
    try:
        host_key = asyncssh.import_public_key(target.host_key)
        client_key = asyncssh.import_private_key(private_key)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise SshUnavailable(f"the gateway's key material for this target is unusable ({exc})") from None
    try:
        conn = await asyncio.wait_for(
            asyncssh.connect(target.host, target.port, username=target.username, client_keys=[client_key],
                             known_hosts=([host_key], [], []), agent_path=None, agent_forwarding=False,
                             x11_forwarding=False, config=None),
            15)
    except asyncssh.HostKeyNotVerifiable:
        raise SshUnavailable("the target's host key does not match the policy's host_key; an administrator must check it") from None
    except asyncssh.PermissionDenied:
        raise SshUnavailable("the target refused the gateway's held key; an administrator must fix it") from None
    except (OSError, asyncio.TimeoutError, asyncssh.Error) as exc:
        raise SshUnavailable(f"the target is unreachable ({type(exc).__name__})") from None
    try:
        async with conn:
            process = await conn.create_process(command, stdin=asyncssh.DEVNULL, encoding=None)
            try:
                (out, out_cut), (err, err_cut), _ = await asyncio.wait_for(
                    asyncio.gather(_read_capped(process.stdout, max_bytes), _read_capped(process.stderr, max_bytes),
                                   process.wait_closed()),
                    timeout_s)
            except asyncio.TimeoutError:
                process.kill()
                raise ExecTimeout(f"the command ran longer than {timeout_s:g}s and was killed") from None
            cut = [name for name, flag in (("stdout", out_cut), ("stderr", err_cut)) if flag]
            return ExecResult(
                stdout=out.decode("utf-8", errors="replace"),
                stderr=err.decode("utf-8", errors="replace"),
                exit_status=process.exit_status,
                exit_signal=process.exit_signal[0] if process.exit_signal else None,
                truncated=bool(cut),
                truncation=(f"{' and '.join(cut)} cut at {max_bytes} bytes; redirect output to a file and read it in parts "
                            "(e.g. head/tail/sed -n)") if cut else None,
            )
    except asyncssh.Error as exc:
        raise SshUnavailable(f"the SSH session failed ({exc})") from None
