"""SQL classification and lineage parsing that cannot stall other sessions.

Every session of a broker shares one event loop, and PostgreSQL's parser takes
time that grows faster than the text on some inputs (``"SELECT " + "+x" * n``:
about 1 s at 16 KB, holding the GIL). So:

- text up to INLINE_CHARS is classified on the loop (worst case measured at about
  10 ms; the usual case is a cache hit);
- longer text goes to a worker process (``python -m broker.sql_worker``) with a
  time limit; a worker that overruns is killed and the statement is
  ``unclassified`` (the policy decides; refused by default);
- text over ``MAX_CLASSIFIED_BYTES`` is never parsed (jitgate.guardrails.sql.too_long).

The masking lineage step (``broker/pg/lineage_step.py``) parses with the same parser
and uses the same workers (ops ``needs`` and ``follow``), with its own inline limit.

Fairness: each owner (the signed-in user) has at most one request in the workers or
in their queue at a time, so one user's many sessions sending long statements queue
behind each other, not in front of other users' statements.

The worker speaks length-prefixed pickles over its stdin/stdout; it is our own
child, started from this code, so its answers are trusted like a function's.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import time

from jitgate.guardrails.sql import (
    _UNCLASSIFIED,
    Classification,
    StatementVerdict,
    classify_sql_in_session,
    too_long,
)
from jitgate.logs import log
from jitgate.masking import lineage

logger = logging.getLogger("jitgate.broker.sql_worker")

INLINE_CHARS = 512
TIME_LIMIT = float(os.environ.get("JITGATE_SQL_CLASSIFY_SECONDS", "5"))
WORKERS = 2
STARTUP_LIMIT = 60.0
_READY = b"R"
_ANSWERED, _FAILED = b"A", b"F"  # first byte of each answer
_LENGTH = struct.Struct("!I")


class WorkerFailed(Exception):
    """A worker request did not answer (time limit, crash, no worker); the message says why."""


class _Failure(str):
    """A worker's answer when its op raised (the broker turns it into WorkerFailed)."""


_REAPING: set = set()


# Hostile input makes a worker busy for up to the time limit, and its start imports the parser: on
# a small machine the broker's event loop (every session) must win the CPU over both, so the worker
# lowers its priority before it imports anything.
_LAUNCH = "import os; os.nice(10); from broker.sql_worker import _serve; _serve()"


class _Child:
    """A child process with asyncio pipes, started by ``subprocess`` (vfork + exec) rather than by
    the event loop: uvloop's spawn forks the whole broker, which blocks every session for tens of
    milliseconds on a broker with a few hundred MB resident (measured: 15-40 ms at 200 MB, load 7;
    vfork 1-4 ms). A worker is started after each one killed at its time limit, so an attacker
    who sends slow statements would otherwise stall everyone at every restart."""

    def __init__(self, popen: subprocess.Popen, stdin: asyncio.StreamWriter, stdout: asyncio.StreamReader):
        self._popen, self.stdin, self.stdout = popen, stdin, stdout
        self.pid = popen.pid

    @classmethod
    async def spawn(cls, *argv: str) -> "_Child":
        loop = asyncio.get_running_loop()
        popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        try:
            stdout = asyncio.StreamReader(limit=2**31 - 1)
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdout), popen.stdout)
            transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, popen.stdin)
            stdin = asyncio.StreamWriter(transport, protocol, None, loop)
        except BaseException:
            popen.kill()
            popen.wait()
            raise
        return cls(popen, stdin, stdout)

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def kill(self) -> None:
        self._popen.kill()
        self.stdin.close()

    async def wait(self) -> int:
        """Reaps the child without blocking the loop (it was killed or its pipe closed)."""
        while (code := self._popen.poll()) is None:
            await asyncio.sleep(0.01)
        self.stdin.close()
        return code


class _Worker:
    def __init__(self, process: _Child):
        self.process = process
        self.served = 0

    @classmethod
    async def start(cls) -> "_Worker":
        """A new worker, once it has imported the parser (which takes seconds on a loaded machine
        and must not count against a statement's time limit)."""
        began = time.perf_counter()
        process = await _Child.spawn(sys.executable, "-c", _LAUNCH)
        spawned = time.perf_counter()
        worker = cls(process)
        try:
            if await asyncio.wait_for(process.stdout.readexactly(1), STARTUP_LIMIT) != _READY:
                raise EOFError("the worker did not announce itself")
        except BaseException:
            worker.kill()
            raise
        log(logger, logging.INFO, "SQL worker started", pid=process.pid, spawn_ms=round((spawned - began) * 1000, 1),
            ready_ms=round((time.perf_counter() - began) * 1000, 1))
        return worker

    async def ask(self, op: str, *args):
        request = pickle.dumps((op, args), protocol=pickle.HIGHEST_PROTOCOL)
        self.process.stdin.write(_LENGTH.pack(len(request)) + request)
        await self.process.stdin.drain()
        (size,) = _LENGTH.unpack(await self.process.stdout.readexactly(_LENGTH.size))
        answer = await self.process.stdout.readexactly(size)
        self.served += 1
        if answer[:1] == _FAILED:
            return _Failure(answer[1:].decode())
        return pickle.loads(answer[1:])  # noqa: S301 - our own child

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        _REAPING.add(asyncio.ensure_future(self.process.wait()))  # reap it (ClassifierPool.aclose waits)
        for done in [f for f in _REAPING if f.done()]:
            _REAPING.discard(done)


