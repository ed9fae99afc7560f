"""Masking on the hot path: a bulk SELECT direct and through the broker, in one run.

    python bench/bench_pg_masking.py [--rows 1000000] [--reps 2]
    python bench/bench_pg_masking.py --profile --label before   # also py-spy --gil per broker case
                                                               # -> <date>-pg-masking-profile-before.md

Three broker cases over the same table (id int, email text, city text, notes text,
one row in five with PII in its notes), each as rows/s and as a ratio to direct:

- no rules          the target has no masking rules (the relay only frames and forwards)
- one column        a column rule hashes ``email``
- detectors         every content detector on every text column

The client is pgbench (C; it receives every row and discards it), so the numbers are
the broker's, not a Python client's. Writes bench/results/<date>-pg-masking.md/.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jitgate.devstack import dev_token, start_stack  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import broker_proc, summarize_pyspy  # noqa: E402

TARGETS = """
  mask-none:
    kind: postgres
    address: 127.0.0.1:{port}
    database: demo
    username: jitgate_broker
    credential: env:JITGATE_DEMO_DB_PASSWORD
    allow: {{groups: [bench]}}
  mask-column:
    kind: postgres
    address: 127.0.0.1:{port}
    database: demo
    username: jitgate_broker
    credential: env:JITGATE_DEMO_DB_PASSWORD
    allow: {{groups: [bench]}}
    masking:
      rules:
        - columns: [email]
          strategy: hash
  mask-detectors:
    kind: postgres
    address: 127.0.0.1:{port}
    database: demo
    username: jitgate_broker
    credential: env:JITGATE_DEMO_DB_PASSWORD
    allow: {{groups: [bench]}}
    masking:
      rules:
        - detectors: [email, card, iban, ssn, phone, secret]
          strategy: redact
