"""Can one session stall the others? A victim's `select 1` latency while an attacker sends hostile input.

    python bench/bench_stall.py --label before        # writes bench/results/<date>-stall-before.{md,json}
    python bench/bench_stall.py --label after --compare bench/results/<date>-stall-before.json
    python bench/bench_stall.py --label final --seconds 20 --profile bench/results/<date>-stall-final-pyspy.txt

One local stack (the tree this script is in: broker, functions, PostgreSQL, dev issuer). Two
signed-in clients on the demo target (column masking rules and every detector): the victim runs
`select 1` back to back for the whole run; the attacker sends each input of issue 21 in turn,
back to back for ``--seconds`` (and at least ``--repeat`` times), waiting for each answer (an
error is the expected answer). For each input the victim's latencies while the attacker's
statements were in flight give p50/p99/max (hundreds of samples per row, so p99 is not just the
max); ``idle`` is the victim alone for as long. The attacker's own time per statement is reported
too. ``--profile`` records the broker with py-spy (``--gil``: only samples holding the GIL, i.e.
what holds the event loop) for the whole run. The stack's temporary home is deleted at the end.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402

from jitgate.devstack import dev_token, start_stack  # noqa: E402

# A BEGIN line with no END whose body stops at once: each one made the secret detector look up
# to 16 KB ahead for its END line.
PEM = "-----BEGIN RSA PRIVATE KEY-----\n!"

# (label, SQL) - the inputs of issue 21, at the sizes it measured.
ATTACKS = [
    ("error text: 'Key (a)=(' x 10000", "select '" + "Key (a)=(" * 10000 + "'::int"),
    ("error text: 'Failing row contains (' x 5000", "select '" + "Failing row contains (" * 5000 + "'::int"),
    ("classifier: select +1+1... (6000 times)", "select " + "+1" * 6000),
    ("error text: private-key BEGIN lines x 3000 (100 KB)", "select '" + PEM * 3000 + "'::int"),
    ("classifier: operator chain '+\\ufffd' x 8000 (16 KB)", "select " + "+\ufffd" * 8000),
    # Found after the first round: the slowest input per byte for the free-text detectors.
    ("error text: '@' x 60000 (slowest detector input)", "select '" + "@" * 60000 + "'::int"),
    ("error text: digit groups '4-' x 30000 (card detector)", "select '" + "4-" * 30000 + "'::int"),
    ("lineage: 6000-term expression over a masked column", "select email" + "||'x'" * 6000 + " from customers"),
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


class Victim(threading.Thread):
    def __init__(self, dsn: str):
        super().__init__(daemon=True)
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.samples: list[tuple[float, float]] = []  # (end time, latency s)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            self.conn.execute("select 1").fetchone()
            end = time.perf_counter()
            self.samples.append((end, end - started))

    def window(self, start: float, end: float) -> list[float]:
        # Every query that overlapped the window, including one stuck across its end.
        return [lat for t, lat in self.samples if t >= start and t - lat <= end]


def profile_summary(path: Path, top: int = 15) -> list[str]:
    """The frames that held the GIL most (own samples), from py-spy's raw collapsed stacks."""
    own: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        own[stack.split(";")[-1]] += int(count)
    out = [f"Broker profile (`py-spy record --gil`, {total} samples holding the GIL over the whole run; raw stacks in "
           f"`{path.name}`). Top frames by own samples:", "", "| samples | share | frame |", "|---|---|---|"]
    for frame, count in own.most_common(top):
        out.append(f"| {count} | {100 * count / max(total, 1):.1f}% | `{frame}` |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="before / after: names the result files")
    parser.add_argument("--repeat", type=int, default=1, help="times each attack statement is sent at least")
    parser.add_argument("--seconds", type=float, default=15.0, help="each attack is sent back to back for this long "
                        "(and the victim measured alone for as long)")
    parser.add_argument("--profile", type=Path, help="record the broker with py-spy --gil into this file (raw "
                        "collapsed stacks)")
    parser.add_argument("--compare", type=Path, help="an earlier run's .json to print beside this one")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--keep-home", action="store_true", help="keep the stack's temporary home (logs) at the end")
    parser.add_argument("--only", help="run only the attacks whose label contains this; rows of an earlier "
                        "result file of the same label are kept for the others")
    opts = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="jitgate-bench-stall-"))
    load_start = os.getloadavg()
    stack = start_stack(home)
    results = []
    profiler = None
    try:
        if opts.profile:
            broker = next(p for p in stack.procs if p.name == "broker")
            opts.profile.parent.mkdir(parents=True, exist_ok=True)
            profiler = subprocess.Popen(["py-spy", "record", "--pid", str(broker.popen.pid), "--gil", "--rate", "250",
                                         "-f", "raw", "-o", str(opts.profile)], stdout=subprocess.DEVNULL)
        def dsn(user: str) -> str:
            token = dev_token(stack.issuer.issuer, user, ["sre"])
            return (f"host=127.0.0.1 port={stack.broker_port} dbname=demo user={user} password={token} "
                    "sslmode=require connect_timeout=30")

        victim = Victim(dsn("victim@example.com"))
        attacker = psycopg.connect(dsn("attacker@example.com"), autocommit=True)
        victim.start()
        time.sleep(0.5)
        start = time.perf_counter()
        time.sleep(opts.seconds)
        idle = victim.window(start, time.perf_counter())
        results.append({"input": "idle (victim alone)", "victim_queries": len(idle),
                         "p50_ms": percentile(idle, 0.5) * 1000, "p99_ms": percentile(idle, 0.99) * 1000,
                         "max_ms": max(idle) * 1000, "attacker_s": None, "attacker_answer": ""})
        for label, sql in ATTACKS:
            if opts.only and opts.only not in label:
                continue
            lat: list[float] = []
            spent: list[float] = []
            answer = ""
            began = time.perf_counter()
            while len(spent) < opts.repeat or time.perf_counter() - began < opts.seconds:
                start = time.perf_counter()
                try:
                    attacker.execute(sql).fetchall()
                    answer = "rows"
                except psycopg.Error as exc:
                    answer = f"{exc.sqlstate}: {str(exc).splitlines()[0][:90]}"
                    if attacker.closed:
                        attacker = psycopg.connect(dsn("attacker@example.com"), autocommit=True)
                end = time.perf_counter()
                spent.append(end - start)
                time.sleep(0.05)  # let the victim's stuck query (if any) land inside the window
                lat += victim.window(start, end)
            row = {"input": label, "victim_queries": len(lat), "p50_ms": percentile(lat, 0.5) * 1000,
                   "p99_ms": percentile(lat, 0.99) * 1000, "max_ms": max(lat) * 1000 if lat else float("nan"),
                   "attacker_s": statistics.median(spent), "attacker_answer": answer, "input_bytes": len(sql.encode())}
            results.append(row)
            print(f"{label}: victim p99 {row['p99_ms']:.1f} ms, max {row['max_ms']:.1f} ms "
                  f"({row['victim_queries']} queries); attacker {row['attacker_s']:.2f} s -> {answer}", flush=True)
        victim.stop.set()
        victim.join(timeout=120)
    finally:
        if profiler is not None:
            profiler.send_signal(2)  # py-spy writes its file on SIGINT
            profiler.wait(60)
        stack.stop()
        if opts.keep_home:
            print(f"stack home kept: {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)

    out = Path(__file__).resolve().parent / "results"
    stem = out / f"{datetime.date.today()}-stall-{opts.label}"
    if opts.only and stem.with_suffix(".json").exists():  # keep the other rows of the earlier run
        fresh = {r["input"] for r in results[1:]}
        kept = [r for r in json.loads(stem.with_suffix(".json").read_text())["results"]
                if r["input"] not in fresh and r["input"] in {"idle (victim alone)", *(a for a, _ in ATTACKS)}]
        results = [r for r in kept if r["input"] == "idle (victim alone)"] + [
            next((r for r in results if r["input"] == a), None) or next(r for r in kept if r["input"] == a)
            for a, _ in ATTACKS if any(r["input"] == a for r in results + kept)]
    earlier = {r["input"]: r for r in json.loads(opts.compare.read_text())["results"]} if opts.compare else {}
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    load = os.getloadavg()
    lines = [f"# Stall benchmark ({opts.label}), {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC", "",
             f"Machine: {os.cpu_count()} CPUs, {cpu}; Python {platform.python_version()}; load average at the end "
             f"{load[0]:.1f}, at the start {load_start[0]:.1f} (a shared machine: compare ratios, not absolute times). "
             f"Each attack sent back to back for {opts.seconds:g} s (at least {opts.repeat} times); "
             "victim = another signed-in client's `select 1` through the same broker, back to back.", "",
             f"Command: `python3 bench/bench_stall.py {' '.join(sys.argv[1:])}`", ""]
    head = "| attacker input | victim p50 ms | victim p99 ms | victim max ms | queries | attacker s/statement | attacker's answer |"
    if earlier:
        head = head.replace("| victim p50 ms", f"| victim p99 ms ({json.loads(opts.compare.read_text())['label']}) | victim p50 ms")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        before = f"| {earlier[r['input']]['p99_ms']:.1f} " if earlier and r["input"] in earlier else ("| - " if earlier else "")
        attacker_s = f"{r['attacker_s']:.2f}" if r["attacker_s"] is not None else "-"
        lines.append(f"| {r['input']} {before}| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | "
                     f"{r['victim_queries']} | {attacker_s} | {r['attacker_answer'].replace('|', '/')} |")
    if opts.profile and opts.profile.exists():
        lines += ["", *profile_summary(opts.profile)]
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if not opts.no_write:
        out.mkdir(exist_ok=True)
        stem.with_suffix(".md").write_text(table)
        stem.with_suffix(".json").write_text(json.dumps({"label": opts.label, "repeat": opts.repeat, "seconds": opts.seconds, "command": " ".join(sys.argv), "load_start": load_start[0], "load_end": load[0], "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