class BoundedCache:
    """An LRU dictionary bounded in entries and in the total length of its text keys (a few
    huge statements cannot pin memory; a flood of distinct ones only evicts)."""

    def __init__(self, max_entries: int, max_chars: int):
        self.max_entries = max_entries
        self.max_chars = max_chars
        self.chars = 0
        self._items: collections.OrderedDict = collections.OrderedDict()

    @staticmethod
    def _size(key) -> int:
        text = key[0] if isinstance(key, tuple) else key
        return len(text) if isinstance(text, str) else 0

    def get(self, key, default=None):
        try:
            value = self._items[key]
        except KeyError:
            return default
        self._items.move_to_end(key)
        return value

    def put(self, key, value) -> None:
        size = self._size(key)
        if size > self.max_chars:
            return
        if key in self._items:
            self._items.move_to_end(key)
            self._items[key] = value
            return
        self._items[key] = value
        self.chars += size
        while len(self._items) > self.max_entries or self.chars > self.max_chars:
            old, _ = self._items.popitem(last=False)
            self.chars -= self._size(old)

    def clear(self) -> None:
        self._items.clear()
        self.chars = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key) -> bool:
        return key in self._items


class ClassifierPool:
    """A few worker processes; each request runs in one of them under TIME_LIMIT, at most one
    per owner at a time (see the module's docstring)."""

    def __init__(self, workers: int = WORKERS, time_limit: float = TIME_LIMIT):
        self.time_limit = time_limit
        self._slots = asyncio.Semaphore(workers)
        self._idle: list[_Worker] = []
        self._owners: dict[object, list] = {}  # owner -> [semaphore, users]
        self._cache = BoundedCache(1024, 4 * 1024 * 1024)
        self.busy: set[_Worker] = set()  # workers answering a request now (tests kill one)
        self.killed = 0  # workers stopped for overrunning (for tests and metrics)
        self.served = 0  # requests answered by a worker

    async def run(self, op: str, *args, owner: object = None, what: str = "statement"):
        """The worker's answer to ``op(*args)``; WorkerFailed when there is none in time."""
        if owner is None:
            owner = object()  # nobody to be fair to: only the pool's size bounds it
        entry = self._owners.setdefault(owner, [asyncio.Semaphore(1), 0])
        entry[1] += 1
        try:
            async with entry[0], self._slots:
                return await self._run(op, args, what)
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._owners[owner]

    async def _run(self, op: str, args: tuple, what: str):
        try:
            worker = self._idle.pop() if self._idle else await _Worker.start()
        except (EOFError, asyncio.IncompleteReadError, asyncio.TimeoutError, OSError) as exc:
            log(logger, logging.ERROR, "SQL worker did not start", error=type(exc).__name__)
            raise WorkerFailed(f"the gateway could not start a worker process for this {what}") from None
        self.busy.add(worker)
        try:
            answer = await asyncio.wait_for(worker.ask(op, *args), self.time_limit)
        except asyncio.TimeoutError:
            worker.kill()
            self.killed += 1
            log(logger, logging.WARNING, "SQL worker overran its time limit; worker stopped", op=op,
                chars=len(args[-1]), limit_s=self.time_limit)
            raise WorkerFailed(f"handling this {len(args[-1])}-character {what} took longer than {self.time_limit:g} s, "
                               "so the gateway stopped; simplify or split it") from None
        except (EOFError, asyncio.IncompleteReadError, ConnectionError, pickle.PickleError) as exc:
            worker.kill()
            log(logger, logging.ERROR, "SQL worker failed", op=op, error=type(exc).__name__)
            raise WorkerFailed(f"the gateway's worker process failed on this {what}") from None
        except BaseException:
            worker.kill()
            raise
        finally:
            self.busy.discard(worker)
        self.served += 1
        self._idle.append(worker)
        if isinstance(answer, _Failure):
            log(logger, logging.ERROR, "SQL worker could not answer", op=op, error=str(answer))
            raise WorkerFailed(f"the gateway's worker process failed on this {what} ({answer})")
        return answer

    async def classify(self, sql: str, prepared: dict, owner: object = None) -> Classification:
        cacheable = len(sql) <= 8192 and "execute" not in sql.lower() and "prepare" not in sql.lower()
        if cacheable:
            hit = self._cache.get(sql)
            if hit is not None:
                return hit
        try:
            result, learned = await self.run("classify", sql, dict(prepared), owner=owner)
        except WorkerFailed as exc:
            return _unclassified(sql, str(exc))
        prepared.update(learned)
        if cacheable and result.error is None:
            self._cache.put(sql, result)
        return result

    async def warm(self) -> None:
        """Starts one worker ahead of the first long statement (its start, not a statement, waits
        for the parser's import)."""
        try:
            self._idle.append(await _Worker.start())
        except (EOFError, asyncio.IncompleteReadError, asyncio.TimeoutError, OSError) as exc:
            log(logger, logging.WARNING, "SQL worker did not start ahead; it will be started on demand",
                error=type(exc).__name__)

    async def aclose(self) -> None:
        workers, self._idle = self._idle, []
        for worker in workers:
            worker.kill()
        reaping = [f for f in _REAPING if f.get_loop() is asyncio.get_running_loop()]
        await asyncio.gather(*reaping, return_exceptions=True)
        _REAPING.difference_update(reaping)


