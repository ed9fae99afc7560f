#!/usr/bin/env python3
"""SSH through the broker against plain OpenSSH, side by side in one run.

    python bench/bench_ssh.py                    # 100 MiB x 3 per path, 200 keystrokes per path (~1-2 minutes)
    python bench/bench_ssh.py --quick            # 20 MiB x 1, 50 keystrokes -> <date>-ssh-quick.*
    python bench/bench_ssh.py --profile before   # also sample the broker with py-spy -> <date>-ssh-profile-before.md
    python bench/bench_ssh.py --no-write         # print only

What it does, sequentially (the machine is small and shared: never two cases at once):

1. starts the local stack (``jitgate.devstack.start_stack``) in a temp home and two real
   OpenSSH sshds (tests/ssh/sshd.py: root sshd on 127.0.0.1, login user jitgate-ssh): the
   target, and a plain jump host; adds a ``bench-vm`` SSH target to the stack's policy;
2. three paths to the target, all with the OpenSSH client:
   - **direct**: the held key, straight to the target's sshd;
   - **jump**: ``ProxyJump`` through the plain jump sshd (``ssh -J``), the bastion a user
     would otherwise pick: one more SSH hop, no recording, no guardrails;
   - **broker**: the OIDC token as the password through the broker, which decides the command,
     relays, hashes and records (terminal output as asciicast events, exec output up to 1 MiB);
3. throughput: ``ssh HOST 'head -c 100M /dev/zero' > /dev/null`` per path, interleaved;
   wall time includes the SSH handshake(s) and, for the broker, the sign-in; plus the CPU
   seconds of the client (getrusage) and of the broker (/proc) per run, steadier than MB/s here;
4. keystroke echo latency in a PTY: one interactive shell per path runs ``cat``; each of N
   single keystrokes is timed from the write to the moment its echo is read back; p50/p95/p99;
5. prints a markdown table with the ratios to direct and writes
   ``bench/results/<YYYY-MM-DD>-ssh.md`` and ``.json`` (with the machine's load average).

``--profile LABEL`` samples the broker with ``py-spy record --gil --nonblocking`` (as bench/run.py
does) during the broker's throughput runs and, separately, its echo run.

Everything listens on and connects to 127.0.0.1 only; every loop is bounded.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from jitgate.devstack import dev_token, start_stack  # noqa: E402
from run import broker_proc, machine_info, proc_cpu, summarize_pyspy  # noqa: E402
from tests.ssh.sshd import LOGIN_USER, start_sshd  # noqa: E402

COMMON = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
PATHS = ("direct", "jump", "broker")
RESULTS_DIR = REPO / "bench" / "results"


def target_yaml(sshd) -> str:
    return f"""
  bench-vm:
    kind: ssh
    address: 127.0.0.1:{sshd.port}
    username: {LOGIN_USER}
    credential: file:{sshd.client_key}
    host_key: "{sshd.host_key_line}"
    allow:
      groups: [sre]