"""

CASES = [("no rules", "mask-none"), ("one masked column", "mask-column"), ("detectors on every text column", "mask-detectors")]


def pgbench_once(args: list[str], env: dict[str, str], script: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(["pgbench", "-n", "-c", "1", "-t", "1", "-f", str(script), *args], env=env,
                            capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"pgbench failed: {result.stderr[-2000:]}")
    return elapsed


def profiled(pid: int, raw: Path, run):
    """Run ``run()`` while py-spy samples the broker (only the thread holding the GIL: its Python CPU)."""
    raw.unlink(missing_ok=True)
    spy = subprocess.Popen([shutil.which("py-spy"), "record", "-p", str(pid), "-f", "raw", "-o", str(raw), "-r", "200",
                            "--nonblocking", "--gil"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        return run()
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            spy.wait(60)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(5)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="after the timed runs, one more run per broker case under py-spy --gil "
                             "-> <date>-pg-masking-profile[-LABEL].md")
    parser.add_argument("--label", default="", help="suffix of the profile file name (e.g. before, after)")
    opts = parser.parse_args()
    if opts.profile and not shutil.which("py-spy"):
        raise SystemExit("--profile needs py-spy (pip install py-spy) and ptrace rights (root)")
    load_before = load_average()
    profiles: list[str] = []

    home = Path(tempfile.mkdtemp(prefix="jitgate-bench-mask-"))
    stack = start_stack(home)
    try:
        with open(stack.policy_path, "a") as fh:
            fh.write(TARGETS.format(port=stack.pg.port))
        stack.pg.psql(
            "DROP TABLE IF EXISTS bench_people; "
            "CREATE TABLE bench_people AS SELECT g AS id, 'user' || g || '@example.com' AS email, "
            "(ARRAY['Lyon','Oslo','Lima','Pune'])[1 + g % 4] AS city, "
            "CASE WHEN g % 5 = 0 THEN 'call +1 415 555 ' || lpad((g % 10000)::text, 4, '0') || ' or mail u' || g || '@example.org' "
            f"ELSE 'order ORD-' || g || ' shipped 2024-03-01, no issues' END AS notes FROM generate_series(1, {opts.rows}) g; "
            "ALTER TABLE bench_people OWNER TO jitgate_broker",
            "demo",
        )
        script = home / "select.sql"
        script.write_text("SELECT * FROM bench_people;\n")
        token = dev_token(stack.issuer.issuer, "bench@example.com", ["bench"])
        direct_env = dict(os.environ, PGPASSWORD=stack.pg.broker_password)
        direct = ["-h", "127.0.0.1", "-p", str(stack.pg.port), "-U", "jitgate_broker", "demo"]
        results = []
        times = [pgbench_once(direct, direct_env, script) for _ in range(opts.reps)]
        direct_rate = opts.rows / statistics.median(times)
        results.append({"case": "direct", "seconds": statistics.median(times), "rows_per_s": direct_rate})
        print(f"direct: {direct_rate:,.0f} rows/s", flush=True)
        for label, target in CASES:
            env = dict(os.environ, PGPASSWORD=token, PGSSLMODE="require")
            args = ["-h", "127.0.0.1", "-p", str(stack.broker_port), "-U", "bench@example.com", target]
            times = [pgbench_once(args, env, script) for _ in range(opts.reps)]
            rate = opts.rows / statistics.median(times)
            results.append({"case": label, "target": target, "seconds": statistics.median(times), "rows_per_s": rate,
                            "ratio_to_direct": rate / direct_rate})
            print(f"{label}: {rate:,.0f} rows/s ({rate / direct_rate:.2f}x direct)", flush=True)
        if opts.profile:
            for label, target in CASES:
                env = dict(os.environ, PGPASSWORD=token, PGSSLMODE="require")
                args = ["-h", "127.0.0.1", "-p", str(stack.broker_port), "-U", "bench@example.com", target]
                raw = home / "profile.raw"
                seconds = profiled(broker_proc(stack).popen.pid, raw, lambda: pgbench_once(args, env, script))
                print(f"profiled {label}: {opts.rows / seconds:,.0f} rows/s under py-spy", flush=True)
                profiles += ["", f"## {label} (target {target}; {opts.rows / seconds:,.0f} rows/s while sampled)", "",
                             summarize_pyspy(raw)]
    finally:
        stack.stop()

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    lines = [
        f"# Masking on a bulk SELECT ({opts.rows:,} rows), {datetime.date.today()}",
        "",
        f"Machine: {os.cpu_count()} CPUs, {cpu}; Python {platform.python_version()}. Client: pgbench (C), "
        f"median of {opts.reps}. Direct: TCP without TLS; broker: TLS, recording on.",
        "",
        f"Command: `{' '.join(['python3', 'bench/bench_pg_masking.py', *sys.argv[1:]])}`. "
        f"Load average (1/5/15 min) before the run: {load_before}; after: {load_average()}.",
        "",
        "| case | rows/s | ratio to direct |",
        "|---|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['case']} | {r['rows_per_s']:,.0f} | {r.get('ratio_to_direct', 1.0):.2f}x |")
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if not opts.no_write:
        out = Path(__file__).resolve().parent / "results"
        out.mkdir(exist_ok=True)
        stem = out / f"{datetime.date.today()}-pg-masking"
        stem.with_suffix(".md").write_text(table)
        stem.with_suffix(".json").write_text(json.dumps(
            {"command": ["python3", "bench/bench_pg_masking.py", *sys.argv[1:]], "rows": opts.rows, "reps": opts.reps,
             "load_average_before": load_before, "load_average_after": load_average(), "python": platform.python_version(),
             "cpus": os.cpu_count(), "cpu": cpu, "results": results}, indent=2) + "\n")
    if profiles:
        head = [f"# py-spy profile of the broker during the masking bench ({opts.rows:,} rows), {datetime.date.today()}",
                "", "`py-spy record --gil --nonblocking -r 200` on the broker for one bulk SELECT per case: only the thread",
                "holding the GIL counts, so this is where the broker's Python CPU goes. 'self' = the function itself was",
                "on top of the stack; 'total' = anywhere on the stack.", "",
                f"Command: `{' '.join(['python3', 'bench/bench_pg_masking.py', *sys.argv[1:]])}`"]
        out = Path(__file__).resolve().parent / "results"
        name = f"{datetime.date.today()}-pg-masking-profile" + (f"-{opts.label}" if opts.label else "") + ".md"
        (out / name).write_text("\n".join(head + profiles) + "\n")
        print(f"profile -> bench/results/{name}")


if __name__ == "__main__":
    main()
