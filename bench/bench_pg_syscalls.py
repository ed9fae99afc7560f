#!/usr/bin/env python3
"""Syscalls and CPU per select-only transaction: the broker against pgbouncer (issue 18).

    flock /work/bench.lock python3 bench/bench_pg_syscalls.py                 # -> results/<date>-pg-syscalls.md
    flock /work/bench.lock python3 bench/bench_pg_syscalls.py --compare /tmp/base --rounds 5 --no-strace

One local stack and one pgbouncer, set up as ``bench/run.py`` sets them up (same target, TLS, recording on).

- **syscalls**: ``strace -c -f -p <pid>`` (all threads) of the broker and of pgbouncer while
  ``pgbench -S -c 8 -j 2 -t N`` runs through each; every count is divided by the transactions.
  strace slows the traced process severalfold, so only its counts are reported, never its times.
  Needs strace (``apt-get install -y strace``: a measurement tool, not a dependency of the project).
- **CPU per transaction** (no tracer): user and system CPU of the proxy process from /proc around
  the same pgbench run, ``--rounds`` times. With ``--compare TREE`` a second broker runs the code
  of TREE (say ``git archive main | tar -x -C /tmp/base``; its compiled parts are built in place)
  on the same stack, and the rounds alternate between the two brokers back to back, so both see the
  same machine load; the table gives medians.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (  # noqa: E402
    BENCH_MASKING, BENCH_TARGET, BENCH_USER, BENCH_GROUPS, REPO, RESULTS_DIR, Endpoint, PgBouncer, broker_proc,
    ensure_compiled, ensure_pgbouncer, git_commit, pgbench, proc_cpu_split, say, setup_bench_db,
)
from jitgate import devstack  # noqa: E402
from jitgate.devstack import Postgres, demo_policy, dev_token, start_stack  # noqa: E402

STRACE_LINE = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?(\w+)\s*$")


def strace_counts(path: Path) -> dict[str, tuple[int, int]]:
    """{syscall: (calls, errors)} from ``strace -c`` output."""
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        m = STRACE_LINE.match(line)
        if m and m.group(3) != "total":
            out[m.group(3)] = (int(m.group(1)), int(m.group(2) or 0))
    return out


def run_pgbench(ep: Endpoint, mode: str, per_client: int) -> int:
    r = pgbench(ep, ["-S", "-M", mode, "-c", "8", "-j", "2", "-t", str(per_client)], timeout=600)
    return r["transactions"]


def traced(ep: Endpoint, pid: int, mode: str, seconds: float, out: Path) -> tuple[int, dict]:
    """strace -c attached in the middle of a longer pgbench run, so that the counts are the steady
    state: the sessions' sign-in, close and sealing fall outside the window. The transactions are
    those pgbench logged as finished while strace was attached."""
    prefix = out.with_name(f"log-{ep.name}")
    client = subprocess.Popen(["pgbench", "-n", "-S", "-M", mode, "-c", "8", "-j", "2", "-T", str(round(seconds) + 6),
                               "--log", f"--log-prefix={prefix}", ep.dbname], env=ep.env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)  # signed in, steady
        begin = time.time()
        strace = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p", str(pid)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(seconds)
        end = time.time()
        strace.send_signal(signal.SIGINT)
        strace.wait(60)
    finally:
        client.wait(seconds + 120)
    txns = 0
    for log in out.parent.glob(prefix.name + ".*"):
        for line in log.read_text().splitlines():
            parts = line.split()  # client, transaction, µs, script, epoch s, µs of that second
            if len(parts) >= 6 and begin <= int(parts[4]) + int(parts[5]) / 1e6 <= end:
                txns += 1
        log.unlink()
    return txns, strace_counts(out)


def on_cpu(pid: int) -> float:
    """Seconds on a CPU, every thread, from schedstat (nanoseconds; /proc/<pid>/stat counts ticks)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total / 1e9


def cpu_round(ep: Endpoint, pid: int, mode: str, per_client: int) -> dict:
    u0, s0 = proc_cpu_split(pid)
    x0 = on_cpu(pid)
    txns = run_pgbench(ep, mode, per_client)
    u1, s1 = proc_cpu_split(pid)
    x1 = on_cpu(pid)
    return {"txns": txns, "user_us": (u1 - u0) * 1e6 / txns, "sys_us": (s1 - s0) * 1e6 / txns,
            "total_us": (x1 - x0) * 1e6 / txns}


def wait_sealed(home: Path, deadline: float = 120) -> None:
    """Until the spool folder is empty (sealing of the last round's sessions does not overlap the next)."""
    spool = home / "spool"
    end = time.monotonic() + deadline
    while time.monotonic() < end and spool.exists() and any(spool.glob("*.jsonl")):
        time.sleep(0.2)
    time.sleep(0.5)