"""


class Paths:
    def __init__(self, stack, sshd, jump, work: Path):
        self.stack, self.sshd, self.jump = stack, sshd, jump
        self.broker_port = int(stack.broker_info["ssh"].rpartition(":")[2])
        self.broker_pid = broker_proc(stack).popen.pid
        askpass = work / "askpass.sh"
        askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$JITGATE_BENCH_TOKEN"\n')
        os.chmod(askpass, 0o755)
        self.askpass = askpass

    def argv(self, path: str, *, tty: bool = False) -> tuple[list[str], dict]:
        env = dict(os.environ, TERM="xterm")
        flags = ["-tt"] if tty else []
        direct = ["-o", "BatchMode=yes", "-i", str(self.sshd.client_key), "-p", str(self.sshd.port), "-l", LOGIN_USER]
        if path == "direct":
            return (["ssh", *flags, *COMMON, *direct, "127.0.0.1"], env)
        if path == "jump":
            # what -J does (ssh -W through the jump host), spelled out so the jump hop gets its own key
            hop = shlex.join(["ssh", *COMMON, "-o", "BatchMode=yes", "-i", str(self.jump.client_key),
                              "-p", str(self.jump.port), "-l", LOGIN_USER, "-W", "%h:%p", "127.0.0.1"])
            return (["ssh", *flags, *COMMON, "-o", f"ProxyCommand={hop}", *direct, "127.0.0.1"], env)
        env.update(SSH_ASKPASS=str(self.askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0",
                   JITGATE_BENCH_TOKEN=dev_token(self.stack.issuer.issuer, "bench@example.com", ["sre"]))
        return (["ssh", *flags, *COMMON, "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
                 "-p", str(self.broker_port), "-l", "bench@example.com+bench-vm", "127.0.0.1"], env)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def thread_cpu(pid: int, tid: int) -> float:
    """User + system CPU seconds of one thread (the broker's event loop is its main thread)."""
    try:
        fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_ns(pid: int, tid: int) -> int:
    """Nanoseconds one thread has run on a CPU (schedstat: finer than the 10 ms ticks of stat)."""
    try:
        return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


# the broker's event loop, a part of the "broker" column (which counts all its threads): one core's budget
LOOP = "broker loop"


def throughput(paths: Paths, path: str, mib: int) -> tuple[float, dict[str, float]]:
    """MB/s of one run, and the CPU seconds the client (and the broker) spent on it. sshd's time is not
    counted: its per-connection processes could not be attributed to one run reliably here."""
    argv, env = paths.argv(path)
    meters = {"client": children_cpu}
    if path == "broker":
        meters["broker"] = lambda: proc_cpu(paths.broker_pid)
        meters[LOOP] = lambda: thread_cpu(paths.broker_pid, paths.broker_pid)
    before = {k: m() for k, m in meters.items()}
    started = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        proc = subprocess.run(argv + [f"head -c {mib}M /dev/zero"], env=env, stdout=sink, stderr=subprocess.PIPE, timeout=600)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{path} throughput run failed: {proc.stderr.decode(errors='replace')}")
    return mib * 1024 * 1024 / elapsed / 1e6, {k: round(m() - before[k], 3) for k, m in meters.items()}


def echo_latency(paths: Paths, path: str, keystrokes: int) -> tuple[list[float], float | None]:
    """Echo times in ms, and for the broker the CPU µs its event loop spent per keystroke (both
    directions, the recording included), from schedstat around the keystrokes alone."""
    import pexpect

    argv, env = paths.argv(path, tty=True)
    child = pexpect.spawn(argv[0], argv[1:], env=env, dimensions=(24, 80), timeout=30)
    child.expect(rb"\$ $")
    child.sendline(b"exec cat")
    child.expect(b"exec cat\r\n")
    time.sleep(0.3)
    fd = child.child_fd
    samples = []
    loop_before = thread_ns(paths.broker_pid, paths.broker_pid) if path == "broker" else 0
    for i in range(keystrokes):
        key = b"abcdefghijklmnopqrstuvwxyz"[i % 26 : i % 26 + 1]
        started = time.perf_counter()
        os.write(fd, key)
        got = b""
        deadline = started + 10
        while key not in got:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.perf_counter()))
            if not ready:
                raise SystemExit(f"{path}: no echo for keystroke {i}")
            got += os.read(fd, 1024)
        samples.append((time.perf_counter() - started) * 1000)
        time.sleep(0.005)
    loop_us = None
    if path == "broker":
        loop_us = (thread_ns(paths.broker_pid, paths.broker_pid) - loop_before) / 1000 / keystrokes
    child.send(b"\r")
    child.sendcontrol("d")  # cat ends on end-of-file, and with it (exec) the shell
    child.expect(pexpect.EOF)
    child.close()
    return samples, loop_us


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class Profiler:
    """py-spy on the broker, one raw file per labelled section (only the broker's runs are sampled)."""

    def __init__(self, pid: int, work: Path):
        self.pid, self.work = pid, work
        self.pyspy = shutil.which("py-spy")
        if not self.pyspy:
            raise SystemExit("--profile needs py-spy: pip install py-spy")
        self.spy: subprocess.Popen | None = None
        self.raws: dict[str, Path] = {}

    def start(self, section: str) -> None:
        raw = self.work / f"profile-{section}-{len(self.raws)}.raw"
        self.raws.setdefault(section, raw)
        self.spy = subprocess.Popen([self.pyspy, "record", "-p", str(self.pid), "-f", "raw", "-o", str(raw), "-r", "500",
                                     "--nonblocking", "--gil"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)

    def stop(self) -> None:
        spy, self.spy = self.spy, None
        if spy is None:
            return
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keystrokes", type=int, default=200)
    parser.add_argument("--profile", metavar="LABEL", help="sample the broker with py-spy -> <date>-ssh-profile-LABEL.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.quick:
        args.mib, args.runs, args.keystrokes = 20, 1, 50
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark starts its own sshds")
    command = "python3 bench/bench_ssh.py" + "".join(f" {a}" for a in sys.argv[1:])

    work = Path(tempfile.mkdtemp(prefix="jitgate-bench-ssh-"))
    os.chmod(work, 0o755)
    load_before = os.getloadavg()
    print("starting the stack and two sshds...", flush=True)
    stack = start_stack(work / "home")
    sshd = start_sshd(work / "sshd")
    jump = start_sshd(work / "jump")
    profiler = Profiler(broker_proc(stack).popen.pid, work) if args.profile else None
    cpu: dict[str, list[dict[str, float]]] = {p: [] for p in PATHS}
    try:
        with open(stack.policy_path, "a") as fh:
            fh.write(target_yaml(sshd))
        time.sleep(0.1)
        paths = Paths(stack, sshd, jump, work)
        rates: dict[str, list[float]] = {p: [] for p in PATHS}
        for run in range(args.runs):
            for path in PATHS:
                if path == "broker" and profiler:
                    profiler.start("bulk")
                rate, spent = throughput(paths, path, args.mib)
                if path == "broker" and profiler:
                    profiler.stop()
                rates[path].append(rate)
                cpu[path].append(spent)
                print(f"  throughput run {run + 1} {path:6}: {rate:8.1f} MB/s", flush=True)
        latency = {}
        loop_us_per_key = None
        for path in PATHS:
            if path == "broker" and profiler:
                profiler.start("echo")
            latency[path], per_key = echo_latency(paths, path, args.keystrokes)
            if per_key is not None:
                loop_us_per_key = per_key
            if path == "broker" and profiler:
                profiler.stop()
            print(f"  echo {path:6}: p50 {pct(latency[path], 50):.3f} ms  p95 {pct(latency[path], 95):.3f} ms"
                  + (f"  broker loop CPU {per_key:.0f} µs per key" if per_key is not None else ""), flush=True)
    finally:
        if profiler:
            profiler.stop()
        jump.stop()
        sshd.stop()
        stack.stop()
    load_after = os.getloadavg()

    today = datetime.date.today().isoformat()
    best = {p: max(v) for p, v in rates.items()}
    med = {p: statistics.median(v) for p, v in rates.items()}
    echo = {p: {f"p{q}": round(pct(latency[p], q), 3) for q in (50, 95, 99)} for p in PATHS}
    load = (f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} before, "
            f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} after")
    lines = [
        f"# SSH through the broker vs plain OpenSSH ({today})",
        "",
        f"Command: `{command}` on {platform.node()} ({os.cpu_count()} CPUs, shared; {load}).",
        "OpenSSH client and sshd (Debian), all on 127.0.0.1. direct: client -> sshd. jump: client -> plain sshd",
        "(ProxyJump, `ssh -W`) -> sshd. broker: client -> jitgate broker (sign-in, guardrails, recording) -> sshd.",
        "",
        "| case | direct | jump | broker | jump/direct | broker/direct | broker/jump |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def row(label, vals, digits, ratio_word="{:.2f}"):
        d, j, b = (vals[p] for p in PATHS)
        lines.append(f"| {label} | {d:.{digits}f} | {j:.{digits}f} | {b:.{digits}f} | "
                     f"{ratio_word.format(j / d)} | {ratio_word.format(b / d)} | {ratio_word.format(b / j)} |")

    row(f"`head -c {args.mib}M /dev/zero` MB/s (best of {args.runs})", best, 1)
    row("same, median MB/s", med, 1)
    for q in (50, 95, 99):
        row(f"keystroke echo p{q} ms ({args.keystrokes} keys, PTY)", {p: echo[p][f"p{q}"] for p in PATHS}, 3)
    added = {p: round(echo[p]["p50"] - echo["direct"]["p50"], 3) for p in ("jump", "broker")}
    mb = args.mib * 1.048576
    # CPU ms per MB of each process on each path (median over the runs)
    cpu_ms = {p: {k: round(statistics.median(run[k] for run in cpu[p]) * 1000 / mb, 2) for k in cpu[p][0]} for p in PATHS}
    total_ms = {p: round(sum(v for k, v in cpu_ms[p].items() if k != LOOP), 2) for p in PATHS}
    cpu_per_mb = cpu_ms["broker"]["broker"] / 1000
    lines += [
        "",
        f"- bulk, broker/direct (median): **{med['broker'] / med['direct']:.2f}x** (goal >= 0.9x)",
        f"- echo p50 added over direct: broker **{added['broker']:+.3f} ms** (goal <= 0.3 ms), jump {added['jump']:+.3f} ms",
        f"- broker event loop CPU per keystroke (its echo both ways and the recording; schedstat): "
        f"{loop_us_per_key:.0f} µs",
        "",
        "CPU ms per MB moved (user+system, median of the runs): the OpenSSH client from getrusage (on the jump",
        "path with its ProxyCommand `ssh -W`), the broker from /proc (all threads; 'broker loop' is its event",
        "loop's thread alone, already in 'broker', the part that has one core). sshd's share is not measured",
        "(its per-connection processes could not be attributed to one run reliably).",
        "",
        "| path | " + " | ".join(sorted({k for p in PATHS for k in cpu_ms[p]})) + " | total ms/MB | direct / total |",
        "|---|" + "---:|" * (len({k for p in PATHS for k in cpu_ms[p]}) + 2),
    ]
    for p in PATHS:
        cols = [f"{cpu_ms[p][k]:.2f}" if k in cpu_ms[p] else "–" for k in sorted({k for q in PATHS for k in cpu_ms[q]})]
        lines.append(f"| {p} | " + " | ".join(cols) + f" | {total_ms[p]:.2f} | {total_ms['direct'] / total_ms[p]:.2f} |")
    lines += [
        "",
        "Throughput wall time includes the SSH handshake(s) and, for the broker, the OIDC sign-in, the upstream",
        "login, the command's guardrail decision, relaying through asyncssh (AES-GCM on both legs), SHA-256 of",
        "the stream and recording of its first MiB. Echo latency: one keystroke written to the client PTY until",
        "its echo is read back, `cat` running remotely; through the broker every echo is also written to the",
        "session spool as an asciicast event before the next one is read.",
    ]
    table = "\n".join(lines) + "\n"
    print()
    print(table)
    result = {
        "date": today, "command": command, "machine": machine_info(),
        "load_before": load_before, "load_after": load_after, "mib": args.mib, "runs": args.runs,
        "keystrokes": args.keystrokes, "throughput_mbs": rates, "best_mbs": best, "median_mbs": med,
        "echo_ms": echo, "echo_p50_added_ms": added,
        "broker_loop_cpu_us_per_keystroke": loop_us_per_key, "cpu_s_per_run": cpu, "cpu_ms_per_mb": cpu_ms,
        "cpu_ms_per_mb_total": total_ms,
        "ratios": {"bulk_broker_direct_median": med["broker"] / med["direct"],
                   "bulk_broker_direct_best": best["broker"] / best["direct"],
                   "bulk_jump_direct_median": med["jump"] / med["direct"]},
        "samples_ms": latency,
    }
    if not args.no_write:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stem = RESULTS_DIR / f"{today}-ssh{'-quick' if args.quick else ''}{'-' + args.profile if args.profile else ''}"
        stem.with_suffix(".md").write_text(table)
        stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {stem}.md and .json")
    if profiler:
        sections = [
            f"# py-spy profile of the broker during bench_ssh.py ({args.profile}, {today})",
            "",
            f"Command: `{command}` ({load}). `py-spy record --gil --nonblocking -r 500` on",
            "the broker process during its runs only: samples of the thread holding the GIL, so what remains is",
            "where the broker's Python CPU goes. 'self' = the function was on top of the stack; 'total' = anywhere",
            "on it.",
            "",
            f"Numbers of this run: bulk broker/direct {med['broker'] / med['direct']:.2f}x (median), echo p50 "
            f"{echo['broker']['p50']:.3f} ms vs {echo['direct']['p50']:.3f} ms direct, broker CPU "
            f"{cpu_per_mb * 1000:.2f} ms per MB (its event loop's thread {cpu_ms['broker'][LOOP]:.2f}).",
        ]
        for section, title in (("bulk", f"bulk: `head -c {args.mib}M /dev/zero` x {args.runs} (exec, no PTY)"),
                               ("echo", f"keystroke echo: {args.keystrokes} keys to `cat` in a PTY")):
            sections += ["", f"## {title}", "", summarize_pyspy(profiler.raws[section], top=30)]
        out = RESULTS_DIR / f"{today}-ssh-profile-{args.profile}.md"
        out.write_text("\n".join(sections) + "\n")
        print(f"wrote {out}")
    shutil.rmtree(work, ignore_errors=True)  # the stack's home, sshd keys, profiles: nothing left in /tmp
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
