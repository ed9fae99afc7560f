"""The broker's side of continuations (jitgate.recording.continuation): after a seal it did not ask
for, everything past the sealed prefix moves from the session's spool into a continuation spool.

The spool is the source, not the uploaded chunks: it holds every event, and it is deleted only
once the continuation file (link first, then the unsealed events, byte for byte) is on disk.
Spool files are locked (flock) by the process recording into them, so another broker process
sweeping the same folder never takes a live session for a crashed one and seals it.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from jitgate.recording.continuation import CONTINUED, continuation_id, link_to
from jitgate.recording.seal import Chain


def hold(path: Path) -> int:
    """Lock a spool for this process (a descriptor kept open while the session records into it)."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def hold_new(path: Path, prepare) -> int:
    """Create a spool already locked: it is made and locked under a hidden name, ``prepare(path)``
    writes what must exist beside it (its state), and only then does it take its name. A sweeper in
    another process never sees it unlocked, so never takes a session starting for a crashed one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new")
    fd = os.open(tmp, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        prepare(path)
        os.replace(tmp, path)
    except BaseException:
        release(fd)
        raise
    return fd


def try_hold(path: Path) -> int | None:
    """Lock a spool found in the folder, or None when a session records into it (or it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def release(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)  # closing the descriptor drops the lock
        except OSError:
            pass


def held_elsewhere(path: Path) -> bool:
    """True when another open of this spool holds its lock: a session is recording into it."""
    lock = try_hold(path)
    if lock is not None:
        release(lock)
        return False
    return path.exists()  # not lockable: held, unless it is gone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@dataclass
class Part:
    """A continuation spool written so far: its path, the chain over its lines, the lock held on it,
    and how far into the previous spool's file it has copied."""

    path: Path
    chain: Chain
    lock: int
    copied_to: int


def _sealed_prefix_end(spool_path: Path, manifest: dict) -> int:
    """The byte offset in the spool right after the seal's last event, when the spool's first events
    chain to the seal's head; 0 when they do not (then everything goes into the continuation)."""
    chain = Chain(spool_path.stem)
    wanted = manifest.get("events")
    offset = 0
    if not isinstance(wanted, int) or wanted < 1:
        return 0
    with open(spool_path, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break
            offset += len(line)
            chain.add(line.rstrip(b"\n"))
            if chain.count == wanted:
                return offset if chain.head == manifest.get("chain_head") else 0
    return 0


def _origin(spool_path: Path) -> dict:
    """Who, where and how of the session, from the spool's first event (session.start, or the link
    of a continuation that is itself continued)."""
    with open(spool_path, "rb") as fh:
        try:
            first = json.loads(fh.readline())
        except ValueError:
            return {}
    keys = ("principal", "target", "kind", "client", "broker")
    origin = {k: first[k] for k in keys if k in first}
    origin["session"] = first.get("session") or first.get("session_id") or spool_path.stem
    return origin


def begin(spool_path: Path, manifest: dict, manifest_bytes: bytes, *, up_to: int | None = None) -> Part:
    """Write the continuation of ``spool_path`` (locked, under a temporary name): its link event,
    then the spool's bytes after the sealed prefix up to ``up_to`` (default: its last whole line)."""
    start = _sealed_prefix_end(spool_path, manifest)
    part_id = continuation_id(spool_path.stem)
    link = link_to(manifest_bytes)
    continued = {"seq": manifest.get("events", 0) if start else 0, "ts": round(time.time(), 6), "type": CONTINUED,
                 "previous": link, **_origin(spool_path)}
    if not start:
        continued["note"] = ("the seal does not match what this broker recorded; every event of the session "
                             "is recorded here")
    line = json.dumps(continued, separators=(",", ":"), ensure_ascii=False).encode()
    tmp = spool_path.with_name(f".{part_id}.jsonl.tmp")
    lock = hold(tmp)
    try:
        chain = Chain(part_id)
        chain.add(line)
        with open(spool_path, "rb") as src, open(tmp, "wb") as out:
            out.write(line + b"\n")
            src.seek(start)
            data = src.read() if up_to is None else src.read(max(0, up_to - start))
            data = data[: data.rfind(b"\n") + 1]
            for event_line in data.split(b"\n")[:-1]:
                chain.add(event_line)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        release(lock)
        raise
    return Part(tmp, chain, lock, start + len(data))


def take_tail(part: Part, spool_path: Path) -> None:
    """Append what the previous spool got since ``begin`` (whole lines) to the continuation."""
    with open(spool_path, "rb") as src:
        src.seek(part.copied_to)
        data = src.read()
    data = data[: data.rfind(b"\n") + 1]
    if data:
        for event_line in data.split(b"\n")[:-1]:
            part.chain.add(event_line)
        with open(part.path, "ab") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        part.copied_to += len(data)


def put_in_place(part: Part, state: dict, write_state) -> Path:
    """Give the continuation spool its name (the lock moves with the file) and its upload state."""
    final = part.path.with_name(part.path.name[1:].removesuffix(".tmp"))
    write_state(final, state)
    os.replace(part.path, final)
    part.path = final
    return final
