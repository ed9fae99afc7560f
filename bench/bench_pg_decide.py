#!/usr/bin/env python3
"""The broker's per-statement decision and recording path, in one process, without sockets or TLS.

    python3 bench/bench_pg_decide.py               # simple and extended protocol, 5000 statements
    python3 bench/bench_pg_decide.py --statements 20000 --profile

What one pgbench select-only transaction costs the broker between reading the statement and
forwarding it, and after its result, as the relay (broker/pg/server.py) calls it:
decide_sql_async (classification by shape, the policy decision), follow_for_relay (lineage by
shape, the sensitive_predicate check), copy_plan_for, record_statement, the spool flush before
forwarding, record_result and the flush after it. The session is real (policy, recorder, spool on
disk, the masker of bench/run.py's target: the demo's column rules); only the catalog answers of
the lineage step come from a stub instead of a side connection. CPU time (time.process_time) per
statement, best of 5 rounds: unlike the end-to-end run, it hardly moves with the machine's load,
so it shows changes of a few microseconds that bench/run.py cannot on a shared machine.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import random
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from broker.masking import SessionMasker  # noqa: E402
from broker.pg.masking_step import copy_plan_for, follow_for_relay  # noqa: E402
from broker.session import Session  # noqa: E402
from jitgate.backends import open_backends  # noqa: E402
from jitgate.identity.oidc import Principal  # noqa: E402
from jitgate.masking import Masker  # noqa: E402
from jitgate.policy import parse_policy  # noqa: E402
from jitgate.settings import Settings  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from run import BENCH_MASKING, BENCH_TARGET  # noqa: E402

POLICY = """\
version: 1
identity:
  issuer: http://127.0.0.1:1
  audience: jitgate
  groups_claim: groups
targets:""" + BENCH_TARGET.format(pg_port=5432, role="jitgate_broker", masking=BENCH_MASKING)

# What the catalog says of pgbench's table (the lineage step asks once per session).
ACCOUNTS = ("public", "pgbench_accounts", "r", None, '["aid","bid","abalance","filler"]')


async def catalog(query: str) -> list[tuple]:
    names = re.findall(r"'([^']*)'", query.split("::text[]")[0])
    if "pg_class" in query:
        return [(n, *ACCOUNTS) if n == "pgbench_accounts" else (n, None, None, None, None, None) for n in names]
    return [(n, "t") for n in names]


class Relay:
    """What follow_for_relay and copy_plan_for read of the relay's connection."""

    def __init__(self, session: Session):
        self.session = session

    async def hold_for(self, sql, verdict):
        raise RuntimeError(f"the bench policy held {sql!r}")


async def run(mode: str, count: int, profile: bool) -> float:
    home = Path(tempfile.mkdtemp(prefix="jitgate-bench-decide-"))
    settings = Settings.from_env({"JITGATE_HOME": str(home), "JITGATE_POLICY": str(home / "policy.yaml")})
    backends = open_backends(settings)
    policy = parse_policy(POLICY)
    target = policy.targets["bench"]
    principal = Principal("bench", "alice@example.com", frozenset({"sre"}), "bench", 2**40)
    session = Session.open(principal=principal, target_name="bench", policy=policy, client="bench", kind="postgres",
                           settings=settings, backends=backends)
    session.recorder.batching = True  # as the PostgreSQL relay records
    masker = SessionMasker(Masker(target.masking, b"k" * 32), target, backends, owner=principal.username)
    follow = masker.follow
    masker.follow = lambda sql, fetch=None: follow(sql, catalog)
    session.use_masking(lambda t, p: masker)
    relay = Relay(session)
    prepared = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
    texts = [f"SELECT abalance FROM pgbench_accounts WHERE aid = {random.randint(1, 10**6)};" for _ in range(count)]

    async def one(text: str) -> None:
        if mode == "simple":  # a new literal every time, as pgbench -M simple sends
            verdict = await session.decide_sql_async(text)
            verdict, lineages = await follow_for_relay(relay, text, verdict)
            await copy_plan_for(relay, text, lineages)
            statement_id = session.record_statement(text, protocol="simple", verdict=verdict)
        else:  # Parse, then Execute with the value as a parameter
            verdict = await session.decide_sql_async(prepared)
            verdict, lineages = await follow_for_relay(relay, prepared, verdict)
            statement_id = session.record_statement(prepared, protocol="extended", verdict=verdict,
                                                    params=[text[-8:-1]])
        session.recorder.flush()
        session.record_result(statement_id, started=time.perf_counter(), rows=1, tag="SELECT 1", error=None)
        session.recorder.flush()

    for text in texts[:200]:  # warm: the catalog answers, the shape caches
        await one(text)
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for text in texts:
            await one(text)
        best = min(best, (time.process_time() - started) / count * 1e6)
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for text in texts:
            await one(text)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    await session.close("bench done")
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statements", type=int, default=5000, help="statements per round (default 5000)")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of one more round")
    args = parser.parse_args()
    for mode in ("simple", "extended"):
        best = asyncio.run(run(mode, args.statements, args.profile))
        print(f"{mode:8s} protocol: {best:6.1f} µs CPU per statement (best of 5 rounds of {args.statements})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
