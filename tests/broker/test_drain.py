"""SIGTERM drains: no new sessions, live ones finish their work, then the broker exits and seals them."""
from __future__ import annotations

import signal
import time

import httpx
import psycopg

from jitgate.devstack import start_broker
from tests.conftest import wait_sealed


def test_sigterm_lets_live_sessions_finish_then_exits(stack, broker_dsn):
    env = dict(stack.env, JITGATE_PG_LISTEN="127.0.0.1:0", JITGATE_SSH_LISTEN="", JITGATE_HTTP_LISTEN="",
               JITGATE_K8S_LISTEN="")
    proc, info = start_broker(stack.home, env, stack.home / "logs", name="broker-drain")
    port = int(info["pg"].rpartition(":")[2])
    dsn = broker_dsn().replace(f"port={stack.broker_port}", f"port={port}")
    readyz, healthz = f"http://{info['metrics']}/readyz", f"http://{info['metrics']}/healthz"
    try:
        assert httpx.get(readyz, timeout=10).status_code == 200
        with psycopg.connect(dsn) as conn:
            session_id = conn.info.parameter_status("jitgate_session_id")
            proc.popen.send_signal(signal.SIGTERM)
            # The load balancer's health check must see the drain (infra/broker.tf, broker_lb: /readyz);
            # autohealing's (/healthz) must not, or it would recreate the VM under its live sessions.
            deadline = time.monotonic() + 15
            ready = httpx.get(readyz, timeout=10)
            while ready.status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.1)
                ready = httpx.get(readyz, timeout=10)
            assert ready.status_code == 503 and ready.json()["draining"] is True
            assert httpx.get(healthz, timeout=10).status_code == 200
            deadline = time.monotonic() + 15
            refused = False
            while not refused and time.monotonic() < deadline:  # draining: the listener closes
                try:
                    psycopg.connect(dsn).close()
                    time.sleep(0.1)
                except psycopg.OperationalError:
                    refused = True
            assert refused, "the broker kept accepting new sessions after SIGTERM"
            assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] >= 5  # the live session still works
        assert proc.popen.wait(20) == 0  # the last session ended: the broker exits well before the deadline
    finally:
        proc.stop()
    wait_sealed(stack, session_id)
