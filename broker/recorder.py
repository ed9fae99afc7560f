"""Session recording on the broker: spool first, upload chunks, close with a signed end.

- Every event is in the local spool before it takes effect. Chunks go to the store when
  the unsent spool reaches ``spool_chunk_bytes`` real bytes, and at the latest
  ``spool_upload_seconds`` after an event was written, so a lost VM costs at most about
  that interval plus one upload of a busy session.
- At the end the broker signs {session, event count, chain head} with its session-closed
  key and hands that to finalize (Pub/Sub, push, or inline sealing in a bounded pool). It
  deletes the spool only after reading back a seal, signed by a trusted seal key, that
  covers its last event; until then the sweeper hands the session over again.
- A spool left by a killed broker is closed at the next start, marked as ended by a crash.
Nothing is lost when storage is down: events stay in the spool and the sweeper retries.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

from broker import continuation
from jitgate.backends import Backends
from jitgate.backends.base import TOPIC_SESSION_CLOSED
from jitgate.logs import log
from jitgate.recording.closing import sign_closing
from jitgate.recording.finalize import MANIFEST, finalize_session
from jitgate.recording.seal import canonical, read_manifest
from jitgate.recording.spool import Spool, chain_of
from jitgate.recording.trust import signature_valid
from jitgate.settings import Settings

logger = logging.getLogger("jitgate.broker.recorder")

REHAND_SECONDS = 60.0  # a handed-over session not sealed by then is handed over again
INLINE_SEALERS = 2  # embedded sealing without a finalize endpoint: at most this many at once


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


def upload_pending(backends: Backends, spool_path: Path, *, final: bool, chunk_bytes: int = 1024 * 1024) -> int:
    """Upload the spool bytes not yet stored, as chunks of at most ``chunk_bytes`` (a single longer
    event is a chunk of its own), whole lines only. Returns the offset now stored."""
    state = _read_state(spool_path)
    chunk_bytes = max(1, chunk_bytes)
    with open(spool_path, "rb") as fh:
        fh.seek(state["offset"])
        while True:
            data = fh.read(chunk_bytes)
            if not data:
                break
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # one event longer than a chunk: take it whole
                data += fh.readline()
                cut = len(data) if data.endswith(b"\n") or final else 0
                if cut == 0:
                    break  # a line still being written: next time
            data = data[:cut]  # whole lines; the rest starts the next chunk
            backends.recordings.put_chunk(spool_path.stem, state["chunk"], data)
            state["offset"] += len(data)
            state["chunk"] += 1
            _write_state(spool_path, state)
            fh.seek(state["offset"])
    return state["offset"]


_inline_slots: asyncio.Semaphore | None = None


def _read_back_manifest(backends: Backends, session_id: str) -> bytes | None:
    """The session's signed manifest as finalize published it: in the index entry (the broker may
    read the index but, on GCP, no sealed object), else from the store (embedded)."""
    entry = backends.index.get_session(session_id)
    if entry and isinstance(entry.get("manifest"), str):
        return entry["manifest"].encode()
    if backends.name == "gcp":
        return None  # infra/ grants the broker no read of sealed objects
    try:
        return backends.recordings.get_object(session_id, MANIFEST)
    except Exception:  # noqa: BLE001 - not sealed yet, or not readable by this broker
        return None


def _read_back_seal(backends: Backends, session_id: str) -> tuple[dict, bytes] | None:
    """(manifest, its bytes) of the session's seal, if there is one signed by a trusted seal key.
    Whoever wrote it where the broker reads it, only a seal key's signature makes it count."""
    raw = _read_back_manifest(backends, session_id)
    parsed = read_manifest(raw) if raw else None
    if parsed is None:
        return None
    manifest, signature = parsed
    key = backends.trust.seal_key(manifest.get("key_id"))
    if key is None or not signature_valid(key, signature, canonical(manifest)) or manifest.get("session_id") != session_id:
        return None
    return manifest, raw


