#!/usr/bin/env python3
"""Benchmark the broker against a direct connection and against pgbouncer, in one run.

    python bench/run.py                 # full run (20 s per pgbench case, 1M-row bulk), ~5-6 minutes
    python bench/run.py --quick         # smoke run (3 s cases, 100k-row bulk), ~1.5 minutes
    python bench/run.py --duration 30   # longer pgbench cases

What it does, sequentially (the machine is small and shared: never two cases at once):

1. starts the local stack (``jitgate.devstack.start_stack``) in a temp home, adds a
   ``bench`` target to its policy (the broker and authorize reload the policy file for
   new sessions), creates the ``bench`` database owned by the broker role and runs
   ``pgbench -i -s 10`` in it, plus a ``bulk`` table (1M rows of (int, md5 text));
2. starts pgbouncer (installing it with apt-get if missing) as the stack's non-root
   service user, pool_mode=transaction, SCRAM auth from an auth_file, client TLS
   with the broker's dev certificate, upstream over TCP 127.0.0.1;
3. for every case runs the three paths one after the other -- DIRECT (TCP, no TLS:
   the demo PostgreSQL has ssl off), PGBOUNCER (TLS), BROKER (TLS, OIDC token as the
   password, every statement classified and recorded into the spool):
   - pgbench select-only, 8 clients / 2 threads, simple protocol and extended protocol
     (``-M extended`` uses the unnamed statement, which pgbouncer's transaction mode
     supports; ``-M prepared`` would not work through pgbouncer 1.18);
   - single-client latency: pgbench -c 1 -S with ``--log``; p50/p95/p99 from every
     transaction's own time (simple and extended protocol);
   - bulk: ``SELECT * FROM bulk`` (1M rows) through pgbench -c 1 -t N (a C client that
     receives the whole result and discards it), rows/s and MB/s of DataRow bytes;
4. measures the CPU seconds the broker process (and pgbouncer) used during each case
   from /proc/<pid>/stat -- the most stable number on a shared machine -- and waits
   for the broker to finish sealing the recordings of one case before the next starts;
5. prints a markdown table and writes ``bench/results/<YYYY-MM-DD>-pg.md`` and ``.json``.

Everything listens on and connects to 127.0.0.1 only; every loop is bounded.
"""
from __future__ import annotations

import argparse
import importlib.util
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from jitgate import devstack  # noqa: E402
from jitgate.devstack import Postgres, demo_policy, dev_token, free_port, service_user, start_stack  # noqa: E402

RESULTS_DIR = REPO / "bench" / "results"
BENCH_DB = "bench"
BENCH_USER = "alice@example.com"
BENCH_GROUPS = ["sre"]
PATHS = ("direct", "pgbouncer", "broker")
CLK_TCK = os.sysconf("SC_CLK_TCK")

BENCH_MASKING = """\
    # The demo's column rules: the pgbench tables have none of these columns, so no value is
    # masked, but every statement still goes through the masking plan and lineage steps. The
    # demo's detectors are left out: they would scan (and redact) the bulk table's md5 text,
    # and the bulk case measures the no-masking path (bench_pg_masking.py measures masking).
    masking:
      clear_groups: [privacy-officers]
      rules:
        - columns: [email, "customers.phone"]
          strategy: partial
        - columns: [card_number, iban, ssn]
          strategy: partial
          keep_last: 4
"""
BENCH_TARGET = """
  bench:
    kind: postgres
    description: pgbench database for bench/run.py (the demo's guardrails and column masking rules)
    address: 127.0.0.1:{pg_port}
    database: bench
    username: {role}
    credential: env:JITGATE_DEMO_DB_PASSWORD
    allow:
      groups: [sre]
    guardrails:
      ddl: approve
      dml_unbounded: approve
      drop_database: deny
    approvals:
      approver_groups: [dba]
      required: 1
      ttl: 1h
      wait: 5m
{masking}"""


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- CPU accounting ------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may contain spaces or parentheses: split after the last ')'
    return raw[raw.rindex(")") + 2 :].split()


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    f = _stat_fields(pid)
    if f is None:
        return 0.0
    return (int(f[11]) + int(f[12])) / CLK_TCK  # utime, stime (fields 14 and 15 of stat)


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    f = _stat_fields(pid)
    if f is None:
        return 0.0, 0.0
    return int(f[11]) / CLK_TCK, int(f[12]) / CLK_TCK


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds of processes and all their live descendants (gunicorn workers, runuser children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(int(entry))
            if f is not None:
                children.setdefault(int(f[1]), []).append(int(entry))
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += proc_cpu(pid)
        todo.extend(children.get(pid, ()))
    return total


# --- endpoints -----------------------------------------------------------------------


@dataclass
class Endpoint:
    name: str
    host: str
    port: int
    user: str
    password: str
    sslmode: str
    dbname: str = BENCH_DB
    cpu_pid: int | None = None  # the proxy process whose CPU time we account (None for direct)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for k in [k for k in env if k.startswith("PG")]:
            del env[k]
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user, PGPASSWORD=self.password,
                   PGSSLMODE=self.sslmode, PGDATABASE=self.dbname, PGCONNECT_TIMEOUT="10")
        return env

    def psql(self, sql: str, timeout: float = 120) -> str:
        r = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql], env=self.env(),
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"psql via {self.name} failed: {r.stderr.strip()}")
        return r.stdout.strip()


