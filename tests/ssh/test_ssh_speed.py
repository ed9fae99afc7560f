"""The SSH relay's speed-ups (broker/ssh/coalesce.py) against the real OpenSSH sshd.

They reach into asyncssh (a connection's ``_transport`` and an instance ``send_packet``): these
tests fail when an asyncssh upgrade stops routing through them, and show that the bytes that
arrive are exactly the bytes sent, whatever the batching.
"""
from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from broker.ssh import listener, upstream
from broker.ssh.coalesce import CoalescingTransport, assert_no_cbc, writes_of
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
