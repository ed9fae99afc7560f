"""The agent listener: one HTTPS port serving the HTTP API (/v1, /openapi.json) and MCP (/mcp).

One ASGI app (Starlette; the MCP SDK's streamable HTTP transport is Starlette
too) runs under uvicorn inside the broker's event loop, with the broker's TLS
certificate. Signals stay the broker's: uvicorn's own handlers are switched off
and the broker stops the server through ``ctx.stoppers`` during its drain.

Authentication for /mcp happens here, before the SDK sees a request: no bearer
token, or one functions/authorize refuses, gets a 401 problem+json. The /v1
routes authenticate per call in ``AgentService``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import uvicorn
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request

from broker.agent import http
from broker.agent.mcp import build_mcp
from broker.agent.service import AgentService, Problem
from jitgate.logs import log

logger = logging.getLogger("jitgate.broker.agent")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # the broker owns SIGTERM/SIGINT and stops us via ctx.stoppers
        yield


class McpGate:
    """ASGI middleware: bearer-token check for /mcp, and closing recorded sessions when an MCP session ends."""

    def __init__(self, app, service: AgentService):
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not (scope["path"] == "/mcp" or scope["path"].startswith("/mcp/")):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            await self.service.authenticate(http.bearer(headers))
        except Problem as p:
            return await http.problem_response(p)(scope, receive, send)
        await self.app(scope, receive, send)
        if scope["method"] == "DELETE" and headers.get("mcp-session-id"):
            await self.service.end_conversation("mcp:" + headers["mcp-session-id"])


def build_app(service: AgentService, public_url: str) -> tuple[Starlette, object]:
    mcp_server = build_mcp(service)
    # DNS-rebinding protection guards cookie-less local servers from browsers; here every request needs a
    # bearer token a browser page cannot attach, and the broker serves real host names, so it is off.
    mcp_app = mcp_server.streamable_http_app(
        streamable_http_path="/mcp",
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )

    async def not_found(request: Request, exc: HTTPException):
        if exc.status_code == 405:
            return http.problem_response(Problem(405, "method_not_allowed", "Method not allowed", exc.detail,
                                                 "See GET /openapi.json for the methods each path takes."))
        return http.problem_response(Problem(exc.status_code, "not_found" if exc.status_code == 404 else "http_error",
                                             "Not found" if exc.status_code == 404 else "HTTP error", str(exc.detail),
                                             "See GET /openapi.json for the API, or use /mcp for MCP."))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async with mcp_server.session_manager.run():
            yield

    app = Starlette(
        routes=http.routes(service, http.openapi_document(public_url)) + list(mcp_app.routes),
        exception_handlers={HTTPException: not_found},
        lifespan=lifespan,
    )
    return app, mcp_server


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def start(ctx) -> dict[str, str] | None:
    address = ctx.settings.listen("http")
    if not address:
        return None
    host, port = _split(address)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    service = AgentService(ctx)
    app, _ = build_app(service, f"https://{shown}:{port}")
    config = uvicorn.Config(
        McpGate(app, service), ssl_certfile=str(ctx.tls_cert), ssl_keyfile=str(ctx.tls_key), log_config=None,
        access_log=False, lifespan="on", timeout_graceful_shutdown=10, server_header=False,
    )
    server = _Server(config)
    service.start()
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    for _ in range(300):
        if server.started or task.done():
            break
        await asyncio.sleep(0.02)
    if task.done():
        task.result()  # raise what went wrong
        raise RuntimeError("the agent listener stopped during startup")

    async def stop() -> None:
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), 15)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - shutting down regardless
            server.force_exit = True
            task.cancel()
        await service.stop()

    ctx.stoppers.append(stop)
    ctx.drain_starters.append(service.close_idle)
    log(logger, logging.INFO, "agent listener ready", address=f"{shown}:{port}", mcp=f"https://{shown}:{port}/mcp")
    return {"http": f"{shown}:{port}"}
