#!/usr/bin/env python3
"""Approvals at scale (issue 15): history size and idle held statements.

    python bench/bench_approval_scale.py                 # both parts, both figures
    python bench/bench_approval_scale.py --part lookup   # Firestore emulator only
    python bench/bench_approval_scale.py --part idle --held 50 --seconds 30

lookup: on the Firestore emulator, the broker's lookups for a NEW risky statement (is there a
        grant covering it? a pending request to join?) with 30 and with 3,000 past approvals
        of the same person on the same target. "indexed" is find_approvals (match_key +
        created_at index), what the broker runs now; "scan" is the query shape it used before
        (the target's history filtered by status in Python). Median of --repeat runs.
idle:   the embedded local stack, --held psql sessions each holding one DDL for approval;
        after they are all held, the broker's CPU seconds per wall second over --seconds
        (from /proc/<pid>/stat), and how many times it re-read held requests meanwhile.
Writes bench/results/<date>-approval-scale.json. Everything on 127.0.0.1.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jitgate import approvals as ap  # noqa: E402
from jitgate.policy import ApprovalConfig  # noqa: E402


def _history(store, n: int, target: str, requester: str) -> None:
    config = ApprovalConfig(approver_groups=["dba"])
    for i in range(n):
        record = ap.new_request(requester=requester, requester_groups={"sre"}, target=target, session_id=f"s{i}",
                                statement=f"ALTER TABLE t ADD COLUMN c{i} int", classes={"ddl"}, config=config,
                                now=time.time() - 86400 + i)
        record["status"] = ap.CONSUMED if i % 2 else ap.APPROVED
        store.create_approval(record)


def lookup_part(repeat: int) -> dict:
    from jitgate.backends.gcp import FirestoreState
    from jitgate.backends.gcp.emulators import Emulators

    emulators = Emulators(Path(tempfile.mkdtemp(prefix="jitgate-bench-scale-"))).start()
    try:
        os.environ.update(emulators.env("jitgate-bench"))
        out = {}
        for n in (30, 3000):
            store = FirestoreState("jitgate-bench")
            target, requester = f"t{n}-{uuid.uuid4().hex[:6]}", "alice@example.com"
            _history(store, n, target, requester)
            sha = ap.statement_sha256(f"DROP TABLE new_{n}")
            indexed, scan = [], []
            for _ in range(repeat):
                t0 = time.perf_counter()
                store.find_approvals(target=target, requester=requester, sha256=sha, session_id="new-session")
                indexed.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                # The old shape: the target's whole history, filtered in Python (approved, then pending).
                for wanted in (ap.APPROVED, ap.PENDING):
                    [r for r in store.approvals.where("target", "==", target).order_by("created_at").stream()
                     if (r.to_dict() or {}).get("status") == wanted]
                scan.append(time.perf_counter() - t0)
            out[str(n)] = {"indexed_ms": round(statistics.median(indexed) * 1000, 1),
                           "scan_ms": round(statistics.median(scan) * 1000, 1)}
            print(f"{n:5d} past approvals: indexed lookup {out[str(n)]['indexed_ms']} ms, "
                  f"history scan {out[str(n)]['scan_ms']} ms (median of {repeat})")
        return out
    finally:
        emulators.stop()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_part(held: int, seconds: float) -> dict:
    from jitgate.backends import open_backends
    from jitgate.devstack import dev_token, start_stack
    from jitgate.settings import Settings

    stack = start_stack(Path(tempfile.mkdtemp(prefix="jitgate-bench-idle-")))
    clients = []
    try:
        backends = open_backends(Settings.from_env(stack.env))
        broker = next(p for p in stack.procs if p.name == "broker")
        token = dev_token(stack.issuer.issuer, "alice@example.com", ["sre"])
        env = {**os.environ, "PGPASSWORD": token}
        for i in range(held):
            clients.append(subprocess.Popen(
                ["psql", "-X", f"host=127.0.0.1 port={stack.broker_port} dbname=demo user=alice@example.com sslmode=require",
                 "-c", f"ALTER TABLE orders ADD COLUMN idle_{i}_{uuid.uuid4().hex[:6]} int"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + 120
        pending = 0
        while time.monotonic() < deadline:
            pending = len(backends.approvals.list_approvals(status=ap.PENDING, target="demo", limit=held + 10))
            if pending >= held:
                break
            time.sleep(0.5)
        if pending < held:
            failed = [c.communicate(timeout=5)[1] for c in clients if c.poll() is not None]
            raise SystemExit(f"only {pending} of {held} statements were held after 120 s; psql said: {failed[:3]}")
        time.sleep(3)  # let the last notices and pushes settle
        wall0, cpu0 = time.monotonic(), _cpu_seconds(broker.popen.pid)
        time.sleep(seconds)
        cpu = (_cpu_seconds(broker.popen.pid) - cpu0) / (time.monotonic() - wall0)
        result = {"held": pending, "seconds": seconds, "broker_cpu": round(cpu, 4)}
        print(f"{held} idle held statements: broker {result['broker_cpu']:.4f} CPU over {seconds:g} s")
        return result
    finally:
        for c in clients:
            c.kill()
        stack.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["lookup", "idle", "all"], default="all")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--held", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    date = datetime.date.today().isoformat()
    out = REPO / "bench" / "results" / f"{date}-approval-scale.json"
    results: dict = json.loads(out.read_text()) if out.exists() else {}  # one part at a time keeps the other
    results["date"] = date
    if args.part in ("lookup", "all"):
        results["lookup"] = lookup_part(args.repeat)
    if args.part in ("idle", "all"):
        results["idle"] = idle_part(args.held, args.seconds)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