# --- pgbouncer -----------------------------------------------------------------------


def ensure_pgbouncer() -> str:
    path = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    if path:
        return path
    say("pgbouncer is not installed: running `apt-get install -y pgbouncer`")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(["apt-get", "install", "-y", "pgbouncer"], env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        say("apt-get install failed; running `apt-get update` and trying again")
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "pgbouncer"], env=env, check=True, capture_output=True, timeout=600)
    path = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(path):
        raise RuntimeError("pgbouncer is still missing after apt-get install")
    return path


def tool_version(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.splitlines()[0].strip()
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


class PgBouncer:
    """pgbouncer in a temp dir, run as the stack's non-root service user (it refuses to run as root)."""

    def __init__(self, binary: str, pg: Postgres, cert: Path, key: Path):
        self.binary = binary
        self.pg = pg
        self.port = free_port()
        self.user = service_user()
        self.dir = Path(tempfile.mkdtemp(prefix="jitgate-bench-pgbouncer-"))
        self.cert, self.key = cert, key
        self.popen: subprocess.Popen | None = None

    @property
    def pidfile(self) -> Path:
        return self.dir / "pgbouncer.pid"

    @property
    def logfile(self) -> Path:
        return self.dir / "pgbouncer.log"

    def _own(self, path: Path, mode: int) -> None:
        os.chmod(path, mode)
        if self.user:
            shutil.chown(path, self.user, self.user)

    def start(self) -> "PgBouncer":
        d = self.dir
        shutil.copy(self.cert, d / "client.crt")
        shutil.copy(self.key, d / "client.key")
        (d / "userlist.txt").write_text(f'"{Postgres.BROKER_ROLE}" "{self.pg.broker_password}"\n')
        (d / "pgbouncer.ini").write_text(f"""\
[databases]
{BENCH_DB} = host=127.0.0.1 port={self.pg.port} dbname={BENCH_DB} user={Postgres.BROKER_ROLE}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {d / 'userlist.txt'}
pool_mode = transaction
default_pool_size = 10
max_client_conn = 100
ignore_startup_parameters = extra_float_digits
client_tls_sslmode = require
client_tls_cert_file = {d / 'client.crt'}
client_tls_key_file = {d / 'client.key'}
server_tls_sslmode = disable
logfile = {self.logfile}
pidfile = {self.pidfile}
log_connections = 0
log_disconnections = 0
""")
        for name, mode in (("client.crt", 0o644), ("client.key", 0o600), ("userlist.txt", 0o600), ("pgbouncer.ini", 0o600)):
            self._own(d / name, mode)
        self._own(d, 0o700)
        argv = [self.binary, str(d / "pgbouncer.ini")]
        if self.user:
            argv = ["runuser", "-u", self.user, "--", *argv]
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=open(d / "stdout.log", "ab"),
                                      stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {self.popen.returncode}: {self._logs()}")
            if self.pidfile.exists() and _answers(self.port):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"pgbouncer did not start within 20s: {self._logs()}")

    def _logs(self) -> str:
        out = []
        for p in (self.dir / "stdout.log", self.logfile):
            try:
                out.append(p.read_text(errors="replace")[-2000:])
            except OSError:
                pass
        return "\n".join(out)

    @property
    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)  # runuser and pgbouncer share the process group
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- pgbench -------------------------------------------------------------------------


def pgbench(ep: Endpoint, args: list[str], timeout: float) -> dict:
    argv = ["pgbench", "-n", *args, ep.dbname]
    r = subprocess.run(argv, env=ep.env(), capture_output=True, text=True, timeout=timeout)
    out = r.stdout + r.stderr
    if r.returncode != 0 or "aborted" in out:
        raise RuntimeError(f"pgbench via {ep.name} failed ({r.returncode}): {' '.join(argv)}\n{out[-3000:]}")

    def grab(pattern: str, cast=float):
        m = re.search(pattern, out)
        return cast(m.group(1)) if m else None

    return {
        "tps": grab(r"tps = ([\d.]+) \(without initial connection time\)"),
        "latency_avg_ms": grab(r"latency average = ([\d.]+) ms"),
        "transactions": grab(r"number of transactions actually processed: (\d+)", int),
        "initial_connection_ms": grab(r"initial connection time = ([\d.]+) ms"),
    }


def read_latencies_us(prefix: Path) -> list[int]:
    """pgbench --log lines: client_id transaction_no time_us script_no epoch epoch_us."""
    values: list[int] = []
    for path in sorted(prefix.parent.glob(prefix.name + ".*")):
        with open(path) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3:
                    values.append(int(parts[2]))
        path.unlink()
    return values


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


