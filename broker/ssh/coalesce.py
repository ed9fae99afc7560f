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

Per packet, asyncssh also does work whose result nobody uses (the rest of this module):

- ``_log_packet`` formats a description of every packet sent and received (payload length,
  handler name) and only then asks the logger whether packet logging (asyncssh debug level 3) is
  on. ``quiet_packet_log`` skips the call on a connection or channel while that level is off.
- It keeps its receive buffer as ``bytes`` and slices it twice per packet (``_recv_pkthdr``,
  ``_recv_packet``): a 256 KiB read of eight 32 KiB packets was copied about eight times over.
  ``PacketFeed`` hands it each read cut at packet ends, so its buffer holds one packet.
- Every read re-arms its keepalive timer (a cancelled timer and a new one per read, both legs,
  two per keystroke). ``_lazy_keepalive`` notes the time of the read instead; the one timer,
  when it fires, re-arms itself for what is left of the interval after the last read.
- Its AES-GCM shim builds a new ``AESGCM`` object (a fresh OpenSSL context and key schedule) for
  every packet, about 6 µs of a small packet's 9, and copies each packet twice more than needed.
  ``fast_gcm`` keeps one ``AESGCM`` per key and joins the pieces once: the same bytes out, the
  same IV sequence, the same failure (``None``) on a bad tag.
- Its ``send_packet`` copies each packet four times on the way to the cipher; ``PacketSender``
  seals steady-state GCM packets after one join (its docstring says when).
"""
from __future__ import annotations

import asyncio
import os
import time

from asyncssh.constants import MSG_IGNORE
from asyncssh.crypto.cipher import GCMCipher
from asyncssh.encryption import GCMEncryption
from asyncssh.logging import SSHLogger
from asyncssh.packet import String
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAX_BATCH = 64 * 1024
# Reads up to this size go to asyncssh whole (PacketFeed): its slicing is quadratic in the read, which
# only matters for large ones, and cutting a one-packet read costs a second trip through its receive code.
WHOLE_READ = 4 * 1024
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


def _no_packet_log(pkttype: int, pktid, packet, note: str = "") -> None:
    pass


def quiet_packet_log(handler) -> None:
    """No per-packet log call on this connection or channel unless asyncssh's packet logging
    (``asyncssh.set_debug_level(3)``, a class-wide setting) is on when it opens."""
    if SSHLogger._debug_level < 3:
        handler.log_sent_packet = handler.log_received_packet = _no_packet_log


_GCM_TAG = 16
_asyncssh_gcm = {"encrypt": GCMCipher.encrypt_and_sign,
                 "decrypt": GCMEncryption.decrypt_packet}  # the originals (tests compare against them)


def _aead(cipher) -> AESGCM:
    """The cipher's one AESGCM, made on its first packet."""
    try:
        return cipher._aead
    except AttributeError:
        cipher._aead = AESGCM(cipher._key)
        return cipher._aead


def _gcm_encrypt_and_sign(self, header: bytes, data: bytes) -> tuple[bytes, bytes]:
    sealed = _aead(self).encrypt(self._iv, data, header)
    self._update_iv()
    return header + memoryview(sealed)[:-_GCM_TAG], sealed[-_GCM_TAG:]


def _gcm_decrypt_packet(self, seq: int, first: bytes, rest: bytes, header_len: int, mac: bytes) -> bytes | None:
    cipher = self._cipher
    try:
        data = _aead(cipher).decrypt(cipher._iv, b"".join((first[header_len:], rest, mac)), first[:header_len])
    except InvalidTag:
        data = None
    cipher._update_iv()
    return data


def fast_gcm() -> None:
    """One AESGCM per key and fewer copies in asyncssh's GCM shim (module docstring), on asyncssh's
    classes (every GCM connection of the process; the same bytes on the wire). Idempotent."""
    GCMCipher.encrypt_and_sign = _gcm_encrypt_and_sign
    GCMEncryption.decrypt_packet = _gcm_decrypt_packet


fast_gcm()


class PacketFeed:
    """A connection's ``data_received``: each read goes to asyncssh's own ``data_received`` cut
    where its current packet ends (plus the next packet's first block, whose length asyncssh
    decrypts), so its ``bytes`` buffer never holds more than one packet. Where a packet ends comes
    from asyncssh's receive state; when that is not a plain packet read (version exchange, a packet
    whose handler is still running, a closed connection), the rest of the read goes in one piece,
    as before. Every byte is delivered once and in order either way."""

    def __init__(self, conn) -> None:
        self._conn = conn
        self._receive = conn.data_received  # asyncssh's own (bound) method
        cls = type(conn)
        self._recv_packet, self._recv_pkthdr = cls._recv_packet, cls._recv_pkthdr
        self.pieces = 0  # calls made on asyncssh's data_received (tests)

    def _next_cut(self) -> int:
        """Bytes asyncssh needs to finish the packet it is reading and to read the next one's
        length (0: not known)."""
        conn = self._conn
        handler = getattr(conn._recv_handler, "__func__", None)
        if handler is self._recv_packet:
            return 4 + conn._pktlen + conn._recv_macsize - len(conn._inpbuf)
        if handler is self._recv_pkthdr:
            return conn._recv_blocksize - len(conn._inpbuf)
        return 0

    def __call__(self, data: bytes, datatype=None) -> None:
        conn, receive = self._conn, self._receive
        pos, size = 0, len(data)
        if size <= WHOLE_READ:  # a keystroke, an echo, a window adjust: slicing it costs nothing, cutting it a call
            self.pieces += 1
            receive(data)
            return
        view = None
        while conn._transport is not None:
            cut = self._next_cut()
            if cut <= 0 or size - pos <= cut:
                break
            if view is None:
                view = memoryview(data)
            self.pieces += 1
            receive(view[pos:pos + cut])
            pos += cut
        if pos and conn._transport is None:
            return  # asyncssh closed the connection on what it was given; it would drop the rest too
        self.pieces += 1
        receive(data if pos == 0 else view[pos:])


