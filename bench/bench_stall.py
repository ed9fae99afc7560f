"""Can one session stall the others? A victim's `select 1` latency while an attacker sends hostile input.

    python bench/bench_stall.py --label before        # writes bench/results/<date>-stall-before.{md,json}
    python bench/bench_stall.py --label after --compare bench/results/<date>-stall-before.json

One local stack (the tree this script is in: broker, functions, PostgreSQL, dev issuer). Two
signed-in clients on the demo target (column masking rules and every detector): the victim runs
`select 1` back to back for the whole run; the attacker sends each input of issue 21 in turn,
``--repeat`` times, waiting for each answer (an error is the expected answer). For each input the
victim's latencies while the attacker's statement was in flight give p50/p99/max; ``idle`` is the
victim alone. The attacker's own time per statement is reported too.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="before / after: names the result files")
    parser.add_argument("--repeat", type=int, default=3, help="times each attack statement is sent")
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    parser.add_argument("--compare", type=Path, help="an earlier run's .json to print beside this one")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--only", help="run only the attacks whose label contains this; rows of an earlier "
                        "result file of the same label are kept for the others")
    opts = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="jitgate-bench-stall-"))
    stack = start_stack(home)
    results = []
    try:
        def dsn(user: str) -> str:
            token = dev_token(stack.issuer.issuer, user, ["sre"])
            return (f"host=127.0.0.1 port={stack.broker_port} dbname=demo user={user} password={token} "
                    "sslmode=require connect_timeout=30")

        victim = Victim(dsn("victim@example.com"))
        attacker = psycopg.connect(dsn("attacker@example.com"), autocommit=True)
        victim.start()
        time.sleep(0.5)
        start = time.perf_counter()
        time.sleep(opts.idle_seconds)
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
            for _ in range(opts.repeat):
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
        stack.stop()

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
             f"{load[0]:.1f} (a shared machine: compare ratios, not absolute times). Each attack sent {opts.repeat} times; "
             "victim = another signed-in client's `select 1` through the same broker, back to back.", ""]
    head = "| attacker input | victim p50 ms | victim p99 ms | victim max ms | queries | attacker s/statement | attacker's answer |"
    if earlier:
        head = head.replace("| victim p50 ms", f"| victim p99 ms ({json.loads(opts.compare.read_text())['label']}) | victim p50 ms")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        before = f"| {earlier[r['input']]['p99_ms']:.1f} " if earlier and r["input"] in earlier else ("| - " if earlier else "")
        attacker_s = f"{r['attacker_s']:.2f}" if r["attacker_s"] is not None else "-"
        lines.append(f"| {r['input']} {before}| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | "
                     f"{r['victim_queries']} | {attacker_s} | {r['attacker_answer'].replace('|', '/')} |")
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if not opts.no_write:
        out.mkdir(exist_ok=True)
        stem.with_suffix(".md").write_text(table)
        stem.with_suffix(".json").write_text(json.dumps({"label": opts.label, "repeat": opts.repeat, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
