"""The SSH relay's speed-ups (broker/ssh/coalesce.py) against the real OpenSSH sshd.

They reach into asyncssh (a connection's ``_transport``, instance ``send_packet``,
``data_received``, ``_reset_keepalive_timer`` and ``_keepalive_timer_callback``, the receive state
PacketFeed reads, the GCM shim's classes): these tests fail when an asyncssh upgrade stops routing
through them, and show that the bytes that arrive are exactly the bytes sent, whatever the batching.
"""
from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from broker.ssh import listener, upstream
from broker.ssh.coalesce import CoalescingTransport, PacketFeed, assert_no_cbc, writes_of
from broker.ssh.server import UpstreamSide
from jitgate.policy import Target


def _target(sshd) -> Target:
    return Target(kind="ssh", address=f"127.0.0.1:{sshd.port}", username="jitgate-ssh",
                  credential=f"file:{sshd.client_key}", host_key=sshd.host_key_line, allow={"groups": ["sre"]})


def test_relay_leg_to_sshd_is_gcm_coalesced_and_sends_no_empty_ignore(sshd):
    payload = os.urandom(3 * 1024 * 1024 + 17)

    async def main():
        conn = await upstream.connect("vm-test", _target(sshd), sshd.client_key.read_bytes())
        try:
            writes = writes_of(conn)
            assert isinstance(writes, CoalescingTransport)
            assert conn.get_extra_info("send_cipher") == "aes128-gcm@openssh.com"
            seq_before = conn._send_seq  # noqa: SLF001 - the packet counter shows whether ignores went out
            chan, _ = await conn.create_session(asyncssh_session_factory, "sha256sum", encoding=None)
            for i in range(0, len(payload), 1000):  # 3,146 small writes, each its own SSH packet
                chan.write(payload[i:i + 1000])
            chan.write_eof()
            await chan.wait_closed()
            packets = conn._send_seq - seq_before  # noqa: SLF001
            return writes, packets, conn.send_packet.fast, chan.get_exit_status(), b"".join(_received)
        finally:
            conn.close()

    _received.clear()
    writes, packets, sealed_here, status, output = asyncio.run(main())
    assert status == 0
    assert output.split()[0].decode() == hashlib.sha256(payload).hexdigest()  # every byte, in order
    data_packets = -(-len(payload) // 1000)
    # with asyncssh's empty SSH_MSG_IGNORE before each packet this would be over twice the data packets
    assert data_packets <= packets < data_packets * 1.2, packets
    assert writes.flushes < writes.writes / 4, (writes.flushes, writes.writes)
    assert sealed_here >= data_packets  # sealed by PacketSender after one join, not by asyncssh


_received: list[bytes] = []


def asyncssh_session_factory():
    import asyncssh

    class Collect(asyncssh.SSHClientSession):
        def data_received(self, data, datatype):
            _received.append(data)

    return Collect()


def test_coalescing_transport_delivers_everything_before_close_and_abort():
    async def main(end: str) -> bytes:
        got = bytearray()
        done = asyncio.get_running_loop().create_future()

        class Sink(asyncio.Protocol):
            def data_received(self, data):
                got.extend(data)

            def connection_lost(self, exc):
                done.set_result(None)

        server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, "127.0.0.1", port)
        wrapped = CoalescingTransport(transport, asyncio.get_running_loop())
        for i in range(100):
            wrapped.write(b"%04d" % i)
        assert wrapped.get_write_buffer_size() >= 400  # the pending bytes count as buffered
        getattr(wrapped, end)()  # close() or abort() in the same turn as the writes
        await asyncio.wait_for(done, 10)
        server.close()
        return bytes(got)

    expected = b"".join(b"%04d" % i for i in range(100))
    assert asyncio.run(main("close")) == expected
    assert asyncio.run(main("abort")) == expected


def test_no_cbc_cipher_on_either_leg():
    assert not [c for c in listener.CIPHERS + upstream.CIPHERS if "cbc" in c]
    assert listener.CIPHERS[0].startswith("aes128-gcm") and upstream.CIPHERS[0].startswith("aes128-gcm")
    with pytest.raises(ValueError, match="CBC"):
        assert_no_cbc(["aes128-gcm@openssh.com", "aes256-cbc"])


def _gcm_pair(name: str = "aes128-gcm@openssh.com"):
    """Two send/receive encryption pairs with the same key and IV: asyncssh's shim, and fast_gcm's."""
    from asyncssh.encryption import get_encryption_params, get_encryption

    key_size, iv_size, _, _, _, _ = get_encryption_params(name.encode())
    key, iv = os.urandom(key_size), os.urandom(iv_size)
    return [get_encryption(name.encode(), key, iv) for _ in range(4)]