# --- the run -------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    stack: devstack.Stack
    bouncer: PgBouncer
    endpoints: dict[str, Endpoint]
    scratch: Path
    bulk_rows: int
    bulk_bytes: int
    paths: tuple[str, ...] = PATHS
    results: list[dict] = field(default_factory=list)

    @property
    def broker_pid(self) -> int:
        return broker_proc(self.stack).popen.pid

    def stack_pids(self) -> list[int]:
        return [p.popen.pid for p in self.stack.procs]

    def quiesce(self, label: str) -> dict:
        """After a broker case: wait until its sessions are sealed and the stack is idle again (bounded)."""
        start = time.monotonic()
        cpu0 = tree_cpu(self.stack_pids())
        spool = self.stack.home / "spool"
        deadline = start + 180
        while time.monotonic() < deadline and spool.exists() and any(spool.glob("*.jsonl")):
            time.sleep(0.2)
        # then until the broker and the functions use < 3% of a core over half a second
        quiet_deadline = time.monotonic() + 60
        prev = tree_cpu(self.stack_pids())
        while time.monotonic() < quiet_deadline:
            time.sleep(0.5)
            now = tree_cpu(self.stack_pids())
            if now - prev < 0.015:
                break
            prev = now
        info = {"seconds": round(time.monotonic() - start, 2), "cpu_s": round(tree_cpu(self.stack_pids()) - cpu0, 2)}
        if info["seconds"] > 1.5:
            say(f"  sealing after {label}: {info['seconds']}s, {info['cpu_s']} CPU s in broker+functions")
        return info

    def measure(self, ep: Endpoint, fn):
        cpu_pid = ep.cpu_pid
        c0 = proc_cpu_split(cpu_pid) if cpu_pid else None
        t0 = time.perf_counter()
        out = fn()
        out["wall_s"] = round(time.perf_counter() - t0, 3)
        if cpu_pid:
            c1 = proc_cpu_split(cpu_pid)
            out["proxy_cpu_user_s"] = round(c1[0] - c0[0], 3)
            out["proxy_cpu_sys_s"] = round(c1[1] - c0[1], 3)
            out["proxy_cpu_s"] = round(out["proxy_cpu_user_s"] + out["proxy_cpu_sys_s"], 3)
        return out

    def warm_up(self) -> None:
        say("warm-up (2 s per path, not reported)")
        for name in self.paths:
            ep = self.endpoints[name]
            pgbench(ep, ["-S", "-c", "2", "-j", "2", "-T", "2"], timeout=60)
            if name.startswith("broker"):
                self.quiesce("warm-up")

    def case_throughput(self, mode: str) -> dict:
        d = self.args.duration
        label = f"select-only, 8 clients, {mode} protocol"
        say(f"{label} ({d} s per path)")
        case = {"case": label, "kind": "throughput", "protocol": mode, "clients": 8, "duration_s": d, "paths": {}}
        for name in self.paths:
            ep = self.endpoints[name]
            r = self.measure(ep, lambda: pgbench(ep, ["-S", "-M", mode, "-c", "8", "-j", "2", "-T", str(d)], timeout=d + 120))
            if "proxy_cpu_s" in r and r["transactions"]:
                r["proxy_cpu_us_per_txn"] = round(r["proxy_cpu_s"] * 1e6 / r["transactions"], 1)
            case["paths"][name] = r
            say(f"  {name:9s} tps={r['tps']:.0f} lat={r['latency_avg_ms']:.3f} ms" +
                (f" proxy CPU {r['proxy_cpu_s']} s (user {r['proxy_cpu_user_s']}, sys {r['proxy_cpu_sys_s']}; "
                 f"{r.get('proxy_cpu_us_per_txn')} µs/txn)" if "proxy_cpu_s" in r else ""))
            if name.startswith("broker"):
                r["sealing"] = self.quiesce(label)
        return case

    def case_latency(self, mode: str) -> dict:
        d = max(2, round(self.args.duration / 2))
        label = f"single client, {mode} protocol"
        say(f"{label} ({d} s per path)")
        case = {"case": label, "kind": "latency", "protocol": mode, "clients": 1, "duration_s": d, "paths": {}}
        for name in self.paths:
            ep = self.endpoints[name]
            prefix = self.scratch / f"lat-{mode}-{name}"

            def run():
                r = pgbench(ep, ["-S", "-M", mode, "-c", "1", "-j", "1", "-T", str(d), "--log", f"--log-prefix={prefix}"],
                            timeout=d + 120)
                lat = sorted(read_latencies_us(prefix))
                r.update(samples=len(lat), p50_us=round(percentile(lat, 0.50), 1), p95_us=round(percentile(lat, 0.95), 1),
                         p99_us=round(percentile(lat, 0.99), 1), mean_us=round(statistics.fmean(lat), 1) if lat else None)
                return r

            r = self.measure(ep, run)
            if "proxy_cpu_s" in r and r["transactions"]:
                r["proxy_cpu_us_per_txn"] = round(r["proxy_cpu_s"] * 1e6 / r["transactions"], 1)
            case["paths"][name] = r
            say(f"  {name:9s} p50={r['p50_us']} p95={r['p95_us']} p99={r['p99_us']} µs ({r['samples']} samples)")
            if name.startswith("broker"):
                r["sealing"] = self.quiesce(label)
        return case

    def case_bulk(self) -> dict:
        reps = self.args.bulk_reps
        label = f"bulk SELECT of {self.bulk_rows:,} rows"
        say(f"{label} ({reps} runs per path)")
        script = self.scratch / "bulk.sql"
        script.write_text("SELECT * FROM bulk;\n")
        case = {"case": label, "kind": "bulk", "rows": self.bulk_rows, "wire_bytes": self.bulk_bytes, "reps": reps, "paths": {}}
        for name in self.paths:
            ep = self.endpoints[name]
            prefix = self.scratch / f"bulk-{name}"

            def run():
                r = pgbench(ep, ["-M", "simple", "-c", "1", "-j", "1", "-t", str(reps), "-f", str(script), "--log",
                                 f"--log-prefix={prefix}"], timeout=600)
                times = sorted(read_latencies_us(prefix))
                best = statistics.median(times) / 1e6
                r.update(runs_s=[round(t / 1e6, 3) for t in times], median_s=round(best, 3),
                         rows_per_s=round(self.bulk_rows / best), mb_per_s=round(self.bulk_bytes / best / 1e6, 1))
                return r

            r = self.measure(ep, run)
            if "proxy_cpu_s" in r:
                r["proxy_cpu_ns_per_row"] = round(r["proxy_cpu_s"] * 1e9 / (self.bulk_rows * reps), 1)
            case["paths"][name] = r
            say(f"  {name:9s} median {r['median_s']} s, {r['rows_per_s']:,} rows/s, {r['mb_per_s']} MB/s" +
                (f", proxy CPU {r['proxy_cpu_s']} s ({r['proxy_cpu_ns_per_row']} ns/row)" if "proxy_cpu_s" in r else ""))
            if name.startswith("broker"):
                r["sealing"] = self.quiesce(label)
        return case

    def profile(self, out_path: Path) -> str | None:
        """Sample the broker with py-spy during a select-only run (simple, then extended) and a bulk run."""
        pyspy = shutil.which("py-spy")
        if not pyspy:
            say("py-spy is not installed (pip install py-spy): skipping the profile")
            return None
        ep = self.endpoints["broker"]
        d = self.args.duration
        script = self.scratch / "bulk.sql"
        script.write_text("SELECT * FROM bulk;\n")
        workloads = [
            (f"select-only, 8 clients, simple protocol, {d} s", ["-S", "-M", "simple", "-c", "8", "-j", "2", "-T", str(d)]),
            (f"select-only, 8 clients, extended protocol, {d} s", ["-S", "-M", "extended", "-c", "8", "-j", "2", "-T", str(d)]),
            (f"bulk SELECT of {self.bulk_rows:,} rows x {self.args.bulk_reps}",
             ["-M", "simple", "-c", "1", "-j", "1", "-t", str(self.args.bulk_reps), "-f", str(script)]),
        ]
        sections = [
            "# py-spy profile of the broker process (py-spy record --gil --nonblocking, idle time excluded)",
            "",
            "Only samples of the thread holding the GIL count, so time blocked in a syscall (and time the broker",
            "sits preempted inside send(), which dominates a wall-clock profile on a busy 2-core machine) is left",
            "out: what remains is where the broker's Python CPU goes. 'self' = the function itself was on top of",
            "the stack; 'total' = the function was anywhere on the stack.",
        ]
        for label, args in workloads:
            say(f"profiling the broker: {label}")
            raw = self.scratch / "profile.raw"
            raw.unlink(missing_ok=True)
            spy = subprocess.Popen([pyspy, "record", "-p", str(self.broker_pid), "-f", "raw", "-o", str(raw), "-r", "200",
                                    "--nonblocking", "--gil", "--threads"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(1.0)
                pgbench(ep, args, timeout=d + 600)
            finally:
                spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait(5)
            self.quiesce("profile")
            sections += ["", f"## {label}", "", summarize_pyspy(raw)]
        text = "\n".join(sections) + "\n"
        out_path.write_text(text)
        return text

    def run(self) -> list[dict]:
        self.warm_up()
        for mode in ("simple", "extended"):
            self.results.append(self.case_throughput(mode))
        for mode in ("simple", "extended"):
            self.results.append(self.case_latency(mode))
        self.results.append(self.case_bulk())
        return self.results


# --- setup ---------------------------------------------------------------------------


@dataclass
class FloorRelay:
    port: int
    popen: subprocess.Popen

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def start_floor_relay(mode: str, pg_port: int, cert: Path, key: Path, scratch: Path) -> FloorRelay:
    """bench/floor_relay.py on a free port, answering once it accepts connections."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(scratch / f"floor-{mode}.log", "wb")
    popen = subprocess.Popen([sys.executable, str(REPO / "bench" / "floor_relay.py"), "--mode", mode, "--listen", str(port),
                              "--upstream", f"127.0.0.1:{pg_port}", "--cert", str(cert), "--key", str(key)],
                             stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not _answers(port):
        if popen.poll() is not None or time.monotonic() > deadline:
            popen.kill()
            raise RuntimeError(f"floor relay ({mode}) did not start: {(scratch / f'floor-{mode}.log').read_text()[-2000:]}")
        time.sleep(0.1)
    return FloorRelay(port, popen)


def broker_proc(stack: devstack.Stack) -> devstack.Proc:
    for proc in stack.procs:
        if proc.name == "broker":
            return proc
    return stack.procs[-1]


def uvloop_site(scratch: Path) -> Path:
    """A sitecustomize that makes asyncio.run() use uvloop: measures the broker on uvloop without changing it."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        raise SystemExit("--uvloop needs uvloop: pip install uvloop") from None
    site = scratch / "uvloop-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import asyncio\nimport uvloop\nasyncio.set_event_loop_policy(uvloop.EventLoopPolicy())\n")
    return site


def setup_bench_db(stack: devstack.Stack, scale: int, rows: int) -> int:
    pg = stack.pg
    role = Postgres.BROKER_ROLE
    if not pg.psql(f"SELECT 1 FROM pg_database WHERE datname = '{BENCH_DB}'"):
        pg.psql(f"CREATE DATABASE {BENCH_DB} OWNER {role}")
    say(f"pgbench -i -s {scale} (database {BENCH_DB}, owner {role})")
    r = subprocess.run(["pgbench", "-i", "-q", "-s", str(scale), "-h", str(pg.socket_dir), "-p", str(pg.port), "-U", role,
                        BENCH_DB], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"pgbench -i failed: {r.stderr}")
    say(f"creating table bulk ({rows:,} rows of int + md5 text)")
    r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(pg.socket_dir), "-p", str(pg.port),
                        "-U", role, "-d", BENCH_DB, "-c", "DROP TABLE IF EXISTS bulk",
                        "-c", f"CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS payload FROM generate_series(1, {rows}) g",
                        "-c", "VACUUM ANALYZE bulk"], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"creating the bulk table failed: {r.stderr}")
    # Bytes of the DataRow messages on the wire (text format): per row 1 type + 4 length + 2 column count,
    # then per column a 4-byte length and the text value.
    payload = int(pg.psql("SELECT sum(octet_length(id::text) + octet_length(payload)) FROM bulk", BENCH_DB))
    return payload + rows * (1 + 4 + 2 + 2 * 4)


