"""SQL classification that cannot stall other sessions.

Every session of a broker shares one event loop, and PostgreSQL's parser takes
time that grows faster than the text on some inputs (``"SELECT " + "+x" * n``:
about 1 s at 16 KB, holding the GIL). So:

- text up to INLINE_CHARS is classified on the loop (worst case measured at about
  10 ms; the usual case is a cache hit);
- longer text goes to a worker process (``python -m broker.sql_worker``) with a
  time limit; a worker that overruns is killed and the statement is
  ``unclassified`` (the policy decides; refused by default);
- text over ``MAX_CLASSIFIED_BYTES`` is never parsed (jitgate.guardrails.sql.too_long).

The worker speaks length-prefixed pickles over its stdin/stdout; it is our own
child, started from this code, so its answers are trusted like a function's.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import pickle
import struct
import sys

from jitgate.guardrails.sql import (
    _UNCLASSIFIED,
    Classification,
    StatementVerdict,
    classify_sql_in_session,
    too_long,
)
from jitgate.logs import log

logger = logging.getLogger("jitgate.broker.sql_worker")

INLINE_CHARS = 512
TIME_LIMIT = float(os.environ.get("JITGATE_SQL_CLASSIFY_SECONDS", "5"))
WORKERS = 2
STARTUP_LIMIT = 60.0
_READY = b"R"
_LENGTH = struct.Struct("!I")


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process
        self.served = 0

    @classmethod
    async def start(cls) -> "_Worker":
        """A new worker, once it has imported the parser (which takes seconds on a loaded machine
        and must not count against a statement's time limit)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "broker.sql_worker", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        worker = cls(process)
        try:
            if await asyncio.wait_for(process.stdout.readexactly(1), STARTUP_LIMIT) != _READY:
                raise EOFError("the worker did not announce itself")
        except BaseException:
            worker.kill()
            raise
        return worker

    async def ask(self, sql: str, prepared: dict) -> tuple[Classification, dict]:
        request = pickle.dumps((sql, prepared), protocol=pickle.HIGHEST_PROTOCOL)
        self.process.stdin.write(_LENGTH.pack(len(request)) + request)
        await self.process.stdin.drain()
        (size,) = _LENGTH.unpack(await self.process.stdout.readexactly(_LENGTH.size))
        answer = pickle.loads(await self.process.stdout.readexactly(size))  # noqa: S301 - our own child
        self.served += 1
        return answer

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            asyncio.ensure_future(self.process.wait())  # reap it


class ClassifierPool:
    """A few worker processes; each statement runs in one of them under TIME_LIMIT."""

    def __init__(self, workers: int = WORKERS, time_limit: float = TIME_LIMIT):
        self.time_limit = time_limit
        self._slots = asyncio.Semaphore(workers)
        self._idle: list[_Worker] = []
        self._cache: collections.OrderedDict[str, Classification] = collections.OrderedDict()
        self.killed = 0  # workers stopped for overrunning (for tests and metrics)

    async def classify(self, sql: str, prepared: dict) -> Classification:
        cacheable = len(sql) <= 8192 and "execute" not in sql.lower() and "prepare" not in sql.lower()
        if cacheable and sql in self._cache:
            self._cache.move_to_end(sql)
            return self._cache[sql]
        async with self._slots:
            try:
                worker = self._idle.pop() if self._idle else await _Worker.start()
            except (EOFError, asyncio.IncompleteReadError, asyncio.TimeoutError, OSError) as exc:
                log(logger, logging.ERROR, "SQL classification worker did not start", error=type(exc).__name__)
                return _unclassified(sql, "the gateway's SQL classifier could not start a worker for this statement")
            try:
                result, learned = await asyncio.wait_for(worker.ask(sql, dict(prepared)), self.time_limit)
            except asyncio.TimeoutError:
                worker.kill()
                self.killed += 1
                log(logger, logging.WARNING, "SQL classification overran its time limit; worker stopped",
                    chars=len(sql), limit_s=self.time_limit)
                return _unclassified(sql, f"classifying this {len(sql)}-character statement took longer than "
                                          f"{self.time_limit:g} s, so the gateway stopped; simplify or split it")
            except (EOFError, asyncio.IncompleteReadError, ConnectionError, pickle.PickleError) as exc:
                worker.kill()
                log(logger, logging.ERROR, "SQL classification worker failed", error=type(exc).__name__)
                return _unclassified(sql, "the gateway's SQL classifier failed on this statement")
            except BaseException:
                worker.kill()
                raise
            self._idle.append(worker)
        prepared.update(learned)
        if cacheable and result.error is None:
            self._cache[sql] = result
            if len(self._cache) > 1024:
                self._cache.popitem(last=False)
        return result

    async def aclose(self) -> None:
        workers, self._idle = self._idle, []
        for worker in workers:
            worker.kill()
            await worker.process.wait()


def _unclassified(sql: str, reason: str) -> Classification:
    return Classification(_UNCLASSIFIED, (StatementVerdict(sql[:200], _UNCLASSIFIED, (reason,)),), reason)


_POOL: ClassifierPool | None = None


def pool() -> ClassifierPool:
    global _POOL
    if _POOL is None:
        _POOL = ClassifierPool()
    return _POOL


async def classify_in_session(sql: str, prepared: dict) -> Classification:
    """classify_sql_in_session without blocking the event loop for long."""
    if len(sql) <= INLINE_CHARS:
        return classify_sql_in_session(sql, prepared)
    over = too_long(sql)
    if over is not None:
        return over
    return await pool().classify(sql, prepared)


def _serve() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(_READY)  # the parser is imported: statements may come
    stdout.flush()
    while True:
        head = stdin.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return
        (size,) = _LENGTH.unpack(head)
        sql, prepared = pickle.loads(stdin.read(size))  # noqa: S301 - from the broker that started us
        try:
            result = classify_sql_in_session(sql, prepared)
        except Exception as exc:  # noqa: BLE001 - the classifier already fails closed; belt and braces
            result = _unclassified(sql, f"the classifier failed ({type(exc).__name__})")
        answer = pickle.dumps((result, prepared), protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(_LENGTH.pack(len(answer)) + answer)
        stdout.flush()


if __name__ == "__main__":
    _serve()
