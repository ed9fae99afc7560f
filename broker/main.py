"""The broker process: listeners, the spool uploader, health and metrics, graceful drain."""
from __future__ import annotations

import asyncio
import importlib
import json
import logging
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from broker import metrics, sql_worker
from broker.authz import AuthorizeClient
from broker.pg import codec as pg_codec
from broker.pg.server import PgBroker
from broker.recorder import SpoolUploader
from broker.tls import ensure_dev_certificate, server_context
from jitgate import logs
from jitgate.backends import open_backends
from jitgate.logs import log
from jitgate.masking import rows as masking_rows
from jitgate.policy import PolicyError, PolicyHolder
from jitgate.settings import Settings

logger = logging.getLogger("jitgate.broker")
DRAIN_SECONDS = 25  # default of JITGATE_DRAIN_SECONDS

# Optional listeners beside PostgreSQL. Each module exposes
#   async def start(ctx: BrokerContext) -> dict[str, str] | None
# returning {"name": "host:port"} for the ready file, or None when disabled by its
# JITGATE_<NAME>_LISTEN setting, and may register a stop coroutine in ctx.stoppers.
OPTIONAL_LISTENERS = ("broker.ssh.listener", "broker.agent.listener", "broker.k8s.listener")


@dataclass
class BrokerContext:
    settings: Settings
    backends: object
    policy: PolicyHolder
    authz: AuthorizeClient
    pg: PgBroker  # holds approval_step, masker_factory and live_sessions shared by all protocols
    tls_cert: Path
    tls_key: Path
    stoppers: list = field(default_factory=list)
    # Called when the drain starts: close what is idle at once (agent sessions with no request in flight).
    drain_starters: list = field(default_factory=list)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def serve(settings: Settings, *, ready_file: str | None = None) -> None:
    try:
        policy = PolicyHolder(settings.policy_path, on_error=lambda e: log(logger, logging.ERROR, "policy reload refused", error=str(e)))
    except PolicyError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(2) from None
    try:
        authz = AuthorizeClient(settings.authorize_url, auth=settings.env.get("JITGATE_AUTHORIZE_AUTH", ""))
    except ValueError as exc:
        print(f"jitgate: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    backends = open_backends(settings)
    cert, key = settings.tls_cert, settings.tls_key
    if not cert or not key:
        cert, key = ensure_dev_certificate(settings.home / "tls")
    pg = PgBroker(settings, backends, policy, authz, server_context(cert, key))
    _install_extensions(pg, settings, backends)

    uploader = SpoolUploader(settings, backends, pg.live_sessions)
    await uploader.sweep()  # seal what a previous crash left behind before taking traffic
    sweeper = asyncio.create_task(uploader.run())

    host, port = _split(settings.pg_listen)
    server = await pg.start(host, port)
    pg_port = server.sockets[0].getsockname()[1]

    draining = asyncio.Event()

    def health(ready: bool):
        # /healthz: alive (autohealing recreates a VM whose broker stops answering);
        # /readyz: takes new connections, 503 while draining, so the load balancer's
        # health check sends new sessions elsewhere while live ones finish here.
        def handler(request):
            failing = ready and draining.is_set()
            body = {"ok": not failing, "draining": draining.is_set(), "sessions": len(pg.connections)}
            return web.json_response(body, status=503 if failing else 200)
        return handler

    app = web.Application()
    app.router.add_get("/healthz", health(ready=False))
    app.router.add_get("/readyz", health(ready=True))
    app.router.add_get("/metrics", lambda r: web.Response(body=_metrics(pg), content_type="text/plain", charset="utf-8"))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    mhost, mport = _split(settings.metrics_listen)
    site = web.TCPSite(runner, mhost, mport)
    await site.start()
    metrics_port = site._server.sockets[0].getsockname()[1]

    info = {"pg": f"{host}:{pg_port}", "metrics": f"{mhost}:{metrics_port}"}
    ctx = BrokerContext(settings, backends, policy, authz, pg, Path(cert), Path(key))
    for module_name in OPTIONAL_LISTENERS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # that protocol is not part of this build
            raise
        started = await module.start(ctx)
        if started:
            info.update(started)
    # Masking works either way; without the compiled row core it is several times slower.
    log(logger, logging.INFO if masking_rows.implementation == "compiled" else logging.WARNING,
        f"masking: {masking_rows.core_status()}")
    log(logger, logging.INFO if pg_codec.FRAMING == "compiled" else logging.WARNING,
        "PostgreSQL message framing: " + ("compiled (broker/pg/_framing.c)" if pg_codec.FRAMING == "compiled" else
                                          f"pure-Python reference ({pg_codec.FRAMING_MISSING or 'JITGATE_PG_FRAMING=python'})"))
    log(logger, logging.INFO, "broker ready", **info, backends=backends.name)
    warming = asyncio.ensure_future(sql_worker.pool().warm())  # noqa: F841 - kept alive until the broker exits
    if ready_file:
        with open(ready_file, "w") as fh:
            json.dump(info, fh)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    draining.set()
    drain_seconds = float(settings.env.get("JITGATE_DRAIN_SECONDS") or DRAIN_SECONDS)
    log(logger, logging.INFO, "draining", seconds=drain_seconds, sessions=len(pg.live_sessions))
    # Every protocol's live sessions get the drain period to finish; then the other listeners
    # stop (closing what is left of theirs) and the PostgreSQL relay closes its stragglers.
    # Sessions cut at the deadline are still sealed: their spools are complete up to the cut.
    if pg.server:
        pg.server.close()
    deadline = loop.time() + drain_seconds
    for start_drain in ctx.drain_starters:
        try:
            await start_drain()
        except Exception:  # noqa: BLE001 - the drain goes on; the deadline closes what is left
            logger.exception("closing idle sessions at drain failed")
    while pg.live_sessions and loop.time() < deadline:
        await asyncio.sleep(0.1)
    # At the deadline the listeners stop and the PostgreSQL stragglers close at the same time: a
    # listener's own graceful wait (uvicorn's, for open HTTP streams) must not push psql past it.
    outcomes = await asyncio.gather(*(stop_listener() for stop_listener in ctx.stoppers),
                                    pg.drain(max(0.0, deadline - loop.time())), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            log(logger, logging.ERROR, "stopping a listener failed; the drain goes on",
                error=f"{type(outcome).__name__}: {outcome}")
    sweeper.cancel()
    left = await uploader.settle(max(5.0, deadline + 10 - loop.time()))  # sealed within the shared deadline
    if left:
        log(logger, logging.WARNING, "sessions not yet sealed at exit; sealed after the next start", sessions=left)
    await runner.cleanup()
    await authz.close()
    backends.close()
    log(logger, logging.INFO, "broker stopped")


def _install_extensions(pg: PgBroker, settings: Settings, backends) -> None:
    """Approvals and masking plug into the pipeline when their packages are present."""
    try:
        from broker.approvals import install as install_approvals
    except ImportError:
        pass
    else:
        install_approvals(pg, settings, backends)
    try:
        from broker.masking import install as install_masking
    except ImportError:
        pass
    else:
        install_masking(pg, settings, backends)


def _metrics(pg: PgBroker) -> bytes:
    metrics.AUTHORIZE_CALLS.set(pg.authz.calls)
    return metrics.render()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="jitgate broker", description="Run the jitgate broker.")
    parser.add_argument("--ready-file", help="write the bound addresses here as JSON once listening")
    args = parser.parse_args(argv)
    logs.setup()
    try:  # uvloop's event loop costs a quarter less CPU per statement (bench/README.md)
        import uvloop
    except ImportError:
        runner = asyncio.Runner()
    else:
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    with runner:
        runner.run(serve(Settings.from_env(), ready_file=args.ready_file))


if __name__ == "__main__":
    main()
