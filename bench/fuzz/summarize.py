"""Writes bench/results/<date>-fuzz.md (and .json) from the per-phase summaries of scripts/fuzz.sh."""
from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(out: Path, stem: str | None = None, note: str = "") -> None:
    rows = {}
    for path in sorted(out.glob("*-guided.json")) + sorted(out.glob("*-unguided.json")):
        phase = json.loads(path.read_text())
        rows.setdefault(phase["target"], []).append(phase)
    lines = ["# Fuzz run (scripts/fuzz.sh)", "",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit of the working tree; "
             "targets: tests/fuzz/targets.py; max input length 1024 bytes; seed 1." + (f" {note}" if note else ""), "",
             "| target | guided execs | unguided execs | total | exec/s (guided / unguided) | findings (new) | known findings | inputs over 1 s | slowest input |",
             "|---|---|---|---|---|---|---|---|---|"]
    total = {}
    for target, phases in sorted(rows.items()):
        guided = sum(p["executions"] for p in phases if p.get("guided", True))
        unguided = sum(p["executions"] for p in phases if not p.get("guided", True))
        rates = " / ".join(str(p["exec_per_s"]) for p in phases)
        findings = [f for p in phases for f in p["findings"]]
        new = sorted({f["signature"] for f in findings if not f["known"]})
        known = sorted({f["signature"] for f in findings if f["known"]})
        slow = sum(s["count"] for p in phases for s in p["slow_inputs"])
        slowest = max(phases, key=lambda p: p["slowest_input_s"])
        total[target] = {"guided": guided, "unguided": unguided, "new_findings": new, "known_findings": known,
                         "slow_inputs": slow, "finished": all(p["finished"] for p in phases)}
        lines.append(f"| {target} | {guided:,} | {unguided:,} | {guided + unguided:,}{'' if total[target]['finished'] else ' (unfinished)'} "
                     f"| {rates} | {'; '.join(new) or 'none'} | {'; '.join(known) or 'none'} | {slow} "
                     f"| {slowest['slowest_input_s']} s ({slowest['slowest_input_len']} B) |")
    lines += ["", "Findings: the first input of each signature is in the run's findings/ folder.", ""]
    stem = stem or f"{datetime.date.today().isoformat()}-fuzz"
    (ROOT / "bench" / "results" / f"{stem}.md").write_text("\n".join(lines))
    (ROOT / "bench" / "results" / f"{stem}.json").write_text(json.dumps(total, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    # summarize.py [OUT [STEM [NOTE]]]
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "results" / "fuzz-work",
         sys.argv[2] if len(sys.argv) > 2 else None, sys.argv[3] if len(sys.argv) > 3 else "")
