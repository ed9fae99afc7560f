"""The Kubernetes API listener (JITGATE_K8S_LISTEN): HTTPS with the broker's certificate.

kubectl reaches it through a kubeconfig whose cluster server is
``https://<broker>:<port>/targets/<target>`` and whose user sends the caller's OIDC
token as the bearer token (``jitgate kubeconfig --target NAME`` writes one).
"""
from __future__ import annotations

import logging

from aiohttp import web

from broker.k8s.server import K8sGateway
from broker.tls import server_context
from jitgate.logs import log

logger = logging.getLogger("jitgate.broker.k8s")


async def start(ctx) -> dict[str, str] | None:
    address = ctx.settings.listen("k8s")
    if not address:
        return None
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    gateway = K8sGateway(ctx)
    await gateway.start()
    runner = web.AppRunner(gateway.app(), access_log=None, handle_signals=False, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, host, int(port), ssl_context=server_context(ctx.tls_cert, ctx.tls_key))
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]

    async def stop() -> None:
        await gateway.stop()
        await runner.cleanup()

    ctx.stoppers.append(stop)
    log(logger, logging.INFO, "kubernetes listener ready", address=f"{host}:{bound}")
    return {"k8s": f"{host}:{bound}"}
