"""The floor of a Python relay: what any asyncio TLS proxy pays per PostgreSQL transaction here.

A byte relay with none of the broker's work: it answers the client's SSLRequest, terminates
TLS with the broker's certificate and copies bytes both ways to PostgreSQL (the client logs
in to PostgreSQL itself, through it). No framing, classification, recording or masking.
``bench/run.py --floor`` measures it as two more paths beside the broker, on the same event
loop the broker uses (uvloop):

- ``floor-streams``: asyncio streams and one task per direction, as the broker's relay is built;
- ``floor-protocol``: bare ``asyncio.Protocol`` callbacks, the least Python per message.

The broker's CPU per transaction minus the floor's is the broker's own work (what caching,
encoding and fewer awaits can still shrink); the floor minus pgbouncer's is the price of a
Python event loop, which only a relay loop outside Python (C, Rust) removes.

    python bench/floor_relay.py --mode streams|protocol --listen PORT --upstream HOST:PORT --cert C --key K
"""
from __future__ import annotations

import argparse
import asyncio
import ssl
import struct

SSL_REQUEST = struct.pack("!ii", 8, 80877103)
READ_SIZE = 256 * 1024


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


async def serve_streams(listen: int, upstream: tuple[str, int], ctx: ssl.SSLContext) -> None:
    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(READ_SIZE):
                writer.write(chunk)
                if writer.transport.get_write_buffer_size() > 64 * 1024:
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        first = await c_reader.readexactly(8)
        if first != SSL_REQUEST:
            c_writer.close()
            return
        c_writer.write(b"S")
        await c_writer.drain()
        await c_writer.start_tls(ctx)
        u_reader, u_writer = await asyncio.open_connection(*upstream)
        await asyncio.gather(pump(c_reader, u_writer), pump(u_reader, c_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


class _Upstream(asyncio.Protocol):
    def __init__(self, client: "_Client"):
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)

    def connection_lost(self, exc) -> None:
        self.client.transport.close()


class _Client(asyncio.Protocol):
    def __init__(self, upstream: tuple[str, int], ctx: ssl.SSLContext):
        self.upstream, self.ctx = upstream, ctx
        self.transport = None
        self.up = None
        self.early: list[bytes] = []
        self.tls = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.up is not None:
            self.up.write(data)
        elif not self.tls:
            if data[:8] != SSL_REQUEST:
                self.transport.close()
                return
            self.tls = True
            self.transport.write(b"S")
            asyncio.ensure_future(self._start())
        else:
            self.early.append(data)

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport = await loop.start_tls(self.transport, self, self.ctx, server_side=True)
        self.up, _ = await loop.create_connection(lambda: _Upstream(self), *self.upstream)
        for data in self.early:
            self.up.write(data)
        self.early = []

    def connection_lost(self, exc) -> None:
        if self.up is not None:
            self.up.close()


async def serve_protocol(listen: int, upstream: tuple[str, int], ctx: ssl.SSLContext) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(upstream, ctx), "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("streams", "protocol"), required=True)
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="HOST:PORT of PostgreSQL")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    serve = serve_streams if args.mode == "streams" else serve_protocol
    try:
        import uvloop  # the broker's event loop (broker/main.py)
        uvloop.run(serve(args.listen, (host, int(port)), tls_context(args.cert, args.key)))
    except ImportError:
        asyncio.run(serve(args.listen, (host, int(port)), tls_context(args.cert, args.key)))


if __name__ == "__main__":
    main()
