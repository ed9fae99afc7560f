"""Session recording on the broker: spool first, upload chunks, seal when the session ends.

Nothing is lost when storage is down: events stay in the spool, the
``SpoolUploader`` retries until the chunks are stored and the session is handed
to finalize (the session-closed event, or inline sealing when no finalize
endpoint is configured). A spool left by a killed broker is sealed at the next
start, marked as ended by a crash.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

from jitgate.backends import Backends
from jitgate.backends.base import TOPIC_SESSION_CLOSED
from jitgate.logs import log
from jitgate.recording.finalize import finalize_session
from jitgate.recording.spool import Spool
from jitgate.settings import Settings

logger = logging.getLogger("jitgate.broker.recorder")


def _state_path(spool_path: Path) -> Path:
    return spool_path.with_suffix(".state")


def _read_state(spool_path: Path) -> dict:
    try:
        return json.loads(_state_path(spool_path).read_text())
    except (OSError, ValueError):
        return {"offset": 0, "chunk": 0, "closed": False}


def _write_state(spool_path: Path, state: dict) -> None:
    tmp = _state_path(spool_path).with_suffix(".state.tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, _state_path(spool_path))


def upload_pending(backends: Backends, spool_path: Path, *, final: bool) -> bool:
    """Upload spool bytes not yet stored, as the next chunk(s). True when all is stored."""
    state = _read_state(spool_path)
    with open(spool_path, "rb") as fh:
        fh.seek(state["offset"])
        data = fh.read()
    if not final:
        cut = data.rfind(b"\n") + 1  # only whole events go into a chunk
        data = data[:cut]
    if data:
        backends.recordings.put_chunk(spool_path.stem, state["chunk"], data)
        state["offset"] += len(data)
        state["chunk"] += 1
        _write_state(spool_path, state)
    return True


def hand_over(settings: Settings, backends: Backends, session_id: str) -> None:
    """Tell finalize that a session's chunks are complete."""
    if TOPIC_SESSION_CLOSED in settings.push_endpoints or settings.backends == "gcp":
        backends.bus.publish(TOPIC_SESSION_CLOSED, {"session_id": session_id})
    else:
        finalize_session(backends, session_id)


class Recorder:
    def __init__(self, settings: Settings, backends: Backends, session_id: str):
        self.settings = settings
        self.backends = backends
        self.session_id = session_id
        self.spool = Spool(settings.spool_dir, session_id)
        _write_state(self.spool.path, {"offset": 0, "chunk": 0, "closed": False})
        self._since_upload = 0
        self._upload_task: asyncio.Task | None = None

    # When True, statement and result events wait for flush() (the relay calls it before
    # forwarding upstream); every other event is written at once.
    batching = False

    def flush(self) -> None:
        self.spool.flush()

    def event(self, event_type: str, **fields) -> dict:
        defer = self.batching and event_type in ("statement", "result")
        event = self.spool.append(event_type, defer=defer, **fields)
        self._since_upload += 200  # rough size; exact bytes are counted at upload time
        if self._since_upload >= self.settings.spool_chunk_bytes and (self._upload_task is None or self._upload_task.done()):
            self._since_upload = 0
            self._upload_task = asyncio.get_running_loop().create_task(self._upload(final=False))
        return event

    async def _upload(self, *, final: bool) -> bool:
        try:
            return await asyncio.to_thread(upload_pending, self.backends, self.spool.path, final=final)
        except Exception as exc:  # storage outage: the spool keeps everything; the uploader retries
            log(logger, logging.WARNING, "chunk upload failed; kept in spool", session_id=self.session_id, error=type(exc).__name__)
            return False

    async def close(self, reason: str) -> None:
        self.event("session.end", reason=reason)
        self.spool.close()
        if self._upload_task:
            await asyncio.gather(self._upload_task, return_exceptions=True)
        state = _read_state(self.spool.path)
        state["closed"] = True
        _write_state(self.spool.path, state)
        await SpoolUploader.complete(self.settings, self.backends, self.spool.path)


class SpoolUploader:
    """Retries sessions whose upload or hand-over failed, and seals orphans after a crash."""

    def __init__(self, settings: Settings, backends: Backends, live: set[str]):
        self.settings = settings
        self.backends = backends
        self.live = live

    @staticmethod
    async def complete(settings: Settings, backends: Backends, spool_path: Path) -> bool:
        session_id = spool_path.stem
        try:
            await asyncio.to_thread(upload_pending, backends, spool_path, final=True)
            await asyncio.to_thread(hand_over, settings, backends, session_id)
        except Exception as exc:
            log(logger, logging.WARNING, "sealing deferred; spool kept for retry", session_id=session_id, error=f"{type(exc).__name__}: {exc}")
            return False
        spool_path.unlink(missing_ok=True)
        _state_path(spool_path).unlink(missing_ok=True)
        return True

    def recover_orphan(self, spool_path: Path) -> None:
        """A spool whose session is not live and not closed: the broker died mid-session."""
        with open(spool_path, "rb+") as fh:
            data = fh.read()
            cut = data.rfind(b"\n") + 1
            if cut != len(data):
                fh.truncate(cut)  # drop a torn last line
            seq = 0
            last = data[:cut].rstrip(b"\n").rpartition(b"\n")[2]
            if last:
                try:
                    seq = json.loads(last)["seq"] + 1
                except (ValueError, KeyError):
                    pass
            fh.seek(cut)
            fh.write(json.dumps({"seq": seq, "ts": round(time.time(), 6), "type": "session.end", "reason": "crash: broker stopped without closing the session; sealed at restart"}).encode() + b"\n")
        state = _read_state(spool_path)
        state["closed"] = True
        _write_state(spool_path, state)

    async def sweep(self) -> int:
        done = 0
        if not self.settings.spool_dir.exists():
            return 0
        for spool_path in sorted(self.settings.spool_dir.glob("*.jsonl")):
            if spool_path.stem in self.live:
                continue
            if not _read_state(spool_path).get("closed"):
                self.recover_orphan(spool_path)
                log(logger, logging.WARNING, "sealing a session orphaned by a crash", session_id=spool_path.stem)
            if await self.complete(self.settings, self.backends, spool_path):
                done += 1
        return done

    async def run(self, interval: float = 5.0) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                logger.exception("spool sweep failed")
            await asyncio.sleep(interval)
