"""The long, coverage-guided fuzz run of one target (atheris / libFuzzer). Use scripts/fuzz.sh.

    python3 bench/fuzz/run.py TARGET --runs 1000000 [--seed 1] [--out bench/results/fuzz-work]

The targets and their contracts are tests/fuzz/targets.py (the same functions the test suite's
short run uses). The run never stops at a finding: every input that breaks the contract (an
exception outside the target's allowed errors) or that takes longer than --slow seconds is
counted by signature, and the first input of each is written to OUT/findings/. At the end (and
every 50,000 executions) OUT/TARGET.json holds the counts.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import atheris  # noqa: E402 - after the path, like every entry point here

# --unguided: no coverage instrumentation and no libFuzzer (which, without coverage, would shrink
# its corpus to one byte): ``mutate`` below reworks the corpus that a guided phase grew, many times
# faster. Only the project's own code is instrumented in a guided run: PyYAML's or scramp's
# internals would cost speed, and the contract is about what comes out of our entry points.
if "--unguided" in sys.argv:
    from tests.fuzz import targets  # noqa: E402
else:
    with atheris.instrument_imports(include=["broker", "jitgate"]):
        from tests.fuzz import targets  # noqa: E402

SUMMARY_EVERY = 50_000
_INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00",
                b"\x00\x00\x00\x00", b"\xc3", b"\xed\xa0\x80", b"\\", b'"', b"'", b"(", b")", b"\n", b",", b"-----")


def mutate(rng: random.Random, data: bytes, corpus: list[bytes], max_len: int) -> bytes:
    """One to four stacked byte-level mutations in libFuzzer's manner (flip, set, insert, erase,
    copy a part, repeat a part, splice from another input, interesting values)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        n = len(buf)
        op = rng.randrange(8)
        if op == 0 and n:
            buf[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            buf[rng.randrange(n)] = rng.randrange(256)
        elif op == 2:
            at = rng.randint(0, n)
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3 and n:
            at = rng.randrange(n)
            del buf[at: at + rng.randint(1, max(1, n // 4))]
        elif op == 4 and n:
            start = rng.randrange(n)
            part = buf[start: start + rng.randint(1, 64)]
            at = rng.randint(0, n)
            buf[at:at] = part
        elif op == 5 and n:
            start = rng.randrange(n)
            part = bytes(buf[start: start + rng.randint(1, 16)])
            at = rng.randint(0, n)
            buf[at:at] = part * rng.randint(2, 64)
        elif op == 6 and corpus:
            other = rng.choice(corpus)
            if other:
                start = rng.randrange(len(other))
                part = other[start: start + rng.randint(1, 256)]
                at = rng.randint(0, n)
                buf[at: at + (rng.randint(0, len(part)) if rng.random() < 0.5 else 0)] = part
        else:
            at = rng.randint(0, n)
            value = rng.choice(_INTERESTING)
            buf[at: at + (len(value) if rng.random() < 0.5 else 0)] = value
    return bytes(buf[:max_len])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=sorted(targets.TARGETS))
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--slow", type=float, default=1.0, help="seconds after which one input counts as a stall")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fuzz-work")
    parser.add_argument("--unguided", action="store_true", help="no coverage instrumentation (see above)")
    args = parser.parse_args()

    name = args.target
    out = args.out
    work_corpus = out / "corpus" / name  # grows during the run; the committed seeds stay untouched
    findings_dir = out / "findings"
    work_corpus.mkdir(parents=True, exist_ok=True)
    findings_dir.mkdir(parents=True, exist_ok=True)
    seeds = ROOT / "tests" / "fuzz" / "corpus" / name
    summary_path = out / f"{name}-{'unguided' if args.unguided else 'guided'}.json"

    state = {"executions": 0, "findings": {}, "slow": {}, "started": time.time(), "slowest_s": 0.0, "slowest_len": 0}

    def write_summary(done: bool) -> None:
        elapsed = time.time() - state["started"]
        summary = {
            "target": name, "guided": not args.unguided, "runs_requested": args.runs, "executions": state["executions"], "seed": args.seed,
            "max_len": args.max_len, "seconds": round(elapsed, 1),
            "exec_per_s": round(state["executions"] / elapsed) if elapsed else 0,
            "finished": done, "slowest_input_s": round(state["slowest_s"], 3), "slowest_input_len": state["slowest_len"],
            "findings": [{"signature": k, **v} for k, v in state["findings"].items()],
            "slow_inputs": [{"signature": k, **v} for k, v in state["slow"].items()],
        }
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")

    def one_input(data: bytes) -> None:
        started = time.perf_counter()
        finding = targets.run_one(name, data)
        spent = time.perf_counter() - started
        state["executions"] += 1
        if spent > state["slowest_s"]:
            state["slowest_s"], state["slowest_len"] = spent, len(data)
        if finding is not None:
            key = f"{finding[0]} at {finding[1]}:{finding[2]}"
            entry = state["findings"].setdefault(key, {"count": 0, "known": targets.is_known(name, finding)})
            if entry["count"] == 0:
                path = findings_dir / f"{name}-{finding[0]}-{finding[1].replace('/', '_')}-{finding[2]}.bin"
                path.write_bytes(data)
                entry["input"] = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
            entry["count"] += 1
        if spent > args.slow:
            key = f"{len(data) // 1024} KiB"
            entry = state["slow"].setdefault(key, {"count": 0, "max_s": 0.0})
            if spent > entry["max_s"]:
                entry["max_s"] = round(spent, 3)
                (findings_dir / f"{name}-slow-{len(data)}.bin").write_bytes(data)
            entry["count"] += 1
        if state["executions"] % SUMMARY_EVERY == 0:
            write_summary(False)
        if state["executions"] >= args.runs:
            write_summary(True)
            sys.stdout.flush()
            os._exit(0)  # libFuzzer would otherwise run the rest of its -runs on the merged corpus

    write_summary(False)
    if args.unguided:
        corpus = [p.read_bytes()[: args.max_len] for folder in (work_corpus, seeds)
                  for p in sorted(folder.iterdir()) if p.is_file()]
        rng = random.Random(args.seed)
        for data in corpus:
            one_input(data)
        while True:  # one_input ends the process after --runs executions
            one_input(mutate(rng, rng.choice(corpus), corpus, args.max_len))
    argv = [sys.argv[0], f"-runs={args.runs + 10_000}", f"-seed={args.seed}", f"-max_len={args.max_len}",
            "-timeout=120", "-rss_limit_mb=4096", "-print_final_stats=1", str(work_corpus), str(seeds)]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
