"""Fewer packets and fewer socket writes for the broker's asyncssh connections (both legs).

Two costs asyncssh pays per SSH packet that the relay does not need:

- It puts an empty SSH_MSG_IGNORE in front of every packet once encryption is on: RFC 4251
  9.3.1's countermeasure for CBC mode, whose next IV is the last ciphertext block. The broker
  negotiates only AES-GCM with clients and GCM, chacha20-poly1305 or CTR with VMs (no CBC on
  either leg, checked by ``assert_no_cbc`` at startup), where every packet has its own nonce or
  counter and the empty packet protects nothing, yet it costs a second encryption and a second
  trip through asyncssh's Python for every data packet and every keystroke.
- It hands every packet to ``transport.write`` on its own, and asyncio sends each write at once:
  relaying one 256 KiB read from the VM cost 8-16 ``send()`` calls towards the client, each
  waking the client's ssh on loopback.

``CoalescingTransport`` collects what one turn of the event loop writes and sends it with one
``write`` (at most ``MAX_BATCH`` bytes at a time, so a batch never needs a fresh mmap) at the
start of the next turn, or at once when the relay calls ``flush`` (a terminal's echo). Bytes and
their order are unchanged. asyncssh has no public hook for either, so ``speed_up(conn)``, called
from the owner's ``connection_made``, sets the connection's ``_transport`` and an instance
``send_packet``; asyncssh is pinned in requirements.txt and tests/ssh/test_ssh_speed.py checks
that both still take effect.
"""
from __future__ import annotations

import asyncio

from asyncssh.constants import MSG_IGNORE
from asyncssh.packet import String

MAX_BATCH = 64 * 1024
_EMPTY_IGNORE = (String(b""),)


class CoalescingTransport:
    """Wraps an asyncio transport: ``write`` buffers until the loop's next turn; everything that
    ends or inspects the stream (close, abort, write_eof, buffer size) sees the buffered bytes
    first, exactly as if each write had gone straight through."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.writes = 0  # writes asyncssh made (tests)
        self.flushes = 0  # writes handed to the real transport (tests)

    def write(self, data: bytes) -> None:
        self.writes += 1
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= MAX_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        self.flushes += 1
        self._transport.write(data)

    def writelines(self, chunks) -> None:
        for chunk in chunks:
            self.write(chunk)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._pending_bytes

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self.flush()  # what was written before abort() had reached the real transport before, too
        self._transport.abort()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


def assert_no_cbc(algorithms: list[str]) -> list[str]:
    """The cipher lists the broker offers; dropping the empty SSH_MSG_IGNORE needs them CBC-free."""
    cbc = [a for a in algorithms if "cbc" in a.lower()]
    if cbc:
        raise ValueError(f"CBC ciphers {cbc} need asyncssh's SSH_MSG_IGNORE before each packet (broker/ssh/coalesce.py)")
    return algorithms


def speed_up(conn) -> CoalescingTransport:
    """Coalesce the writes of an asyncssh connection and drop its empty per-packet SSH_MSG_IGNORE
    (call from the owner's connection_made, where asyncssh has set the transport)."""
    transport = conn._transport
    if not isinstance(transport, CoalescingTransport):
        transport = conn._transport = CoalescingTransport(transport, asyncio.get_running_loop())
        send_packet = conn.send_packet

        def send_packet_without_padding_ignore(pkttype: int, *args: bytes, handler=None) -> None:
            if pkttype == MSG_IGNORE and args == _EMPTY_IGNORE:
                return  # the CBC countermeasure (see the module docstring); other ignore packets go out
            send_packet(pkttype, *args, handler=handler)

        conn.send_packet = send_packet_without_padding_ignore
    return transport


def writes_of(conn) -> CoalescingTransport | None:
    transport = getattr(conn, "_transport", None)
    return transport if isinstance(transport, CoalescingTransport) else None
