"""python -m jitgate.review --port 8790: the review console on this machine (loopback only).

The local stack also needs the expiry of pending approvals that Cloud Scheduler drives in
production: this process calls functions/expire_approvals (JITGATE_EXPIRE_URL) every
SWEEP_SECONDS, or expires in-process when that URL is not set.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import threading
import time

import httpx
from werkzeug.serving import make_server

from jitgate import approvals as ap
from jitgate import logs
from jitgate.logs import log
from jitgate.review.app import create_app
from jitgate.settings import Settings
from jitgate.slack.messages import refresh_if_configured

logger = logging.getLogger("jitgate.review")
SWEEP_SECONDS = 30


def sweep_forever(backends) -> None:
    while True:
        time.sleep(SWEEP_SECONDS)
        try:
            url = os.environ.get("JITGATE_EXPIRE_URL")
            if url:
                httpx.post(url, timeout=30)
            else:
                for record in ap.expire_due(backends):
                    refresh_if_configured(backends.approvals, record)
        except Exception as exc:  # noqa: BLE001 - keep sweeping
            log(logger, logging.WARNING, "expiry sweep failed", error=str(exc))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jitgate.review", description="jitgate security review console")
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    logs.setup()
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        # Plain HTTP here; a deployment serves it as a function behind HTTPS (infra/review.tf).
        parser.error(f"--host {args.host}: the local console binds to a loopback address only; deploy with infra/ instead")
    app = create_app(Settings.from_env())
    server = make_server(args.host, args.port, app, threaded=True)
    threading.Thread(target=sweep_forever, args=(app.extensions["jitgate_review"].backends,), name="expiry-sweep",
                     daemon=True).start()
    log(logger, logging.INFO, "review console ready", url=f"http://{args.host}:{server.server_port}")
    server.serve_forever()


if __name__ == "__main__":
    main()
