#!/usr/bin/env python3
"""SSH through the broker against a direct connection to the same sshd, in one run.

    python bench/bench_ssh.py            # 100 MiB x 3 per path, 200 keystrokes per path (~1-2 minutes)
    python bench/bench_ssh.py --quick    # 20 MiB x 1, 50 keystrokes

What it does, sequentially (the machine is small and shared: never two cases at once):

1. starts the local stack (``jitgate.devstack.start_stack``) in a temp home and a real
   OpenSSH sshd (tests/ssh/sshd.py: root sshd on 127.0.0.1, login user jitgate-ssh),
   and adds a ``bench-vm`` SSH target to the stack's policy;
2. throughput: ``ssh HOST 'head -c 100M /dev/zero' > /dev/null`` with the OpenSSH
   client, DIRECT (the held key, straight to sshd) and BROKER (OIDC token as the
   password through the broker, which relays, hashes and records the first MiB);
   wall time includes the SSH handshake and, for the broker, the sign-in;
3. keystroke echo latency in a PTY: one interactive shell per path runs ``cat``; each
   of N single keystrokes is timed from the write to the moment its echo is read back;
   p50/p95/p99 per path (the broker records every echo as an asciicast event);
4. prints a markdown table with broker/direct ratios and writes
   ``bench/results/<YYYY-MM-DD>-ssh.md``.

Everything listens on and connects to 127.0.0.1 only; every loop is bounded.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jitgate.devstack import dev_token, start_stack  # noqa: E402
from tests.ssh.sshd import LOGIN_USER, start_sshd  # noqa: E402

COMMON = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]


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
    def __init__(self, stack, sshd, work: Path):
        self.stack, self.sshd = stack, sshd
        self.broker_port = int(stack.broker_info["ssh"].rpartition(":")[2])
        askpass = work / "askpass.sh"
        askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$JITGATE_BENCH_TOKEN"\n')
        os.chmod(askpass, 0o755)
        self.askpass = askpass

    def argv(self, path: str, *, tty: bool = False) -> tuple[list[str], dict]:
        env = dict(os.environ, TERM="xterm")
        flags = ["-tt"] if tty else []
        if path == "direct":
            return (["ssh", *flags, *COMMON, "-o", "BatchMode=yes", "-i", str(self.sshd.client_key), "-p", str(self.sshd.port),
                     "-l", LOGIN_USER, "127.0.0.1"], env)
        env.update(SSH_ASKPASS=str(self.askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0",
                   JITGATE_BENCH_TOKEN=dev_token(self.stack.issuer.issuer, "bench@example.com", ["sre"]))
        return (["ssh", *flags, *COMMON, "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
                 "-p", str(self.broker_port), "-l", "bench@example.com+bench-vm", "127.0.0.1"], env)


def throughput(paths: Paths, path: str, mib: int) -> float:
    argv, env = paths.argv(path)
    started = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        proc = subprocess.run(argv + [f"head -c {mib}M /dev/zero"], env=env, stdout=sink, stderr=subprocess.PIPE, timeout=600)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{path} throughput run failed: {proc.stderr.decode(errors='replace')}")
    return mib * 1024 * 1024 / elapsed / 1e6


def echo_latency(paths: Paths, path: str, keystrokes: int) -> list[float]:
    import pexpect

    argv, env = paths.argv(path, tty=True)
    child = pexpect.spawn(argv[0], argv[1:], env=env, dimensions=(24, 80), timeout=30)
    child.expect(rb"\$ $")
    child.sendline(b"exec cat")
    child.expect(b"exec cat\r\n")
    time.sleep(0.3)
    fd = child.child_fd
    samples = []
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
    child.send(b"\r")
    child.sendcontrol("d")  # cat ends on end-of-file, and with it (exec) the shell
    child.expect(pexpect.EOF)
    child.close()
    return samples


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keystrokes", type=int, default=200)
    args = parser.parse_args()
    if args.quick:
        args.mib, args.runs, args.keystrokes = 20, 1, 50
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark starts its own sshd")

    work = Path(tempfile.mkdtemp(prefix="jitgate-bench-ssh-"))
    os.chmod(work, 0o755)
    print("starting the stack and sshd...", flush=True)
    stack = start_stack(work / "home")
    sshd = start_sshd(work / "sshd")
    try:
        with open(stack.policy_path, "a") as fh:
            fh.write(target_yaml(sshd))
        time.sleep(0.1)
        paths = Paths(stack, sshd, work)
        rates: dict[str, list[float]] = {"direct": [], "broker": []}
        for run in range(args.runs):
            for path in ("direct", "broker"):
                rate = throughput(paths, path, args.mib)
                rates[path].append(rate)
                print(f"  throughput run {run + 1} {path:6}: {rate:8.1f} MB/s", flush=True)
        latency = {}
        for path in ("direct", "broker"):
            latency[path] = echo_latency(paths, path, args.keystrokes)
            print(f"  echo {path:6}: p50 {pct(latency[path], 50):.3f} ms  p95 {pct(latency[path], 95):.3f} ms", flush=True)
    finally:
        sshd.stop()
        stack.stop()

    best = {p: max(v) for p, v in rates.items()}
    med = {p: statistics.median(v) for p, v in rates.items()}
    lines = [
        f"# SSH through the broker vs direct ({datetime.date.today().isoformat()})",
        "",
        f"Command: `python bench/bench_ssh.py{' --quick' if args.quick else ''}` on {platform.node()} "
        f"({os.cpu_count()} CPUs, shared), OpenSSH client -> {'broker -> ' if True else ''}OpenSSH sshd, all on 127.0.0.1.",
        "",
        "| case | direct | broker | broker/direct |",
        "|---|---:|---:|---:|",
        f"| `head -c {args.mib}M /dev/zero` MB/s (best of {args.runs}) | {best['direct']:.1f} | {best['broker']:.1f} | {best['broker'] / best['direct']:.2f} |",
        f"| same, median MB/s | {med['direct']:.1f} | {med['broker']:.1f} | {med['broker'] / med['direct']:.2f} |",
    ]
    for p in (50, 95, 99):
        d, b = pct(latency["direct"], p), pct(latency["broker"], p)
        lines.append(f"| keystroke echo p{p} ms ({args.keystrokes} keys, PTY) | {d:.3f} | {b:.3f} | {b / d:.2f} |")
    lines += [
        "",
        "Throughput wall time includes the SSH handshake (and for the broker the OIDC sign-in, the upstream",
        "login, relaying through asyncssh, SHA-256 of the stream and recording of its first MiB).",
        "Echo latency: one keystroke written to the client PTY until its echo is read back, `cat` running",
        "remotely; through the broker every echo is also written to the session spool as an asciicast event.",
    ]
    table = "\n".join(lines) + "\n"
    print()
    print(table)
    out = REPO / "bench" / "results" / f"{datetime.date.today().isoformat()}-ssh.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