def _covers(seal: tuple[dict, bytes] | None, events: int, head: str) -> bool:
    return seal is not None and seal[0].get("events") == events and seal[0].get("chain_head") == head


def _sealed_covers(backends: Backends, session_id: str, events: int, head: str) -> bool:
    """Read back the seal: it exists, is signed by a trusted seal key and covers the spool's last event."""
    return _covers(_read_back_seal(backends, session_id), events, head)


class Recorder:
    def __init__(self, settings: Settings, backends: Backends, session_id: str):
        self.settings = settings
        self.backends = backends
        self.session_id = session_id
        # Locked before it has its name, so no sweeper (here or in another broker process using this
        # folder) ever takes a live spool for a crashed one.
        self._lock = continuation.hold_new(
            settings.spool_dir / f"{session_id}.jsonl",
            lambda path: _write_state(path, {"offset": 0, "chunk": 0, "closed": False}))
        self.spool = Spool(settings.spool_dir, session_id)
        self._seal_checked = time.monotonic()
        self._uploaded = 0
        self._upload_task: asyncio.Task | None = None
        self._again = False
        self._timer: asyncio.TimerHandle | None = None
        self.uploads = 0  # chunk uploads started (tests, bench)

    # When True, statement and result events wait for flush() (the relay calls it before
    # forwarding upstream); every other event is written at once.
    batching = False

    def flush(self) -> None:
        self.spool.flush()
        self._maybe_upload()

    def event(self, event_type: str, **fields) -> dict:
        return self.event_fields(event_type, fields)

    def event_fields(self, event_type: str, fields: dict) -> dict:
        """``event`` with the fields as a dict (the per-statement path builds one anyway)."""
        defer = self.batching and event_type in ("statement", "result")
        event = self.spool.append_fields(event_type, fields, defer)
        if self._timer is None and not self.spool.closed:
            # No event waits on this disk longer than the interval (plus one upload).
            self._timer = asyncio.get_running_loop().call_later(self.settings.spool_upload_seconds, self._on_timer)
        if not defer:
            self._maybe_upload()
        return event

    def _maybe_upload(self) -> None:
        if self.spool.written - self._uploaded >= self.settings.spool_chunk_bytes:
            self._start_upload()

    def _on_timer(self) -> None:
        self._timer = None
        if self.spool.written > self._uploaded:
            self._start_upload()

    def _start_upload(self) -> None:
        if self._upload_task is not None and not self._upload_task.done():
            self._again = True
            return
        self.uploads += 1
        self._upload_task = asyncio.get_running_loop().create_task(self._upload())

    async def _upload(self) -> None:
        while True:
            self._again = False
            try:
                self._uploaded = await asyncio.to_thread(upload_pending, self.backends, self.spool.path, final=False,
                                                         chunk_bytes=self.settings.spool_chunk_bytes)
                seal = None
                if time.monotonic() - self._seal_checked >= self.settings.spool_upload_seconds:
                    # Sealed while live (by someone else's signed end): what follows goes to a continuation.
                    self._seal_checked = time.monotonic()
                    seal = await asyncio.to_thread(_read_back_seal, self.backends, self.spool.path.stem)
                if seal is not None:
                    await self._continue_after(*seal)
            except Exception as exc:  # storage outage: the spool keeps everything; the timer or sweeper retries
                log(logger, logging.WARNING, "chunk upload failed; kept in spool", session_id=self.session_id,
                    error=type(exc).__name__)
                if self._timer is None and not self.spool.closed:
                    self._timer = asyncio.get_running_loop().call_later(self.settings.spool_upload_seconds, self._on_timer)
                return
            if not self._again:
                return

    async def _continue_after(self, manifest: dict, manifest_bytes: bytes) -> None:
        """Move recording into a continuation after a seal this broker did not ask for: the bulk is
        copied on a thread, what arrived meanwhile on the loop (no event can slip between)."""
        old = self.spool
        log(logger, logging.WARNING, "session sealed while live by an end its broker did not sign; recording "
            "continues in a continuation part", session_id=self.session_id, sealed_part=old.path.stem,
            sealed_events=manifest.get("events"))
        part = await asyncio.to_thread(continuation.begin, old.path, manifest, manifest_bytes)
        was_closed = old.closed
        old.flush()
        continuation.take_tail(part, old.path)
        old.close()
        path = continuation.put_in_place(part, {"offset": 0, "chunk": 0, "closed": False}, _write_state)
        spool = Spool(self.settings.spool_dir, path.stem)
        spool.carry_on(old, part.chain)
        if was_closed:
            spool.close()
        self.spool, self._uploaded = spool, 0
        old.path.unlink(missing_ok=True)
        _state_path(old.path).unlink(missing_ok=True)
        continuation.release(self._lock)
        self._lock = part.lock
        self._again = True  # upload the continuation now

    async def close(self, reason: str) -> None:
        self.event("session.end", reason=reason)
        self.spool.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._upload_task:
            await asyncio.gather(self._upload_task, return_exceptions=True)
        self.spool.close()  # a continuation begun meanwhile
        state = _read_state(self.spool.path)
        state.update(closed=True, events=self.spool.chain.count, chain_head=self.spool.chain.head)
        _write_state(self.spool.path, state)
        continuation.release(self._lock)
        self._lock = None
        await SpoolUploader.complete(self.settings, self.backends, self.spool.path)