def summarize_pyspy(raw: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed-stack output."""
    self_counts: dict[str, int] = {}
    total_counts: dict[str, int] = {}
    threads: dict[str, int] = {}
    samples = cut_short = 0
    try:
        lines = raw.read_text(errors="replace").splitlines()
    except OSError:
        return "(no samples: py-spy wrote nothing)"
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        thread = next((f.partition(": ")[2] or f for f in frames if f.startswith("thread ")), "?")
        threads[thread] = threads.get(thread, 0) + n
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        if not frames[0].startswith(("_run_module_as_main", "_bootstrap ")):
            cut_short += n  # sampled mid-change (--nonblocking): the frames below these were not read
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + n
        for f in set(frames):
            total_counts[f] = total_counts.get(f, 0) + n
    if not samples:
        return "(no samples)"
    short = lambda f: f.replace(str(REPO) + "/", "").replace(sys.prefix + "/lib/", "")  # noqa: E731
    by_thread = ", ".join(f"{name} {100 * n / samples:.1f}%" for name, n in sorted(threads.items(), key=lambda kv: -kv[1]))
    out = [f"{samples} samples; by thread: {by_thread}; stacks cut short by --nonblocking sampling (counted "
           f"under the frames that were read): {100 * cut_short / samples:.1f}%", "",
           "| self % | function |", "|---:|---|"]
    for f, n in sorted(self_counts.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"| {100 * n / samples:.1f} | `{short(f)}` |")
    out += ["", "| total % | function |", "|---:|---|"]
    for f, n in sorted(total_counts.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"| {100 * n / samples:.1f} | `{short(f)}` |")
    return "\n".join(out)


def ensure_compiled() -> str:
    """The compiled parts the broker runs in production (broker/pg/_framing.c, jitgate/masking/_rowcore.c),
    built in place when this tree has not been built (`pip install -e .` builds them); says which ran."""
    from broker.pg import codec
    from jitgate.masking import rows

    if codec._framing is None or rows._rowcore is None:
        say("building the compiled framing and row core in place (python setup.py build_ext --inplace)")
        result = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace", "--force"], cwd=REPO,
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            say(f"  could not build them; the broker runs the pure-Python reference: {result.stderr[-500:]}")
    # What the broker (a new process) will load: built, and not older than its source (jitgate/native.py).
    probe = subprocess.run([sys.executable, "-c", "from broker.pg import codec; from jitgate.masking import rows; "
                            "print(codec._framing is not None, rows._rowcore is not None)"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    loaded = (probe.stdout.split() + ["False", "False"])[:2]
    names = [f"{label} {'compiled' if found == 'True' else 'pure Python'}"
             for label, found in zip(("message framing", "row masking core"), loaded)]
    return ", ".join(names)


def machine_info() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, AttributeError):
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "memory": mem, "kernel": platform.release(),
            "python": platform.python_version()}


# --- report --------------------------------------------------------------------------


def _fmt(v, digits=0) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and digits == 0 and abs(v) >= 100:
        return f"{v:,.0f}"
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return f"{v:,}"
    return f"{v:,.{digits}f}" if digits else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}")


def _ratio(a, b) -> str:
    if a is None or b is None or not b:
        return "–"
    return f"{a / b:.2f}×"


# Experiment paths shown as extra columns after the broker's: (path, column title).
EXTRA_PATHS = (("broker-plain", "broker, no TLS"), ("floor-streams", "floor: streams relay"),
               ("floor-protocol", "floor: protocol relay"))
PROXIES = ("pgbouncer", "broker", *(name for name, _ in EXTRA_PATHS))


def table_rows(results: list[dict], all_paths: tuple[str, ...] = PATHS) -> list[dict]:
    rows = []

    def add(case, metric, key, digits=0, paths=all_paths):
        vals = {p: results_path(case, p).get(key) if p in paths else None for p in all_paths}
        rows.append({"case": case["case"], "metric": metric, **vals,
                     "broker_vs_direct": _ratio(vals["broker"], vals["direct"]),
                     "broker_vs_pgbouncer": _ratio(vals["broker"], vals["pgbouncer"]), "digits": digits})

    for case in results:
        if case["kind"] == "throughput":
            add(case, "throughput, tps ↑", "tps")
            add(case, "latency avg, ms ↓", "latency_avg_ms", 3)
            add(case, "proxy CPU per txn, µs ↓", "proxy_cpu_us_per_txn", 1, paths=PROXIES)
        elif case["kind"] == "latency":
            add(case, "p50, µs ↓", "p50_us", 1)
            add(case, "p95, µs ↓", "p95_us", 1)
            add(case, "p99, µs ↓", "p99_us", 1)
            add(case, "proxy CPU per txn, µs ↓", "proxy_cpu_us_per_txn", 1, paths=PROXIES)
        elif case["kind"] == "bulk":
            add(case, "time (median), s ↓", "median_s", 3)
            add(case, "rows/s ↑", "rows_per_s")
            add(case, "MB/s (DataRow bytes) ↑", "mb_per_s", 1)
            add(case, "proxy CPU per row, ns ↓", "proxy_cpu_ns_per_row", 1, paths=PROXIES)
    return rows


def results_path(case: dict, path: str) -> dict:
    return case["paths"].get(path, {})


def render_markdown(meta: dict, results: list[dict]) -> str:
    plain = "broker-plain" in meta["paths"]
    floor = "floor-streams" in meta["paths"]
    extras = [(name, title) for name, title in EXTRA_PATHS if name in meta["paths"]]
    lines = [
        f"# jitgate broker benchmark — PostgreSQL — {meta['date']}",
        "",
        f"- command: `{meta['command']}`",
        f"- machine: {meta['machine']['nproc']} CPUs ({meta['machine']['cpu_model']}), {meta['machine']['memory']} RAM, "
        f"Linux {meta['machine']['kernel']}, shared with other work (load average {meta['loadavg_before'][0]} before, "
        f"{meta['loadavg_after'][0]} after); cases run one after another",
        f"- versions: {meta['versions']['postgresql']}; {meta['versions']['pgbouncer']}; {meta['versions']['pgbench']}; "
        f"Python {meta['machine']['python']} (broker); jitgate commit {meta['commit']}",
        f"- data: pgbench scale {meta['scale']} (select-only: one primary-key lookup per transaction); "
        f"bulk table of {meta['bulk_rows']:,} rows (int, md5 text), {meta['bulk_wire_mb']:.1f} MB of DataRow messages",
        f"- pgbench: 8 clients / 2 threads for {meta['duration']} s per path; single client for "
        f"{max(2, round(meta['duration'] / 2))} s per path; bulk {meta['bulk_reps']} runs per path (median)",
        "",
        "| case | metric | direct | pgbouncer | broker |" + "".join(f" {title} |" for _, title in extras)
        + " broker ÷ direct | broker ÷ pgbouncer |",
        "|---|---|---:|---:|---:|" + "---:|" * len(extras) + "---:|---:|",
    ]
    last_case = None
    for row in table_rows(results, tuple(meta["paths"])):
        case = row["case"] if row["case"] != last_case else ""
        last_case = row["case"]
        d = row["digits"]
        lines.append(f"| {case} | {row['metric']} | {_fmt(row['direct'], d)} | {_fmt(row['pgbouncer'], d)} | "
                     f"{_fmt(row['broker'], d)} |" + "".join(f" {_fmt(row[name], d)} |" for name, _ in extras)
                     + f" {row['broker_vs_direct']} | {row['broker_vs_pgbouncer']} |")
    lines += [
        "",
        "Notes:",
        "- **direct**: libpq over TCP 127.0.0.1 to PostgreSQL, *no TLS* (the demo PostgreSQL runs with ssl off), "
        "SCRAM login as the broker role.",
        "- **pgbouncer**: client side TLS (`client_tls_sslmode=require`, the broker's dev certificate), "
        "`pool_mode=transaction`, SCRAM auth_file; upstream plain TCP 127.0.0.1. `-M extended` uses the unnamed "
        "statement, which works in transaction mode; `-M prepared` (named statements) would not with pgbouncer "
        f"{meta['versions']['pgbouncer'].split()[-1] if meta['versions']['pgbouncer'] != 'unknown' else ''}.",
        "- **broker**: client side TLS (sslmode=require), OIDC token as the password (user alice@example.com, "
        "group sre), upstream plain TCP 127.0.0.1 with the held credential; every statement is classified "
        "(pglast) and recorded into the spool (recording on); the bench target carries the demo's guardrails and column "
        "masking rules (email, customers.phone, card_number, iban, ssn: columns the pgbench tables do not have, so "
        "nothing is masked, but the masking plan and lineage steps run for every statement); the demo's detectors "
        "are left out, since they would redact the bulk table's md5 text (masking is measured by bench_pg_masking.py).",
        *(["- **experiment** (`--no-masking-rules`): the bench target has NO masking rules in this run, so the "
           "masking plan and lineage steps do not run; compare with a run with the rules to see what they cost."]
          if not meta.get("masking_rules", True) else []),
        f"- broker event loop: {meta['broker_event_loop']}; {meta.get('broker_compiled', 'compiled parts not recorded')}.",
        *(["- **broker, no TLS** (experiment, `--broker-plain`): the same broker with JITGATE_TLS_REQUIRED=false and "
           "the client on sslmode=disable, to show what client-side TLS costs the broker; ratios use the TLS broker."]
          if plain else []),
        *(["- **floor** (experiment, `--floor`): `bench/floor_relay.py`, a Python byte relay with none of the "
           "broker's work (TLS terminated with the broker's certificate, bytes copied both ways, the client logs in "
           "to PostgreSQL through it), on uvloop like the broker: *streams* is built as the broker's relay is "
           "(asyncio streams, a task per direction), *protocol* on bare `asyncio.Protocol` callbacks. Broker minus "
           "floor is the broker's own work; floor minus pgbouncer is the price of a Python event loop."]
          if floor else []),
        "- pgbouncer and broker are measured with TLS, direct without: the TLS cost is part of both proxies' numbers.",
        "- ↑ higher is better, ↓ lower is better; a ratio is broker's value divided by the other path's value.",
        "- proxy CPU: user+system CPU seconds of the broker process (all threads) or the pgbouncer process, "
        "read from /proc/<pid>/stat around each case, divided by transactions (or rows): the steadiest number on a "
        "shared 2-core machine, where client, proxy and PostgreSQL compete for the same cores.",
        "- latency percentiles come from every transaction's own time in `pgbench --log`; the bulk case is "
        "`SELECT * FROM bulk` run by pgbench (C client; the whole result is received, then discarded).",
        "- after each broker case the run waits until the session recordings are sealed and the stack is idle "
        "again, so sealing work never overlaps the next case.",
        "",
    ]
    return "\n".join(lines)


def git_commit() -> str:
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


# --- main ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark jitgate's broker against direct PostgreSQL and pgbouncer.")
    parser.add_argument("--duration", type=int, default=20, help="seconds per pgbench throughput case (default 20)")
    parser.add_argument("--quick", action="store_true", help="short smoke run: ~3 s cases and 100k rows")
    parser.add_argument("--rows", type=int, default=None, help="rows in the bulk table (default 1,000,000; 100,000 with --quick)")
    parser.add_argument("--bulk-reps", type=int, default=None, help="bulk SELECT runs per path (default 3; 2 with --quick)")
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale factor (default 10)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where to write <date>-pg.md/.json (default bench/results)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--profile", action="store_true",
                        help="after the cases, sample the broker with py-spy and write <date>-pg-profile.md")
    parser.add_argument("--uvloop", action="store_true",
                        help="experiment: run the broker on uvloop (pip install uvloop) via a sitecustomize; "
                             "results are written as <date>-pg-uvloop.*")
    parser.add_argument("--broker-plain", action="store_true",
                        help="experiment: also measure the broker without client TLS (JITGATE_TLS_REQUIRED=false)")
    parser.add_argument("--floor", action="store_true",
                        help="experiment: also measure bench/floor_relay.py, a Python TLS byte relay with none of the "
                             "broker's work (streams and protocol variants): the floor of any asyncio relay -> <date>-pg-floor.*")
    parser.add_argument("--no-masking-rules", action="store_true",
                        help="experiment: the bench target without the demo's column masking rules (no masking plan "
                             "or lineage step), to show what they cost -> <date>-pg-nomask.*")
    parser.add_argument("--keep-home", action="store_true", help="keep the temp stack home (logs, recordings) for inspection")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 3 if args.duration == 20 else args.duration
    args.rows = args.rows or (100_000 if args.quick else 1_000_000)
    args.bulk_reps = args.bulk_reps or (2 if args.quick else 3)
    if args.duration < 1:
        parser.error("--duration must be at least 1")

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    load_before = os.getloadavg()
    for tool in ("pgbench", "psql"):
        if not shutil.which(tool):
            print(f"{tool} is not installed (apt-get install postgresql-client)", file=sys.stderr)
            return 2
    bouncer_bin = ensure_pgbouncer()
    compiled = ensure_compiled()

    home = Path(tempfile.mkdtemp(prefix="jitgate-bench-"))
    os.chmod(home, 0o755)  # the PostgreSQL service user must reach <home>/postgres
    scratch = Path(tempfile.mkdtemp(prefix="jitgate-bench-scratch-"))
    stack = None
    bouncer = None
    floor_relays: list[FloorRelay] = []
    try:
        extra_env = {}
        if args.broker_plain:
            extra_env["JITGATE_TLS_REQUIRED"] = "false"
        if args.uvloop:
            extra_env["PYTHONPATH"] = os.pathsep.join([str(uvloop_site(scratch)), str(REPO), os.environ.get("PYTHONPATH", "")])
        say(f"starting the local stack in {home}" + (" (broker on uvloop)" if args.uvloop else ""))
        stack = start_stack(home, extra_env=extra_env)
        if args.uvloop and "uvloop" not in Path(f"/proc/{broker_proc(stack).popen.pid}/maps").read_text():
            raise RuntimeError("--uvloop: the broker did not load uvloop")
        pg = stack.pg
        # Add the bench target; the broker and authorize reload the policy file for new sessions.
        stack.policy_path.write_text(demo_policy(stack.issuer.issuer, pg) + BENCH_TARGET.format(
            pg_port=pg.port, role=Postgres.BROKER_ROLE, masking="" if args.no_masking_rules else BENCH_MASKING))
        bulk_bytes = setup_bench_db(stack, args.scale, args.rows)

        cert, key = home / "tls" / "broker-dev.crt", home / "tls" / "broker-dev.key"
        say(f"starting pgbouncer ({tool_version([bouncer_bin, '--version'])})")
        bouncer = PgBouncer(bouncer_bin, pg, cert, key).start()

        token = dev_token(stack.issuer.issuer, BENCH_USER, BENCH_GROUPS, ttl=3600)
        endpoints = {
            "direct": Endpoint("direct", "127.0.0.1", pg.port, Postgres.BROKER_ROLE, pg.broker_password, "disable"),
            "pgbouncer": Endpoint("pgbouncer", "127.0.0.1", bouncer.port, Postgres.BROKER_ROLE, pg.broker_password,
                                  "require", cpu_pid=bouncer.pid),
            "broker": Endpoint("broker", "127.0.0.1", stack.broker_port, BENCH_USER, token, "require",
                               cpu_pid=broker_proc(stack).popen.pid),
        }
        if args.floor:
            for mode in ("streams", "protocol"):
                relay = start_floor_relay(mode, pg.port, cert, key, scratch)
                floor_relays.append(relay)
                endpoints[f"floor-{mode}"] = Endpoint(f"floor-{mode}", "127.0.0.1", relay.port, Postgres.BROKER_ROLE,
                                                      pg.broker_password, "require", cpu_pid=relay.popen.pid)
        if args.broker_plain:
            endpoints["broker-plain"] = Endpoint("broker-plain", "127.0.0.1", stack.broker_port, BENCH_USER, token,
                                                 "disable", cpu_pid=broker_proc(stack).popen.pid)
        for ep in endpoints.values():  # every path answers, and over TLS where it should
            got = ep.psql("SELECT count(*) FROM pgbench_branches")
            if got != str(args.scale):
                raise RuntimeError(f"{ep.name}: unexpected answer {got!r}")
        say("all three paths answer: direct (no TLS), pgbouncer (TLS), broker (TLS, recording on)")

        bench = Bench(args, stack, bouncer, endpoints, scratch, args.rows, bulk_bytes, paths=tuple(endpoints))
        results = bench.run()

        now = datetime.datetime.now()
        meta = {
            "date": now.strftime("%Y-%m-%d"),
            "timestamp": now.isoformat(timespec="seconds"),
            "command": "python bench/run.py" + ("" if not argv and len(sys.argv) <= 1 else " " + " ".join(argv or sys.argv[1:])),
            "machine": machine_info(),
            "versions": {
                "postgresql": pg.psql("SELECT version()").split(" on ")[0],
                "pgbouncer": tool_version([bouncer_bin, "--version"]),
                "pgbench": tool_version(["pgbench", "--version"]),
            },
            "commit": git_commit(),
            "duration": args.duration,
            "scale": args.scale,
            "bulk_rows": args.rows,
            "bulk_reps": args.bulk_reps,
            "bulk_wire_mb": bulk_bytes / 1e6,
            "quick": args.quick,
            "paths": list(endpoints),
            "masking_rules": not args.no_masking_rules,
            "broker_compiled": compiled,
            "broker_event_loop": "uvloop (experiment via sitecustomize)" if args.uvloop else (
                "uvloop (installed; broker/main.py uses it)" if importlib.util.find_spec("uvloop") else "asyncio"),
            "elapsed_s": None,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        }
        meta["elapsed_s"] = round(time.monotonic() - started, 1)
        md = render_markdown(meta, results)
        print()
        print(md)
        if not args.no_write:
            args.out.mkdir(parents=True, exist_ok=True)
            stem = (f"{meta['date']}-pg" + ("-uvloop" if args.uvloop else "") + ("-plain" if args.broker_plain else "") + ("-floor" if args.floor else "")
                    + ("-nomask" if args.no_masking_rules else "")
                    + ("-quick" if args.quick else ""))
            (args.out / f"{stem}.md").write_text(md)
            table = [{k: v for k, v in row.items() if k != "digits"} for row in table_rows(results, tuple(endpoints))]
            (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "table": table, "cases": results}, indent=2) + "\n")
            say(f"wrote {args.out / (stem + '.md')} and .json ({meta['elapsed_s']} s in all)")
        if args.profile:
            target = (scratch if args.no_write else args.out) / (f"{meta['date']}-pg" + ("-uvloop" if args.uvloop else "")
                                                                  + "-profile" + ("-quick" if args.quick else "") + ".md")
            text = bench.profile(target)
            if text is not None and args.no_write:
                print(text)
            elif text is not None:
                say(f"wrote {target}")
        return 0
    finally:
        for relay in floor_relays:
            relay.stop()
        if bouncer is not None:
            bouncer.stop()
        if stack is not None:
            say("stopping the stack")
            stack.stop()
            pg_root = stack.pg.root
            if pg_root.name.startswith("jitgate-pg-") or pg_root.parent == home:
                shutil.rmtree(pg_root, ignore_errors=True)  # the cluster (with the 1M-row table) lives outside home
        shutil.rmtree(scratch, ignore_errors=True)
        if args.keep_home:
            say(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