def _lazy_keepalive(conn) -> None:
    """One keepalive timer per connection instead of a new one per read (module docstring): the
    keepalive request still goes out ``keepalive_interval`` seconds after the last read."""
    loop = conn._loop
    last_read = [loop.time()]
    fire = conn._keepalive_timer_callback  # asyncssh's: counts, sends the request, re-arms

    def note_read() -> None:
        last_read[0] = loop.time()

    def check() -> None:
        idle = loop.time() - last_read[0]
        interval = conn._keepalive_interval
        if interval and idle < interval:
            conn._keepalive_timer = loop.call_later(interval - idle, check)
        else:
            fire()

    conn._reset_keepalive_timer = note_read
    conn._keepalive_timer_callback = check


class PacketSender:
    """A connection's ``send_packet``: drops the empty SSH_MSG_IGNORE (module docstring) and, in
    the steady state of an AES-GCM connection (keys exchanged, signed in, no compression, no rekey
    due, the connection's packet logging off), builds and seals the packet itself: asyncssh's ``send_packet``
    copies every packet four times before encrypting it (type byte + payload, padding length +
    payload + padding, header + ciphertext, + tag); here it is joined once and its header and
    sealed body go to the coalescing transport as they are. The same fields, padding rule,
    sequence number and rekey accounting as asyncssh's; anything else goes through asyncssh's."""

    def __init__(self, conn, transport: CoalescingTransport) -> None:
        self._conn = conn
        self._send = conn.send_packet  # asyncssh's
        self._transport = transport
        self.fast = 0  # packets sealed here (tests)
        self.slow = 0  # packets handed to asyncssh

    def __call__(self, pkttype: int, *args: bytes, handler=None) -> None:
        if pkttype == MSG_IGNORE and args == _EMPTY_IGNORE:
            return  # the CBC countermeasure (see the module docstring); other ignore packets go out
        conn = self._conn
        enc = conn._send_encryption
        if (type(enc) is not GCMEncryption or not conn._kex_complete or not conn._auth_complete
                or conn._compressor is not None or conn._transport is not self._transport
                or conn._rekey_bytes_sent >= conn._rekey_bytes
                or (conn._rekey_seconds and time.monotonic() >= conn._rekey_time)
                or conn.log_sent_packet is not _no_packet_log):
            self.slow += 1
            self._send(pkttype, *args, handler=handler)
            return
        size = 1
        for arg in args:
            size += len(arg)
        padlen = -(conn._send_enchdrlen + size) % conn._send_blocksize
        if padlen < 4:
            padlen += conn._send_blocksize
        packet = b"".join((bytes((padlen, pkttype)), *args, os.urandom(padlen)))
        header = len(packet).to_bytes(4, "big")
        cipher = enc._cipher
        sealed = _aead(cipher).encrypt(cipher._iv, packet, header)
        cipher._update_iv()
        self._transport.write(header)
        self._transport.write(sealed)
        seq = conn._send_seq
        conn._send_seq = (seq + 1) & 0xffffffff
        conn._rekey_bytes_sent += len(packet)
        self.fast += 1
        if handler is not None and handler.log_sent_packet is not _no_packet_log:  # a channel not quieted
            handler.log_sent_packet(pkttype, seq, b"".join((bytes((pkttype,)), *args)))


def speed_up(conn) -> CoalescingTransport:
    """Coalesce the writes of an asyncssh connection and the rest of the module docstring: no empty
    SSH_MSG_IGNORE, no per-packet log call, packet-sized reads, one keepalive timer, fewer copies
    per packet sent (call from the owner's connection_made, where asyncssh has set the transport)."""
    transport = conn._transport
    if not isinstance(transport, CoalescingTransport):
        quiet_packet_log(conn)
        conn.data_received = PacketFeed(conn)
        _lazy_keepalive(conn)
        transport = conn._transport = CoalescingTransport(transport, asyncio.get_running_loop())
        conn.send_packet = PacketSender(conn, transport)
    return transport


def writes_of(conn) -> CoalescingTransport | None:
    transport = getattr(conn, "_transport", None)
    return transport if isinstance(transport, CoalescingTransport) else None