def start_second_broker(stack: devstack.Stack, tree: Path) -> devstack.Proc:
    """A broker running the code of ``tree`` on the same stack (same home, policy and functions)."""
    from broker.pg import codec  # noqa: F401 - (only to fail early when this tree does not import)
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree, check=True,
                   capture_output=True, timeout=600)
    ready = stack.home / "broker-base-ready.json"
    ready.unlink(missing_ok=True)
    env = dict(stack.env, PYTHONPATH=str(tree), JITGATE_PG_LISTEN="127.0.0.1:0", JITGATE_SSH_LISTEN="",
               JITGATE_HTTP_LISTEN="", JITGATE_K8S_LISTEN="", JITGATE_METRICS_LISTEN="127.0.0.1:0")
    proc = devstack.spawn("broker-base", [sys.executable, "-m", "broker", "--ready-file", str(ready)],
                          stack.home / "logs", env=env, cwd=tree)
    devstack.wait_for(lambda: ready.exists() and ready.stat().st_size > 0, 60, "base broker", proc)
    proc.info = json.loads(ready.read_text())
    return proc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", default="simple", choices=("simple", "extended"))
    p.add_argument("--transactions", type=int, default=2500, help="pgbench -t per client (8 clients)")
    p.add_argument("--rounds", type=int, default=3, help="CPU rounds per broker (alternating with --compare)")
    p.add_argument("--compare", type=Path, help="a second tree whose broker runs on the same stack (A/B)")
    p.add_argument("--no-strace", action="store_true")
    p.add_argument("--strace-seconds", type=float, default=8, help="how long strace -c stays attached (default 8)")
    p.add_argument("--label", default="", help="suffix of the results file")
    p.add_argument("--sequence", type=int, default=0, metavar="N",
                   help="also trace N single-client transactions per proxy in full (strace -f -tt) and show one")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if not args.no_strace and not shutil.which("strace"):
        print("strace is not installed (apt-get install -y strace)", file=sys.stderr)
        return 2
    compiled = ensure_compiled()
    load_before = os.getloadavg()
    home = Path(tempfile.mkdtemp(prefix="jitgate-bench-sys-"))
    os.chmod(home, 0o755)
    stack = bouncer = base = None
    try:
        say(f"starting the local stack in {home}")
        stack = start_stack(home)
        pg = stack.pg
        stack.policy_path.write_text(demo_policy(stack.issuer.issuer, pg) + BENCH_TARGET.format(
            pg_port=pg.port, role=Postgres.BROKER_ROLE, masking=BENCH_MASKING))
        setup_bench_db(stack, 10, 1000)
        bouncer = PgBouncer(ensure_pgbouncer(), pg, home / "tls" / "broker-dev.crt", home / "tls" / "broker-dev.key").start()
        token = dev_token(stack.issuer.issuer, BENCH_USER, BENCH_GROUPS, ttl=3600)
        broker_pid = broker_proc(stack).popen.pid
        eps = {
            "pgbouncer": (Endpoint("pgbouncer", "127.0.0.1", bouncer.port, Postgres.BROKER_ROLE, pg.broker_password,
                                   "require"), bouncer.pid),
            "broker": (Endpoint("broker", "127.0.0.1", stack.broker_port, BENCH_USER, token, "require"), broker_pid),
        }
        if args.compare:
            base = start_second_broker(stack, args.compare.resolve())
            port = int(base.info["pg"].rpartition(":")[2])
            eps["base"] = (Endpoint("base", "127.0.0.1", port, BENCH_USER, token, "require"), base.popen.pid)
        for name, (ep, _) in eps.items():
            run_pgbench(ep, args.mode, 200)  # warm-up: caches, TLS session, imports
            if name != "pgbouncer":
                wait_sealed(home)
        per_txn: dict[str, dict[str, float]] = {}
        txn_counts = {}
        if not args.no_strace:
            for name, (ep, pid) in eps.items():
                say(f"strace -c -f -p {pid} ({name}) for {args.strace_seconds} s in the middle of a pgbench run")
                txns, counts = traced(ep, pid, args.mode, args.strace_seconds, home / f"strace-{name}.txt")
                txn_counts[name] = txns
                per_txn[name] = {k: calls / txns for k, (calls, _) in counts.items()}
                if name != "pgbouncer":
                    wait_sealed(home)
        sequences = {}
        if args.sequence:
            for name, (ep, pid) in eps.items():
                sequences[name] = sequence(ep, pid, args.mode, args.sequence, home / f"trace-{name}.txt")
                if name != "pgbouncer":
                    wait_sealed(home)
        rounds: dict[str, list[dict]] = {name: [] for name in eps}
        for i in range(args.rounds):
            order = list(eps.items())
            for name, (ep, pid) in (order if i % 2 == 0 else order[::-1]):  # neither broker always goes first
                r = cpu_round(ep, pid, args.mode, args.transactions)
                rounds[name].append(r)
                say(f"round {i + 1} {name}: {r['total_us']:.1f} µs/txn on CPU (user {r['user_us']:.1f}, "
                    f"sys {r['sys_us']:.1f}, in ticks)")
                if name != "pgbouncer":
                    wait_sealed(home)
        md = render(args, rounds, per_txn, txn_counts, compiled, load_before, sequences)
        print(md)
        if not args.no_write:
            stem = f"{datetime.date.today():%Y-%m-%d}-pg-syscalls" + (f"-{args.label}" if args.label else "")
            (RESULTS_DIR / f"{stem}.md").write_text(md)
            (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(
                {"rounds": rounds, "syscalls_per_txn": per_txn, "traced_transactions": txn_counts,
                 "command": " ".join(["python3", "bench/bench_pg_syscalls.py", *(argv or sys.argv[1:])]),
                 "commit": git_commit()}, indent=2) + "\n")
            say(f"wrote {RESULTS_DIR / stem}.md and .json")
        return 0
    finally:
        if base is not None:
            base.stop()
        if bouncer is not None:
            bouncer.stop()
        if stack is not None:
            stack.stop()
            shutil.rmtree(stack.pg.root, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def sequence(ep: Endpoint, pid: int, mode: str, count: int, out: Path) -> str:
    """Every syscall of ``count`` single-client transactions; returns the lines of one from the middle:
    from a read on a socket to the next read on that socket (one transaction, maybe rotated)."""
    strace = subprocess.Popen(["strace", "-f", "-tt", "-s", "0", "-o", str(out), "-p", str(pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        pgbench(ep, ["-S", "-M", mode, "-c", "1", "-j", "1", "-t", str(count)], timeout=600)
    finally:
        strace.send_signal(signal.SIGINT)
        strace.wait(60)
    shutil.copy(out, Path(tempfile.gettempdir()) / f"pg-syscalls-{out.name}")  # the whole trace, for a closer look
    lines = out.read_text(errors="replace").splitlines()
    middle = [re.sub(r"^\d+\s+", "", ln) for ln in lines[len(lines) // 2 :]]
    reads = [i for i, ln in enumerate(middle) if re.match(r"\d[\d:.]* (read|recvfrom)\(\d+,", ln)]
    if not reads:
        return "\n".join(middle[:20])
    fd = re.search(r"(?:read|recvfrom)\((\d+),", middle[reads[0]]).group(1)
    waited = False
    for i in range(reads[0] + 1, len(middle)):
        waited = waited or "epoll" in middle[i]
        if waited and re.search(rf" (?:read|recvfrom)\({fd},", middle[i]):
            return "\n".join(middle[reads[0]:i])
    return "\n".join(middle[reads[0]:reads[0] + 20])


def render(args, rounds, per_txn, txn_counts, compiled, load_before, sequences=None) -> str:
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    lines = [f"# Syscalls and CPU per select-only transaction ({args.mode} protocol) — {datetime.date.today()}", "",
             f"- command: `python3 bench/bench_pg_syscalls.py {' '.join(sys.argv[1:])}`",
             f"- commit {git_commit()}; broker: uvloop, {compiled}; TLS on both proxies; recording on; "
             f"pgbench -S -M {args.mode} -c 8 -j 2 -t {args.transactions} per measurement",
             f"- load average before {', '.join(f'{x:.2f}' for x in load_before)}, after "
             f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}", ""]
    if per_txn:
        names = list(per_txn)
        lines += [f"## Syscalls per transaction (`strace -c -f -p`, {', '.join(f'{n} {txn_counts[n]:,}' for n in names)} "
                  "transactions)", "", "| syscall | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        calls = sorted({k for n in names for k in per_txn[n]}, key=lambda k: -max(per_txn[n].get(k, 0) for n in names))
        for k in calls:
            if max(per_txn[n].get(k, 0) for n in names) >= 0.01:
                lines.append(f"| {k} | " + " | ".join(f"{per_txn[n].get(k, 0):.2f}" for n in names) + " |")
        lines.append("| **total** | " + " | ".join(f"**{sum(per_txn[n].values()):.2f}**" for n in names) + " |")
        lines.append("")
    for name, text in (sequences or {}).items():
        lines += [f"## One single-client transaction through {name} (`strace -f -tt`, from a read on a socket "
                  "to the next read on it)", "", "```", text, "```", ""]
    lines += [f"## CPU per transaction, no tracer (median of {args.rounds} rounds, one after the other"
              + (", the order flipped every round" if args.compare else "") + ")", "",
              "On CPU: schedstat of every thread (ns); user and system: /proc/<pid>/stat (10 ms ticks).", "",
              "| proxy | on CPU µs | user µs | system µs | rounds (on CPU µs) |", "|---|---:|---:|---:|---|"]
    for name, rs in rounds.items():
        label = name if name != "base" else f"base ({args.compare})"
        lines.append(f"| {label} | {med(rs, 'total_us'):.1f} | {med(rs, 'user_us'):.1f} | {med(rs, 'sys_us'):.1f} | "
                     + ", ".join(f"{r['total_us']:.0f}" for r in rs) + " |")
    if "base" in rounds:
        ratios = [a["total_us"] / b["total_us"] for a, b in zip(rounds["broker"], rounds["base"])]
        lines += ["", f"broker ÷ base, on CPU, round by round: {', '.join(f'{r:.3f}' for r in ratios)}; "
                  f"**median {statistics.median(ratios):.3f}**"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
