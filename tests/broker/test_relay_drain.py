"""The relay skips ``await writer.drain()`` unless it would wait or raise (broker.pg.server.must_drain).

That reads asyncio internals (the protocol's paused flag, the reader's exception), so these
tests check, on real loopback connections and on both event loops the broker can run, that
they still mean what the relay takes them to mean: a peer that stops reading makes
``must_drain`` true (backpressure holds), a closed or failed stream too.
"""
from __future__ import annotations

import asyncio
import contextlib

import pytest

from broker.pg.server import must_drain

LOOPS = ["asyncio"]
try:
    import uvloop

    LOOPS.append("uvloop")
except ImportError:  # the broker falls back to asyncio's loop too
    uvloop = None


def _run(loop_name: str, coro):
    if loop_name == "uvloop":
        return uvloop.run(coro)
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def _stalled_connection():
    """(reader, writer) of a client stream whose server accepts and never reads; closed after."""
    accepted = asyncio.Event()
    held = []

    async def handle(reader, writer):
        held.append(writer)
        accepted.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await asyncio.wait_for(accepted.wait(), 10)
        yield reader, writer
    finally:
        writer.close()
        for w in held:
            w.close()
        server.close()


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_peer_that_stops_reading_makes_the_relay_drain(loop_name):
    async def main():
        async with _stalled_connection() as (reader, writer):
            assert not must_drain(writer)  # nothing written: drain would return at once
            chunk = b"x" * (256 * 1024)
            for _ in range(4096):  # at most 1 GiB; the socket buffers fill long before
                writer.write(chunk)
                await asyncio.sleep(0.01)  # the loop sends what the kernel takes
                if must_drain(writer) and writer.transport.get_write_buffer_size() > 4 * len(chunk):
                    break
            assert must_drain(writer), "the transport never paused: backpressure would be lost"
            assert writer.transport.get_write_buffer_size() > 0
            # And drain really waits while the peer does not read.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(writer.drain(), 0.2)

    _run(loop_name, main())


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_closed_or_failed_stream_is_drained_so_its_error_surfaces(loop_name):
    async def main():
        async with _stalled_connection() as (reader, writer):
            reader.set_exception(ConnectionResetError("peer reset"))
            assert must_drain(writer)
            with pytest.raises(ConnectionResetError):
                await writer.drain()
        async with _stalled_connection() as (reader, writer):
            writer.close()
            assert must_drain(writer)

    _run(loop_name, main())
