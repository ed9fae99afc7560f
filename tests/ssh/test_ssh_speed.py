"""The SSH relay's speed-ups (broker/ssh/coalesce.py, broker/ssh/digest.py) against the real OpenSSH sshd.

They reach into asyncssh (a connection's ``_transport``, an instance ``send_packet``, and the
receive state PacketFeed reads: ``_recv_handler``, ``_recv_pkthdr``, ``_recv_packet``, ``_pktlen``,
``_recv_macsize``, ``_recv_blocksize``, ``_inpbuf``): these tests fail when an asyncssh upgrade
stops routing through them, and show that the bytes that arrive are exactly the bytes sent,
whatever the batching.
"""
from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from broker.ssh import listener, upstream
from broker.ssh import digest
from broker.ssh.coalesce import CoalescingTransport, PacketFeed, assert_no_cbc, writes_of
from broker.ssh.digest import StreamDigest
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
            return writes, packets, chan.get_exit_status(), b"".join(_received)
        finally:
            conn.close()

    _received.clear()
    writes, packets, status, output = asyncio.run(main())
    assert status == 0
    assert output.split()[0].decode() == hashlib.sha256(payload).hexdigest()  # every byte, in order
    data_packets = -(-len(payload) // 1000)
    # with asyncssh's empty SSH_MSG_IGNORE before each packet this would be over twice the data packets
    assert data_packets <= packets < data_packets * 1.2, packets
    assert writes.flushes < writes.writes / 4, (writes.flushes, writes.writes)


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


def test_packet_feed_hands_asyncssh_one_packet_at_a_time_and_every_byte_in_order(sshd):
    payload = os.urandom(6 * 1024 * 1024 + 5)

    async def main():
        conn = await upstream.connect("vm-test", _target(sshd), sshd.client_key.read_bytes())
        try:
            feed = conn._transport.get_protocol()  # noqa: SLF001 - the socket's protocol is the feed
            assert isinstance(feed, PacketFeed)
            pieces: list[int] = []
            deliver = conn.data_received

            def counted(data, datatype=None):
                pieces.append(len(data))
                deliver(data, datatype)

            conn.data_received = counted  # the feed calls the connection's data_received per piece
            seq_before = conn._recv_seq  # noqa: SLF001
            chan, _ = await conn.create_session(asyncssh_session_factory, "cat", encoding=None)
            chan.write(payload)
            chan.write_eof()
            await chan.wait_closed()
            return pieces, conn._recv_seq - seq_before  # noqa: SLF001

        finally:
            conn.close()

    _received.clear()
    pieces, packets = asyncio.run(main())
    assert b"".join(_received) == payload  # every byte, in order
    # sshd sends 32 KiB data packets and the socket reads up to 256 KiB: without the feed asyncssh
    # would get a few hundred large reads, fewer calls than packets
    assert len(pieces) >= packets > len(payload) // (64 * 1024), (len(pieces), packets)
    assert max(pieces) <= upstream.MAX_PKTSIZE + 1024, max(pieces)


def test_stream_digest_is_exact_and_ordered_across_the_hashing_thread():
    rng = __import__("random").Random(18)
    chunks = [os.urandom(rng.choice([1, 100, 2047, 2048, 32 * 1024, 300 * 1024])) for _ in range(400)]
    stream = StreamDigest()
    for chunk in chunks:
        stream.update(chunk)
        assert stream._queued_bytes <= digest.MAX_QUEUED  # noqa: SLF001 - memory held for the thread is bounded
    assert stream.batches > 10  # most of it was hashed in the thread
    assert stream.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()
    # reading the digest does not end the stream (as with hashlib)
    stream.update(b"more")
    assert stream.hexdigest() == hashlib.sha256(b"".join(chunks) + b"more").hexdigest()


def test_stream_digest_hashes_a_mutable_buffer_as_it_was_when_given():
    buffer = bytearray(os.urandom(digest.BATCH))
    original = bytes(buffer)
    stream = StreamDigest()
    stream.update(buffer)
    stream.update(memoryview(buffer)[:10])
    buffer[:] = b"\0" * len(buffer)  # changed before the thread may have read it
    assert stream.hexdigest() == hashlib.sha256(original + original[:10]).hexdigest()


def test_short_streams_never_wait_for_the_thread():
    stream = StreamDigest()
    for _ in range(100):
        stream.update(b"k")  # a terminal's keystroke echo
    assert stream.batches == 0
    assert stream.hexdigest() == hashlib.sha256(b"k" * 100).hexdigest()