def test_fast_gcm_is_asyncssh_gcm_byte_for_byte():
    from asyncssh.packet import UInt32

    from broker.ssh.coalesce import _asyncssh_gcm

    for name in ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com"):
        mine_send, theirs_send, mine_recv, theirs_recv = _gcm_pair(name)
        aead = None
        for seq, size in enumerate((16, 32, 1000, 32 * 1024 + 16, 256 * 1024)):
            packet = os.urandom(size)
            header = UInt32(size)
            mine = mine_send.encrypt_packet(seq, header, packet)
            theirs = _asyncssh_gcm["encrypt"](theirs_send._cipher, header, packet)  # asyncssh's own code
            assert (bytes(mine[0]), mine[1]) == theirs
            wire = mine[0] + mine[1]
            first, rest, mac = wire[:16], wire[16:-16], wire[-16:]
            assert mine_recv.decrypt_packet(seq, first, rest, 4, mac) == packet
            assert _asyncssh_gcm["decrypt"](theirs_recv, seq, first, rest, 4, mac) == packet
            aead = aead or mine_send._cipher._aead
        assert mine_send._cipher._aead is aead  # one AESGCM per key, not one per packet
        # a forged packet fails as asyncssh's does (None), and the IV still moves on in step
        wire = bytearray(mine_send.encrypt_packet(9, UInt32(32), bytes(32))[0] + bytes(16))
        assert mine_recv.decrypt_packet(9, bytes(wire[:16]), bytes(wire[16:-16]), 4, bytes(wire[-16:])) is None
        assert mine_recv._cipher._iv == mine_send._cipher._iv


class _RelayStub:
    """What UpstreamSide (the relay's VM-side channel session) calls on its RelayChannel."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.exit_status = None
        self.finished = False
        self.chan = self.gc = self.conn = self

    def from_upstream(self, data: bytes, datatype) -> None:
        self.received.append(data)

    def write_eof(self) -> None:
        pass

    def create_task(self, coro):
        return asyncio.get_running_loop().create_task(coro)

    async def upstream_closed(self, exc) -> None:
        pass


def test_relay_legs_make_no_per_packet_log_call(sshd, monkeypatch):
    """Neither the VM connection nor the relay's channel on it (UpstreamSide) formats a log line per
    packet while asyncssh's packet logging is off; with it on, they log every packet again."""
    import asyncssh
    from asyncssh.logging import logger as asyncssh_logger
    from asyncssh.logging import SSHLogger
    from asyncssh.packet import SSHPacketLogger

    calls = []
    original = SSHPacketLogger._log_packet
    monkeypatch.setattr(SSHPacketLogger, "_log_packet", lambda self, *a: (calls.append(a[1]), original(self, *a)))
    payload = os.urandom(1024 * 1024)

    async def transfer() -> int:
        conn = await upstream.connect("vm-test", _target(sshd), sshd.client_key.read_bytes())
        try:
            seq_before = conn._send_seq  # noqa: SLF001
            relay = _RelayStub()
            chan, _ = await conn.create_session(lambda: UpstreamSide(relay), "sha256sum", encoding=None)
            for i in range(0, len(payload), 1000):
                chan.write(payload[i:i + 1000])
            chan.write_eof()
            await chan.wait_closed()
            assert relay.exit_status == 0
            assert b"".join(relay.received).split()[0].decode() == hashlib.sha256(payload).hexdigest()
            return conn._send_seq - seq_before  # noqa: SLF001
        finally:
            conn.close()

    packets = asyncio.run(transfer())
    assert packets > 1000
    assert len(calls) < 40, len(calls)  # the handshake's own handlers (kex, auth) only
    level = SSHLogger._debug_level
    asyncssh.set_debug_level(3)  # packet logging on: then every packet is logged again
    try:
        calls.clear()
        packets = asyncio.run(transfer())
        assert len(calls) > packets  # each packet sent, and those received
    finally:
        asyncssh_logger.set_debug_level(level)


def test_packet_feed_hands_asyncssh_one_packet_at_a_time_and_every_byte_in_order(sshd):
    payload = os.urandom(6 * 1024 * 1024 + 5)

    async def main():
        conn = await upstream.connect("vm-test", _target(sshd), sshd.client_key.read_bytes())
        try:
            feed = conn.data_received  # what the socket's transport calls
            assert isinstance(feed, PacketFeed)
            pieces_before, seq_before = feed.pieces, conn._recv_seq  # noqa: SLF001
            chan, _ = await conn.create_session(asyncssh_session_factory, "cat", encoding=None)
            chan.write(payload)
            chan.write_eof()
            await chan.wait_closed()
            return feed.pieces - pieces_before, conn._recv_seq - seq_before, len(conn._inpbuf)  # noqa: SLF001
        finally:
            conn.close()

    _received.clear()
    pieces, packets, left = asyncio.run(main())
    assert b"".join(_received) == payload  # every byte, in order
    # sshd sends data packets of up to 32 KiB and a socket read holds up to 256 KiB: without the
    # feed asyncssh would get fewer calls than packets, each read held whole in its buffer
    assert pieces >= packets > len(payload) // (64 * 1024), (pieces, packets)
    assert left < 64 * 1024