class SpoolUploader:
    """Hands closed sessions to finalize, deletes spools whose seal it has read back, re-hands
    sessions not sealed in time, and closes spools orphaned by a crash."""

    def __init__(self, settings: Settings, backends: Backends, live: set[str]):
        self.settings = settings
        self.backends = backends
        self.live = live

    @staticmethod
    def hand_over(settings: Settings, backends: Backends, spool_path: Path, state: dict) -> dict:
        """Upload what is left, sign the end, give it to finalize. Returns the signed event."""
        upload_pending(backends, spool_path, final=True, chunk_bytes=settings.spool_chunk_bytes)
        closing = sign_closing(backends.closing_signer, spool_path.stem, events=state["events"],
                               chain_head=state["chain_head"])
        if TOPIC_SESSION_CLOSED in settings.push_endpoints or settings.backends == "gcp":
            backends.bus.publish(TOPIC_SESSION_CLOSED, closing)
        return closing

    @staticmethod
    async def complete(settings: Settings, backends: Backends, spool_path: Path) -> bool:
        """One step towards a sealed session; True once the spool is gone (its seal read back)."""
        global _inline_slots
        session_id = spool_path.stem
        state = _read_state(spool_path)
        try:
            if state.get("events") is None:  # closed by an older broker version or a crash: count from disk
                chain = await asyncio.to_thread(chain_of, spool_path, session_id)
                state.update(events=chain.count, chain_head=chain.head)
                _write_state(spool_path, state)
            seal = await asyncio.to_thread(_read_back_seal, backends, session_id)
            if _covers(seal, state["events"], state["chain_head"]):
                spool_path.unlink(missing_ok=True)
                _state_path(spool_path).unlink(missing_ok=True)
                return True
            if seal is not None:  # sealed by an end this broker did not sign: the rest is a continuation
                part_path = await asyncio.to_thread(SpoolUploader.split_closed, spool_path, *seal)
                return await SpoolUploader.complete(settings, backends, part_path)
            if time.time() - state.get("handed_over_at", 0) < REHAND_SECONDS:
                return False  # finalize has it; the sweeper reads the seal back later
            closing = await asyncio.to_thread(SpoolUploader.hand_over, settings, backends, spool_path, state)
            state["handed_over_at"] = time.time()
            _write_state(spool_path, state)
            if not (TOPIC_SESSION_CLOSED in settings.push_endpoints or settings.backends == "gcp"):
                if _inline_slots is None:
                    _inline_slots = asyncio.Semaphore(INLINE_SEALERS)
                async with _inline_slots:
                    result = await asyncio.to_thread(finalize_session, backends, closing,
                                                     checkpoint_every=settings.ledger_checkpoint_every)
                if result.status == "refused":
                    return False
            if await asyncio.to_thread(_sealed_covers, backends, session_id, state["events"], state["chain_head"]):
                spool_path.unlink(missing_ok=True)
                _state_path(spool_path).unlink(missing_ok=True)
                return True
        except Exception as exc:
            log(logger, logging.WARNING, "sealing deferred; spool kept for retry", session_id=session_id,
                error=f"{type(exc).__name__}: {exc}")
        return False

    @staticmethod
    def split_closed(spool_path: Path, manifest: dict, manifest_bytes: bytes) -> Path:
        """A closed spool whose session was sealed short of its end: what the seal does not hold
        becomes a closed continuation spool, then the first spool goes (all it had is in one or the other)."""
        target = spool_path.with_name(continuation.continuation_id(spool_path.stem) + ".jsonl")
        if not target.exists():  # (else an earlier split got that far and died before removing the first spool)
            part = continuation.begin(spool_path, manifest, manifest_bytes)
            continuation.put_in_place(part, {"offset": 0, "chunk": 0, "closed": True, "events": part.chain.count,
                                             "chain_head": part.chain.head}, _write_state)
            continuation.release(part.lock)
        log(logger, logging.WARNING, "session sealed short of its end by an end its broker did not sign; the rest "
            "is sealed as a continuation", session_id=spool_path.stem, continuation=target.stem,
            sealed_events=manifest.get("events"))
        spool_path.unlink(missing_ok=True)
        _state_path(spool_path).unlink(missing_ok=True)
        return target

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
            fh.write(json.dumps({"seq": seq, "ts": round(time.time(), 6), "type": "session.end",
                                 "reason": "crash: broker stopped without closing the session; sealed at restart"},
                                separators=(",", ":")).encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        chain = chain_of(spool_path, spool_path.stem)
        state = _read_state(spool_path)
        state.update(closed=True, events=chain.count, chain_head=chain.head)
        _write_state(spool_path, state)

    async def sweep(self) -> int:
        done = 0
        if not self.settings.spool_dir.exists():
            return 0
        for spool_path in sorted(self.settings.spool_dir.glob("*.jsonl")):
            if spool_path.stem in self.live:
                continue
            try:
                lock = continuation.try_hold(spool_path)
                if lock is None:
                    continue  # recording in another broker process using this folder, or sealed and gone
                try:
                    if not _read_state(spool_path).get("closed"):  # unlocked and not closed: its broker died
                        self.recover_orphan(spool_path)
                        log(logger, logging.WARNING, "sealing a session orphaned by a crash",
                            session_id=spool_path.stem)
                finally:
                    continuation.release(lock)
                if await self.complete(self.settings, self.backends, spool_path):
                    done += 1
            except FileNotFoundError:
                continue  # another broker process sealed it and removed the spool meanwhile
            except Exception as exc:  # one bad spool must not stop the broker nor the other spools
                log(logger, logging.ERROR, "could not sweep a spool; it is kept for the next sweep",
                    session_id=spool_path.stem, error=f"{type(exc).__name__}: {exc}")
        return done

    async def settle(self, timeout: float) -> int:
        """At shutdown: keep handing over and reading back until every closed spool is sealed or the
        time is up (what is left is sealed after the next start). Returns how many are left."""
        end = time.monotonic() + timeout
        while True:
            await self.sweep()
            left = [p for p in self.settings.spool_dir.glob("*.jsonl")  # not another process's live sessions
                    if p.stem not in self.live and not continuation.held_elsewhere(p)] \
                if self.settings.spool_dir.exists() else []
            if not left or time.monotonic() >= end:
                return len(left)
            await asyncio.sleep(0.5)

    async def run(self, interval: float = 5.0) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                logger.exception("spool sweep failed")
            await asyncio.sleep(interval)