def _unclassified(sql: str, reason: str) -> Classification:
    return Classification(_UNCLASSIFIED, (StatementVerdict(sql[:200], _UNCLASSIFIED, (reason,)),), reason)


_POOL: ClassifierPool | None = None


def pool() -> ClassifierPool:
    global _POOL
    if _POOL is None:
        _POOL = ClassifierPool()
    return _POOL


async def classify_in_session(sql: str, prepared: dict, owner: object = None) -> Classification:
    """classify_sql_in_session without blocking the event loop for long."""
    if len(sql) <= INLINE_CHARS:
        return classify_sql_in_session(sql, prepared)
    over = too_long(sql)
    if over is not None:
        return over
    return await pool().classify(sql, prepared, owner)


def copy_statements(sql: str) -> list:
    """(index, CopyStmt) of each ``COPY ... TO STDOUT`` of ``sql`` (for masking_step.copy_plan_for)."""
    from pglast import ast, parse_sql  # noqa: PLC0415
    from pglast.parser import ParseError  # noqa: PLC0415

    try:
        statements = parse_sql(sql)
    except ParseError:
        return []  # unparsable: PostgreSQL refuses it too
    return [(i, raw.stmt) for i, raw in enumerate(statements)
            if isinstance(raw.stmt, ast.CopyStmt) and not raw.stmt.is_from and raw.stmt.filename is None]


# In a worker: the maskers it rebuilt, per (config, key) (a few targets; bounded all the same).
_MASKERS = BoundedCache(16, 16 * 1024 * 1024)


def _answer(op: str, args: tuple):
    if op == "classify":
        sql, prepared = args
        try:
            result = classify_sql_in_session(sql, prepared)
        except Exception as exc:  # noqa: BLE001 - the classifier already fails closed; belt and braces
            result = _unclassified(sql, f"the classifier failed ({type(exc).__name__})")
        return result, prepared
    if op == "needs":  # Needs, or the reason the lineage is unknown
        try:
            return lineage.catalog_needs(args[0])
        except lineage.LineageUnknown as exc:
            return str(exc)
        except RecursionError:
            return "the statement nests too deeply to follow"
    if op == "follow":
        return lineage.follow(*args)
    if op == "copy_statements":
        return copy_statements(*args)
    if op == "mask_text":  # (masker spec, [limit,] text): free text too long to mask on the event loop
        config, key, *limit, text = args
        masker = _MASKERS.get((config, key))
        if masker is None:
            from jitgate.masking import Masker  # noqa: PLC0415 - only workers that mask need it
            from jitgate.policy import MaskingConfig  # noqa: PLC0415

            masker = Masker(MaskingConfig.model_validate_json(config), key)
            _MASKERS.put((config, key), masker)
        return masker.mask_text(text, limit=limit[0]) if limit else masker.mask_text(text)
    raise ValueError(f"unknown worker op {op!r}")


def _serve() -> None:
    # A signal to the broker's process group (Ctrl-C, a drain's SIGTERM) must not end the worker
    # under sessions that are finishing: it ends when the broker closes its pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(_READY)  # the parser is imported: statements may come
    stdout.flush()
    while True:
        head = stdin.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return
        (size,) = _LENGTH.unpack(head)
        op, args = pickle.loads(stdin.read(size))  # noqa: S301 - from the broker that started us
        try:
            answer = _ANSWERED + pickle.dumps(_answer(op, args), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - e.g. RecursionError pickling a deep tree: say so, stay up
            answer = _FAILED + type(exc).__name__.encode()
        stdout.write(_LENGTH.pack(len(answer)) + answer)
        stdout.flush()


if __name__ == "__main__":
    os.nice(10)
    _serve()
