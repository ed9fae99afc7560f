"""Micro-benchmark of the masking hot path: RowPlan.mask_row over synthetic DataRows.

    python bench/bench_masking.py [--rows 200000]

Three cases over the same rows (8 columns: int4 id, text name, text email,
varchar phone, text notes, jsonb profile (text format), numeric amount,
timestamptz), roughly one row in five carrying PII in its free text:

- no-rules:   a policy without rules; ``plan`` returns None and the broker
              forwards the DataRow untouched (timed as the None check only)
- one-column: a hash rule on ``email``
- detectors:  every detector on every text-like column

and, for scale, ``detectors`` again over rows whose text holds no PII at all
(``detectors-clean``): the cost of the prefilter alone.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from broker.pg.codec import FieldDescription, build_data_row  # noqa: E402
from jitgate.masking import Masker  # noqa: E402
from jitgate.policy import MaskingConfig, MaskingRule  # noqa: E402

FIELDS = [
    FieldDescription("id", 16400, 1, 23, 4, -1, 0),
    FieldDescription("name", 16400, 2, 25, -1, -1, 0),
    FieldDescription("email", 16400, 3, 25, -1, -1, 0),
    FieldDescription("phone", 16400, 4, 1043, -1, 36, 0),
    FieldDescription("notes", 16400, 5, 25, -1, -1, 0),
    FieldDescription("profile", 16400, 6, 3802, -1, -1, 0),
    FieldDescription("amount", 16400, 7, 1700, -1, -1, 0),
    FieldDescription("created_at", 16400, 8, 1184, 8, -1, 0),
]
TABLES = {16400: "public.customers"}
NOTES = [
    "Customer asked about order ORD-2024-{n:06d}, shipped 2024-03-{d:02d} 10:{d:02d}:00.",
    "Upgraded to plan v2.{d}.1, price $1,2{d}4.56 per year.",
    "Called back from +1 415 555 01{d:02d}, wants invoice by mail to user{n}@example.com.",
    "No issues reported.",
    "Paid with card 4111 1111 1111 1111, refund pending (ticket #{n}).",
]


CLEAN_NOTES = [NOTES[0], NOTES[1], NOTES[3], "Prefers contact by chat, weekdays only.", "Account merged into {n}."]


def synthetic_payloads(count: int, pii: bool = True) -> list[bytes]:
    rng = random.Random(7)
    payloads = []
    notes_pool = NOTES if pii else CLEAN_NOTES
    for n in range(count):
        d = rng.randrange(1, 28)
        notes = notes_pool[n % len(notes_pool)].format(n=n, d=d)
        contact = f"user{n}@example.com" if pii else f"user {n}"
        profile = '{"city": "Lyon", "tier": "gold", "visits": %d, "contact": "%s"}' % (d, contact)
        row = [
            str(n).encode(),
            f"Customer {n}".encode(),
            contact.encode(),
            (f"+1 415 555 {n % 10000:04d}" if pii else f"ext {n % 1000}").encode(),
            notes.encode(),
            profile.encode(),
            f"{n % 9999}.{d:02d}".encode(),
            b"2024-03-01 10:00:00+00",
        ]
        payloads.append(build_data_row(row)[5:])
    return payloads


CASES = {
    "no-rules": MaskingConfig(),
    "one-column": MaskingConfig(rules=[MaskingRule(columns=["email"], strategy="hash")]),
    "detectors": MaskingConfig(
        rules=[MaskingRule(detectors=["email", "card", "iban", "ssn", "phone", "secret"], strategy="redact")]
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    payloads = synthetic_payloads(args.rows)
    clean_payloads = synthetic_payloads(args.rows, pii=False)
    size = sum(len(p) for p in payloads) / len(payloads)
    print(f"{args.rows} rows, {len(FIELDS)} columns, {size:.0f} bytes per row, Python {sys.version.split()[0]}")
    cases = [(name, config, payloads) for name, config in CASES.items()]
    cases.append(("detectors-clean", CASES["detectors"], clean_payloads))
    for name, config, rows in cases:
        masker = Masker(config, b"bench-key-" * 4)
        plan = masker.plan(FIELDS, TABLES)
        started, cpu_started = time.perf_counter(), time.process_time()
        if plan is None:
            for payload in rows:
                if plan is not None:  # what the broker does per row when nothing needs masking
                    plan.mask_row(payload)
        else:
            mask_row = plan.mask_row
            for payload in rows:
                mask_row(payload)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        # CPU time as well as wall time: on a shared machine other processes inflate wall time.
        print(
            f"{name:>15}: {args.rows / elapsed:>12,.0f} rows/s wall  {args.rows / cpu:>12,.0f} rows/s cpu"
            f"  ({cpu * 1e6 / args.rows:.2f} us cpu/row)"
        )


if __name__ == "__main__":
    main()
