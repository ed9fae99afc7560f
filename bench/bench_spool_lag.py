#!/usr/bin/env python3
"""How many seconds of a busy session a lost broker VM can cost: the time events wait on the
broker's disk before they are in the recordings store.

    python bench/bench_spool_lag.py                      # 60 s busy psql session, defaults (1 MiB, 5 s)
    python bench/bench_spool_lag.py --duration 30 --rate 0   # as fast as the client can go
    python bench/bench_spool_lag.py --backends gcp       # through fake-gcs-server (the GCP set)

One psycopg session (TLS, OIDC token) through the local stack's broker sends statements
(`SELECT i, repeat('x', 200)`) at --rate per second (0: back to back) for --duration seconds.
A watcher lists the session's stored chunks every 20 ms; for every event in a chunk,
lag = (when the chunk was first seen in the store) - (the event's timestamp). The largest lag
is what a VM loss at the worst moment would have cost; the configured bound is
JITGATE_SPOOL_UPLOAD_SECONDS plus one upload. Writes bench/results/<date>-spool-lag.{md,json}.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402

from jitgate.backends import open_backends  # noqa: E402
from jitgate.devstack import dev_token, start_stack  # noqa: E402
from jitgate.settings import Settings  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--rate", type=float, default=200, help="statements per second (0: back to back)")
    parser.add_argument("--interval", type=float, default=5, help="JITGATE_SPOOL_UPLOAD_SECONDS")
    parser.add_argument("--chunk-bytes", type=int, default=1024 * 1024, help="JITGATE_SPOOL_CHUNK_BYTES")
    parser.add_argument("--backends", choices=("embedded", "gcp"), default="embedded")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="jitgate-bench-lag-"))
    extra = {"JITGATE_SPOOL_UPLOAD_SECONDS": str(args.interval), "JITGATE_SPOOL_CHUNK_BYTES": str(args.chunk_bytes)}
    stack = start_stack(home, extra_env=extra, backends=args.backends)
    try:
        backends = open_backends(Settings.from_env(stack.env))
        token = dev_token(stack.issuer.issuer, "alice@example.com", ["sre"])
        dsn = (f"host=127.0.0.1 port={stack.broker_port} dbname=demo user=alice@example.com "
               f"password={token} sslmode=require")
        seen: dict[int, float] = {}  # chunk index -> first seen
        lags: list[float] = []
        stop = threading.Event()
        statements = 0
        with psycopg.connect(dsn, autocommit=True) as conn:
            session_id = conn.info.parameter_status("jitgate_session_id")

            def watch() -> None:
                while not stop.is_set():
                    now = time.time()
                    for index in backends.recordings.list_chunks(session_id):
                        if index in seen:
                            continue
                        seen[index] = now
                        for line in backends.recordings.get_chunk(session_id, index).splitlines():
                            lags.append(now - json.loads(line)["ts"])
                    stop.wait(0.02)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            start = time.monotonic()
            while time.monotonic() - start < args.duration:
                conn.execute(f"SELECT {statements}, repeat('x', 200)").fetchall()
                statements += 1
                if args.rate:
                    time.sleep(max(0.0, start + statements / args.rate - time.monotonic()))
            elapsed = time.monotonic() - start
            time.sleep(args.interval + 2)  # the last events' timed upload, while the session is still open
            stop.set()
            watcher.join(5)
        spool_bytes = sum(len(backends.recordings.get_chunk(session_id, i)) for i in seen) if seen else 0
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)

    result = {
        "date": datetime.date.today().isoformat(), "backends": args.backends, "duration_s": round(elapsed, 1),
        "statements": statements, "statements_per_s": round(statements / elapsed, 1),
        "upload_interval_s": args.interval, "chunk_bytes": args.chunk_bytes, "chunks": len(seen),
        "chunk_bytes_uploaded": spool_bytes, "events": len(lags),
        "lag_p50_s": round(pct(lags, 50), 3), "lag_p99_s": round(pct(lags, 99), 3), "lag_max_s": round(max(lags), 3),
    }
    table = (f"| backends | statements/s | chunks | events | lag p50 | lag p99 | lag max (worst loss) | bound |\n"
             f"|---|---|---|---|---|---|---|---|\n"
             f"| {args.backends} | {result['statements_per_s']} | {len(seen)} | {len(lags)} | {result['lag_p50_s']} s | "
             f"{result['lag_p99_s']} s | {result['lag_max_s']} s | {args.interval} s + one upload |\n")
    print(table)
    if not args.no_write:
        suffix = "" if args.backends == "embedded" else f"-{args.backends}"  # one file per backend set
        out = REPO / "bench" / "results" / f"{result['date']}-spool-lag{suffix}"
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(
            f"# Spool lag: seconds of a busy session a lost VM can cost ({result['date']})\n\n"
            f"`python bench/bench_spool_lag.py --duration {args.duration:g} --rate {args.rate:g} "
            f"--backends {args.backends}`: one psql session through the broker, `SELECT i, repeat('x', 200)` "
            f"for {result['duration_s']} s; lag = when a chunk was first seen in the store minus the "
            f"timestamp of each event in it (watched every 20 ms).\n\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
