"""The local spool: every session event is appended here *before* it takes effect.

One file per session (``<spool>/<session_id>.jsonl``). Each event is written and
flushed to the OS before the statement goes upstream, so a killed broker loses
nothing that ran; fsync is batched (``fsync_interval``, on a thread; ``close`` syncs
on the caller) because a disk flush per statement would cap throughput at the disk's
sync rate. The spool keeps the head of the session's chain over the exact lines it
wrote (jitgate.recording.seal), which the broker signs when it closes the session.
Chunks are uploaded by the recorder;
the file is deleted only after the broker reads back a seal covering its last event,
and an orphaned spool found at startup is sealed as a crashed session.
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import orjson

from jitgate.logs import scrub
from jitgate.recording.seal import Chain, iter_lines


class Spool:
    def __init__(self, directory: Path, session_id: str, *, fsync_interval: float = 1.0):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{session_id}.jsonl"
        self.session_id = session_id
        self._fh = open(self.path, "ab", buffering=0)
        self._seq = 0
        self._pending: list[bytes] = []
        self._fsync_interval = fsync_interval
        self._last_sync = time.monotonic()
        self._syncing: Future | None = None
        self.closed = False
        self.chain = Chain(session_id)
        self.written = 0  # bytes in the file

    def append(self, event_type: str, *, defer: bool = False, **fields) -> dict:
        """Append one event. ``defer`` keeps it in memory until the next ``flush`` (or the
        next non-deferred event): the PostgreSQL relay flushes right before it forwards
        the bytes the events describe, so one write serves a whole pipelined batch."""
        return self.append_fields(event_type, fields, defer)

    def append_fields(self, event_type: str, fields: dict, defer: bool = False) -> dict:
        """``append`` with the fields as a dict (the per-statement path builds one anyway)."""
        # Microseconds, as round(time.time(), 6) wrote them, at a quarter of its cost.
        event = {"seq": self._seq, "ts": time.time_ns() // 1000 / 1e6, "type": event_type}
        event.update(fields)
        self._seq += 1
        self._pending.append(encode_event(event))
        if not defer:
            self.flush()
        return event

    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        if len(pending) == 1:  # the usual case: one statement or one result per read
            line = pending[0]
            self.chain.add(line)
            data = line + b"\n"
        else:
            for line in pending:
                self.chain.add(line)
            pending.append(b"")
            data = b"\n".join(pending)
        self._fh.write(data)
        self.written += len(data)
        pending.clear()
        now = time.monotonic()
        if now - self._last_sync >= self._fsync_interval:
            self._sync_in_background()
            self._last_sync = now

    def _sync_in_background(self) -> None:
        """The periodic fsync on a thread, so the event loop does not wait for the disk (the write
        above already put the lines in the OS, before anything they describe goes on). It syncs a
        duplicate of the file descriptor: ``close`` may close the spool's own meanwhile. A failed
        fsync is raised by the next flush, as an fsync on this thread would have raised it."""
        if self._syncing is not None:
            if not self._syncing.done():
                return  # the disk is slow: the next interval tries again
            self._syncing.result()  # raises what the last fsync raised
        self._syncing = _fsync_dup(self._fh.fileno())

    def carry_on(self, previous: "Spool", chain: Chain) -> None:
        """This spool continues ``previous`` (a continuation after a seal its broker did not ask
        for): the same event numbering, and the chain over what its file already holds."""
        self._seq = previous._seq
        self.chain = chain
        self.written = self.path.stat().st_size

    def close(self) -> None:
        if not self.closed:
            self.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self.closed = True


_fsyncer: ThreadPoolExecutor | None = None  # one thread for every spool's periodic fsync


def _fsync_dup(fd: int) -> Future:
    global _fsyncer
    if _fsyncer is None:
        _fsyncer = ThreadPoolExecutor(1, thread_name_prefix="spool-fsync")
    dup = os.dup(fd)

    def sync() -> None:
        try:
            os.fsync(dup)
        finally:
            os.close(dup)

    try:
        return _fsyncer.submit(sync)
    except BaseException:
        os.close(dup)
        raise


def encode_event(event: dict) -> bytes:
    """One spool line: compact UTF-8 JSON. orjson on the hot path (a few times faster than
    json.dumps); what it refuses (an int over 64 bits, a non-string key) goes through json,
    which writes the same JSON. Readers parse lines, and the chain covers the bytes written.
    A lone surrogate (an agent's JSON may carry "\\ud800") is not UTF-8: it is written escaped
    (ASCII JSON) instead of failing the session's recording."""
    try:
        return orjson.dumps(event, default=str)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        text = json.dumps(event, separators=(",", ":"), ensure_ascii=False, default=str)
        try:
            return text.encode()
        except UnicodeEncodeError:
            return json.dumps(event, separators=(",", ":"), default=str).encode()


def chain_of(path: Path, session_id: str) -> Chain:
    """The chain of a spool file on disk (a spool left by an earlier broker process)."""
    chain = Chain(session_id)

    def blocks():
        with open(path, "rb") as fh:
            while block := fh.read(1024 * 1024):
                yield block

    for line in iter_lines(blocks()):
        chain.add(line)
    return chain


def describe_params(values, formats) -> list:
    """Statement parameters as recorded: text values as strings, binary ones as hex, secrets scrubbed."""
    out = []
    for i, value in enumerate(values):
        if value is None:
            out.append(None)
            continue
        fmt = formats[i] if i < len(formats) else 0
        if fmt == 0:
            text = value.decode("utf-8", "replace")
            out.append(scrub(text) if len(text) >= 10 else text)  # nothing shorter can hold a secret pattern
        else:
            out.append({"binary": value.hex()})
    return out
