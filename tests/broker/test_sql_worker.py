"""SQL classification off the event loop (issue 21): slow parses run in a worker with a time limit.

No wall-clock assertions: "does not block" is shown by ordering (a short statement is
classified while the long one is still running), "bounded" by the worker being stopped.
"""
from __future__ import annotations

import asyncio

from broker import sql_worker
from jitgate.guardrails.sql import MAX_CLASSIFIED_BYTES

# The parser's worst case found by fuzzing: quadratic in the length (22 s at 16 KB unbounded).
OPERATOR_CHAIN = "SELECT " + "+\ufffd" * 16000


def test_slow_parse_is_stopped_at_the_time_limit_and_is_unclassified():
    async def run():
        pool = sql_worker.ClassifierPool(workers=1, time_limit=1.0)
        try:
            long = asyncio.ensure_future(pool.classify(OPERATOR_CHAIN, {}))
            await asyncio.sleep(0)  # the long one is on its way to the worker
            short = await sql_worker.classify_in_session("DELETE FROM orders", {})
            assert short.classes == {"dml_unbounded"}
            assert not long.done()  # the loop answered the short one while the parse was still running
            result = await long
            assert result.classes == {"unclassified"}
            assert "took longer than 1 s" in result.error
            assert pool.killed == 1
            # The pool starts a fresh worker for the next long statement.
            again = await pool.classify("SELECT " + " + ".join(["1"] * 400), {})
            assert again.classes == {"read"}
        finally:
            await pool.aclose()

    asyncio.run(run())


def test_long_multi_statement_text_is_classified_in_the_worker():
    async def run():
        pool = sql_worker.ClassifierPool(workers=1, time_limit=120)
        try:
            text = "SELECT 1;" * (100_000 // 9) + " DELETE FROM orders"
            result = await pool.classify(text, {})
            assert result.classes == {"read", "dml_unbounded"}
            assert len(result.statements) == 100_000 // 9 + 1
            prepared: dict = {}
            learned = await pool.classify("PREPARE wipe AS DELETE FROM orders; " + "SELECT 1;" * 100, prepared)
            assert "dml_unbounded" in learned.classes
            assert "wipe" in prepared  # the session remembers PREPAREs classified in the worker
            assert pool.killed == 0
        finally:
            await pool.aclose()

    asyncio.run(run())


def test_text_over_the_cap_is_never_sent_to_a_worker(monkeypatch):
    started = []
    monkeypatch.setattr(sql_worker._Worker, "start", classmethod(lambda cls: started.append(1)))

    async def run():
        return await sql_worker.classify_in_session("SELECT 1;" * (MAX_CLASSIFIED_BYTES // 9 + 1), {})

    result = asyncio.run(run())
    assert result.classes == {"unclassified"} and "limit" in result.error
    assert started == []


def test_a_worker_is_niced_and_reaped_and_leaves_no_child_behind():
    """Workers run below the broker's priority (they lower it before importing the parser, which
    competes with every session), and a killed worker is reaped, not left a zombie."""
    import os

    async def run():
        pool = sql_worker.ClassifierPool(workers=1, time_limit=1.0)
        try:
            await pool.warm()
            [worker] = pool._idle
            pid = worker.process.pid
            # 10 below the broker's (this test's) priority, or the lowest there is (19) when that is lower
            assert os.getpriority(os.PRIO_PROCESS, pid) >= min(os.getpriority(os.PRIO_PROCESS, 0) + 10, 19)
            result = await pool.classify(OPERATOR_CHAIN, {})  # overruns: this worker is killed
            assert result.classes == {"unclassified"} and pool.killed == 1
        finally:
            await pool.aclose()
        return pid

    pid = asyncio.run(run())
    with open("/proc/self/task/%d/children" % os.getpid()) as fh:
        assert str(pid) not in fh.read().split()  # reaped: no zombie child left
