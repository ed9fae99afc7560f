#!/usr/bin/env python3
"""A/B of two broker source trees on the SSH path, side by side in one run.

    flock /work/bench.lock python3 bench/ab_ssh.py --base /tmp/base-tree [--rounds 6] [--mib 100]

On this shared 2-core machine two bench_ssh.py runs minutes apart differ by 2x in MB/s (the other
helpers' test suites come and go), so comparing a change against its base run by run says little.
Here both brokers run at the same time: two local stacks (this tree's code and ``--base``'s, e.g. a
``git clone`` at the base commit), one sshd, and every round runs direct, base and new back to back
(base/new order alternating), bulk (``head -c MIB M /dev/zero``) then 200 echoed keystrokes each.
Reported per variant, as medians over the rounds: the broker event loop's CPU per MB moved and per
keystroke (schedstat, ns), MB/s, echo p50, and the per-round ratios to direct. CPU per MB is the
number to compare first; it moves least with the machine's load.

Writes ``results/<date>-ssh-ab-LABEL.md`` with the command (``--label``, default "ab").
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import jitgate.devstack as devstack  # noqa: E402
from bench_ssh import Paths, echo_latency, pct, target_yaml, thread_ns, throughput  # noqa: E402
from tests.ssh.sshd import start_sshd  # noqa: E402

VARIANTS = ("direct", "base", "new")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, type=Path, help="the other source tree (its broker/ runs as 'base')")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--keystrokes", type=int, default=200)
    parser.add_argument("--label", default="ab")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not (args.base / "broker" / "__main__.py").exists():
        raise SystemExit(f"--base {args.base}: not a jitgate source tree (no broker/__main__.py)")
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark starts its own sshd")
    command = "python3 bench/ab_ssh.py" + "".join(f" {a}" for a in sys.argv[1:])
    work = Path(tempfile.mkdtemp(prefix="jitgate-ab-ssh-"))
    os.chmod(work, 0o755)
    load_before = os.getloadavg()
    sshd = start_sshd(work / "sshd")
    stacks = {}
    res = {k: {"mbs": [], "loop_ms_per_mb": [], "p50_ms": [], "loop_us_per_key": []} for k in VARIANTS}
    try:
        stacks["new"] = devstack.start_stack(work / "new")
        own = devstack.REPO
        devstack.REPO = args.base.resolve()  # the broker (and functions) of the second stack run the base tree
        try:
            stacks["base"] = devstack.start_stack(work / "base")
        finally:
            devstack.REPO = own
        for stack in stacks.values():
            with open(stack.policy_path, "a") as fh:
                fh.write(target_yaml(sshd))
        time.sleep(1.5)  # the brokers reload the policy
        paths = {k: Paths(s, sshd, sshd, work) for k, s in stacks.items()}
        for r in range(args.rounds):
            for k in ("direct", "base", "new") if r % 2 == 0 else ("direct", "new", "base"):
                p = paths["new" if k == "direct" else k]
                path = "direct" if k == "direct" else "broker"
                before = thread_ns(p.broker_pid, p.broker_pid)
                rate, _ = throughput(p, path, args.mib)
                spent = thread_ns(p.broker_pid, p.broker_pid) - before
                res[k]["mbs"].append(rate)
                if path == "broker":
                    res[k]["loop_ms_per_mb"].append(spent / 1e6 / (args.mib * 1.048576))
                samples, per_key = echo_latency(p, path, args.keystrokes)
                res[k]["p50_ms"].append(pct(samples, 50))
                if per_key is not None:
                    res[k]["loop_us_per_key"].append(per_key)
            print(f"round {r + 1}: " + "; ".join(
                f"{k} {res[k]['mbs'][-1]:.0f} MB/s p50 {res[k]['p50_ms'][-1]:.3f} ms"
                + (f" loop {res[k]['loop_ms_per_mb'][-1]:.2f} ms/MB {res[k]['loop_us_per_key'][-1]:.0f} µs/key"
                   if k != "direct" else "") for k in VARIANTS), flush=True)
    finally:
        for stack in stacks.values():
            stack.stop()
        sshd.stop()
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()

    def med(k, n):
        return statistics.median(res[k][n])

    lines = [
        f"# SSH A/B, both brokers side by side ({datetime.date.today().isoformat()})",
        "",
        f"Command: `{command}` ({os.cpu_count()} CPUs, shared; load average "
        f"{' '.join(f'{x:.2f}' for x in load_before)} before, {' '.join(f'{x:.2f}' for x in load_after)} after).",
        f"new = this tree, base = `{args.base}`. {args.rounds} rounds; medians. Broker loop CPU: the event loop's "
        "thread (schedstat) during the bulk run / during the keystrokes alone (echo both ways and its recording).",
        "",
        "| variant | loop CPU ms/MB | loop CPU µs/keystroke | MB/s | ÷ direct (per round) | echo p50 ms | added over direct |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| direct | – | – | {med('direct', 'mbs'):.1f} | 1.00 | {med('direct', 'p50_ms'):.3f} | – |",
    ]
    for k in ("base", "new"):
        ratio = statistics.median(b / a for a, b in zip(res["direct"]["mbs"], res[k]["mbs"]))
        added = statistics.median(b - a for a, b in zip(res["direct"]["p50_ms"], res[k]["p50_ms"]))
        lines.append(f"| {k} | {med(k, 'loop_ms_per_mb'):.2f} | {med(k, 'loop_us_per_key'):.0f} | {med(k, 'mbs'):.1f} | "
                     f"{ratio:.2f} | {med(k, 'p50_ms'):.3f} | {added:+.3f} |")
    lines += ["", "Per round:", ""]
    for k in VARIANTS:
        lines.append(f"- {k}: " + ", ".join(f"{n} [{', '.join(f'{v:.3g}' for v in vals)}]" for n, vals in res[k].items() if vals))
    table = "\n".join(lines) + "\n"
    print()
    print(table)
    if not args.no_write:
        out = REPO / "bench" / "results" / f"{datetime.date.today().isoformat()}-ssh-ab-{args.label}.md"
        out.write_text(table)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