def test_keepalive_is_one_timer_that_still_fires_after_an_idle_interval(sshd):
    payload = os.urandom(2 * 1024 * 1024)

    async def main():
        conn = await upstream.connect("vm-test", _target(sshd), sshd.client_key.read_bytes())
        requests = []
        send_request = conn._make_keepalive_request  # noqa: SLF001

        def counted():
            requests.append(asyncio.get_running_loop().time())
            return send_request()

        conn._make_keepalive_request = counted  # noqa: SLF001
        try:
            timer = conn._keepalive_timer  # noqa: SLF001
            chan, _ = await conn.create_session(asyncssh_session_factory, "cat", encoding=None)
            chan.write(payload)
            chan.write_eof()
            await chan.wait_closed()
            assert conn._keepalive_timer is timer  # hundreds of reads, not one new timer  # noqa: SLF001
            # a read just now: the timer re-arms for the rest of the interval, nothing is sent
            conn._keepalive_interval = 0.5  # noqa: SLF001
            conn._reset_keepalive_timer()  # noqa: SLF001
            conn._keepalive_timer_callback()  # noqa: SLF001
            assert requests == [] and conn._keepalive_timer is not timer  # noqa: SLF001
            # idle: the request goes out one interval after the last read, and sshd answers it
            deadline = asyncio.get_running_loop().time() + 20
            while not requests and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            return len(requests), conn._keepalive_count, conn.is_closed()  # noqa: SLF001
        finally:
            conn.close()

    _received.clear()
    sent, unanswered, closed = asyncio.run(main())
    assert b"".join(_received) == payload
    assert sent >= 1 and unanswered <= 1 and not closed


@pytest.mark.parametrize("cipher, rekey_bytes", [
    ("aes128-gcm@openssh.com", 200 * 1024),  # keys renewed every 200 KiB: the fast path steps aside each time
    ("chacha20-poly1305@openssh.com", None),  # not GCM: asyncssh seals every packet
    ("aes256-ctr", None),
])
def test_packets_sealed_by_asyncssh_where_the_fast_path_does_not_apply(sshd, cipher, rekey_bytes):
    import asyncssh

    payload = os.urandom(2 * 1024 * 1024 + 3)

    async def main():
        conn = await asyncssh.connect(
            "127.0.0.1", sshd.port, username="jitgate-ssh", client_keys=[str(sshd.client_key)], known_hosts=None,
            encryption_algs=[cipher], client_factory=upstream._RelayClient, config=[], agent_path=None,
            rekey_bytes=rekey_bytes or "1G")
        try:
            chan, _ = await conn.create_session(asyncssh_session_factory, "sha256sum", encoding=None)
            for i in range(0, len(payload), 16 * 1024):
                chan.write(payload[i:i + 16 * 1024])
            chan.write_eof()
            await chan.wait_closed()
            return conn.send_packet, chan.get_exit_status(), b"".join(_received)
        finally:
            conn.close()

    _received.clear()
    sender, status, output = asyncio.run(main())
    assert status == 0
    assert output.split()[0].decode() == hashlib.sha256(payload).hexdigest()
    data_packets = len(payload) // (16 * 1024)
    if rekey_bytes:
        assert sender.fast >= data_packets * 0.8 and sender.slow > 5, (sender.fast, sender.slow)
    else:
        assert sender.fast == 0 and sender.slow >= data_packets, (sender.fast, sender.slow)


def test_packet_feed_leaves_a_small_read_whole(sshd):
    """A keystroke's packet is not cut in two asyncssh calls (header block, then the rest)."""

    async def main():
        conn = await upstream.connect("vm-test", _target(sshd), sshd.client_key.read_bytes())
        try:
            chan, _ = await conn.create_session(asyncssh_session_factory, "cat", encoding=None)
            await asyncio.sleep(0.2)
            feed = conn.data_received
            pieces_before, seq_before = feed.pieces, conn._recv_seq  # noqa: SLF001
            for i in range(50):
                chan.write(b"k")
                deadline = asyncio.get_running_loop().time() + 10
                while len(b"".join(_received)) <= i and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.002)
            pieces, packets = feed.pieces - pieces_before, conn._recv_seq - seq_before  # noqa: SLF001
            chan.write_eof()
            await chan.wait_closed()
            return pieces, packets
        finally:
            conn.close()

    _received.clear()
    pieces, packets = asyncio.run(main())
    assert b"".join(_received) == b"k" * 50
    assert packets >= 50 and pieces <= packets, (pieces, packets)  # cut per packet it would be 2 per packet
