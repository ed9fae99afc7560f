"""Sealing a session: on the broker's signed end, chain its chunks, sign, store, ledger, index.

This is the body of functions/finalize_recording; the embedded broker without a finalize
endpoint calls it too. It seals only what the broker's session-closed event vouches for
(event count and chain head); anything else is refused, logged, and nothing is removed.

Memory stays bounded by one chunk (or SEAL_IN_MEMORY) whatever the recording's size: a first
pass over the chunks checks the chain and gathers the manifest; a recording up to SEAL_IN_MEMORY
sealed bytes (nearly every session) is kept from that pass and stored in one create-once write,
a larger one is streamed into the store by a second pass. Idempotent: a redelivered event finds
the seal and only finishes what a previous attempt left undone (ledger, index, chunk removal).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Iterator

from jitgate.backends import Backends
from jitgate.logs import log
from jitgate.recording import ledger
from jitgate.recording.closing import ClosingRefused, check_closing
from jitgate.recording.continuation import CONTINUED, link_problems
from jitgate.recording.seal import Chain, Summary, build_manifest, chained, is_event_line, iter_lines, read_manifest, verify_recording

logger = logging.getLogger("jitgate.finalize")

RECORDING = "recording.jsonl"
MANIFEST = "manifest.json"
# Sealed bytes kept from the first pass: below this a seal reads its chunks once and writes the
# recording in one request; above it the second pass streams (memory bounded by a chunk).
SEAL_IN_MEMORY = 4 * 1024 * 1024


class ChunksIncomplete(RuntimeError):
    """The chunks do not yet hold every event the broker closed with: retry later (not a refusal)."""


@dataclass
class Finalized:
    status: str  # "sealed", "duplicate" or "refused"
    session_id: str
    reason: str = ""
    entry: dict | None = None


def _chunk_blocks(backends: Backends, session_id: str) -> Iterator[bytes]:
    return backends.recordings.read_chunks(session_id)


def _first_events(backends: Backends, session_id: str, count: int) -> Iterator[bytes]:
    """The first ``count`` event lines of the session's chunks (a torn or foreign tail is not read)."""
    taken = 0
    for line in iter_lines(_chunk_blocks(backends, session_id)):
        if taken == count:
            return
        taken += 1
        yield line


def _sealed_blocks(backends: Backends, session_id: str, count: int, digest) -> Iterator[bytes]:
    """The sealed recording, a block per chunk's worth of lines, hashed as it goes."""
    chain = Chain(session_id)
    block: list[bytes] = []
    size = 0
    for line in _first_events(backends, session_id, count):
        out = chained(line, chain.add(line)) + b"\n"
        block.append(out)
        size += len(out)
        if size >= 1024 * 1024:
            data = b"".join(block)
            digest.update(data)
            yield data
            block, size = [], 0
    if block:
        data = b"".join(block)
        digest.update(data)
        yield data


def finalize_session(backends: Backends, closing_event: dict, *, checkpoint_every: int = 1) -> Finalized:
    """Seal the session a broker's signed session-closed event names. Never raises for a refusal
    (returns status "refused" and logs why); raises ChunksIncomplete or a backend error when a
    retry can help."""
    try:
        closing = check_closing(closing_event, backends.trust)
    except ClosingRefused as exc:
        session_id = closing_event.get("session_id") if isinstance(closing_event, dict) else None
        log(logger, logging.ERROR, "session-closed event refused; nothing sealed, nothing removed",
            session_id=str(session_id), reason=str(exc))
        return Finalized("refused", str(session_id or ""), str(exc))
    session_id, events, head = closing["session_id"], closing["events"], closing["chain_head"]

    if backends.recordings.object_exists(session_id, MANIFEST):
        return _already_sealed(backends, closing, checkpoint_every)

    # Pass 1: the chunks must chain to the head the broker signed.
    chain, summary, digest, size = Chain(session_id), Summary(session_id), hashlib.sha256(), 0
    continued = None
    sealed: list[bytes] | None = []  # the sealed lines, while they fit in SEAL_IN_MEMORY
    for number, line in enumerate(_first_events(backends, session_id, events), start=1):
        if not is_event_line(line):
            return _refuse(session_id, f"line {number} of the stored chunks is not an event (chunks written by "
                                       "someone other than the broker?)")
        try:
            event = json.loads(line)
        except ValueError:
            return _refuse(session_id, f"line {number} of the stored chunks is not JSON")
        if isinstance(event, dict) and event.get("type") == CONTINUED:
            if number != 1:
                return _refuse(session_id, f"line {number} is a {CONTINUED} event; only a continuation's first "
                                           "event may link it to the part before")
            continued = event
        summary.add(event)
        out = chained(line, chain.add(line)) + b"\n"
        digest.update(out)
        size += len(out)
        if sealed is not None and size <= SEAL_IN_MEMORY:
            sealed.append(out)
        else:
            sealed = None
    if chain.count < events:
        raise ChunksIncomplete(f"session {session_id}: {chain.count} of {events} events stored so far")
    if chain.head != head:
        return _refuse(session_id, f"the stored chunks do not chain to the head the broker closed with "
                                   f"({events} events): they were altered or replaced")
    sha256 = digest.hexdigest()
    if continued is not None:  # a continuation: sealed only when its link to the part before holds
        problems = link_problems(backends.recordings, backends.trust, session_id, continued)
        if problems:
            return _refuse(session_id, "continuation link refused: " + "; ".join(problems))

    # Pass 2: the sealed lines into the store (created once): the bytes hashed above, or streamed
    # from the chunks again for a recording too large to keep.
    written = hashlib.sha256()
    try:
        if sealed is not None:
            recording_uri = backends.recordings.put_object(session_id, RECORDING, b"".join(sealed))
        else:
            recording_uri = backends.recordings.put_object_stream(
                session_id, RECORDING, _sealed_blocks(backends, session_id, events, written))
            if written.hexdigest() != sha256:
                return _refuse(session_id, "the chunks changed between reading and sealing; the stored recording "
                                           "does not match its chain (left unsealed for review)")
    except FileExistsError:
        # An earlier attempt stored it and died before the manifest, or someone created it first.
        existing = hashlib.sha256()
        for block in backends.recordings.open_object(session_id, RECORDING):
            existing.update(block)
        if existing.hexdigest() != sha256:
            return _refuse(session_id, "a recording object already exists for this session and does not match "
                                       "its chunks; not sealing over it (left for review)")
        recording_uri = f"{session_id}/{RECORDING}"
    manifest = build_manifest(session_id, summary, events=events, chain_head=head, sha256=sha256, size=size,
                              closed_by=closing["key_id"], signer=backends.signer,
                              previous=continued["previous"] if continued else None)
    try:
        manifest_uri = backends.recordings.put_object(session_id, MANIFEST, manifest)
    except FileExistsError:  # a concurrent delivery sealed it first (objects are created once)
        return _already_sealed(backends, closing, checkpoint_every)
    entry = summary.entry()
    entry.update(recording_uri=recording_uri, manifest_uri=manifest_uri,
                 manifest_sha256=hashlib.sha256(manifest).hexdigest(), manifest=manifest.decode())
    # This call created the manifest: no earlier attempt can have marked its ledger entry.
    _after_seal(backends, session_id, manifest, entry, checkpoint_every, marked=False)
    return Finalized("sealed", session_id, entry=entry)


def _refuse(session_id: str, reason: str) -> Finalized:
    log(logger, logging.ERROR, "seal refused; nothing sealed, nothing removed", session_id=session_id, reason=reason)
    return Finalized("refused", session_id, reason)


def _already_sealed(backends: Backends, closing: dict, checkpoint_every: int) -> Finalized:
    """A seal exists: a duplicate delivery when it covers the same end, else a refusal."""
    session_id = closing["session_id"]
    manifest = backends.recordings.get_object(session_id, MANIFEST)
    parsed = read_manifest(manifest)
    same_end = parsed is not None and parsed[0].get("events") == closing["events"] \
        and parsed[0].get("chain_head") == closing["chain_head"]
    entry: dict = {}
    marked = backends.recordings.object_exists(session_id, ledger.MARKER)
    unfinished = not marked or backends.index.get_session(session_id) is None
    if unfinished and parsed is not None and _trusted(backends, parsed):
        summary = Summary(session_id)
        for line in iter_lines(backends.recordings.open_object(session_id, RECORDING)):
            summary.add(json.loads(line))
        entry = summary.entry()
        entry.update(recording_uri=f"{session_id}/{RECORDING}", manifest_uri=f"{session_id}/{MANIFEST}",
                     manifest_sha256=hashlib.sha256(manifest).hexdigest(), manifest=manifest.decode())
        # The sealer died between the manifest and the ledger/index: finish its work (whoever asks;
        # the broker reads the seal back from the index to notice a seal it did not ask for).
        _after_seal(backends, session_id, manifest, entry, checkpoint_every, marked=marked)
    if not same_end:
        return _refuse(session_id, "the session is already sealed with a different end than this session-closed "
                                   "event names (the broker records the rest as a continuation)")
    if not unfinished:
        _remove_chunks(backends, session_id, manifest)
    return Finalized("duplicate", session_id, entry=entry or None)


def _trusted(backends: Backends, parsed: tuple[dict, bytes]) -> bool:
    from jitgate.recording.seal import canonical
    from jitgate.recording.trust import signature_valid

    key = backends.trust.seal_key(parsed[0].get("key_id"))
    return key is not None and signature_valid(key, parsed[1], canonical(parsed[0]))


def _after_seal(backends: Backends, session_id: str, manifest: bytes, entry: dict, checkpoint_every: int,
                marked: bool | None = None) -> None:
    """Ledger entry (and its marker), index row, chunk removal. ``marked``: whether the session's
    ledger marker exists, when the caller knows (None: look)."""
    manifest_sha256 = hashlib.sha256(manifest).hexdigest()
    if marked is None:
        marked = backends.recordings.object_exists(session_id, ledger.MARKER)
    if not marked:
        number = ledger.append(backends.recordings, backends.signer, session_id=session_id,
                               manifest_sha256=manifest_sha256, checkpoint_every=checkpoint_every,
                               continues=(entry.get("continues") or {}).get("session_id"))
        try:
            backends.recordings.put_object(session_id, ledger.MARKER, json.dumps({"entry": number}).encode() + b"\n")
        except FileExistsError:
            pass
        entry["ledger_entry"] = number
    else:
        entry["ledger_entry"] = json.loads(backends.recordings.get_object(session_id, ledger.MARKER))["entry"]
    # Pub/Sub delivers at least once, possibly concurrently: index regardless of who marked it first.
    backends.index.mark_finalized(session_id)
    backends.index.put_session(entry)
    _remove_chunks(backends, session_id, manifest)


def _remove_chunks(backends: Backends, session_id: str, manifest: bytes) -> None:
    """Chunks go only once the stored recording verifies against its signed manifest."""
    if not getattr(backends.recordings, "may_delete_chunks", True) or not backends.recordings.list_chunks(session_id):
        return
    result = verify_recording(backends.recordings.open_object(session_id, RECORDING), manifest, backends.trust,
                              session_id=session_id)
    if not result.ok:
        log(logger, logging.ERROR, "sealed recording does not verify; chunks kept", session_id=session_id,
            problems="; ".join(result.problems))
        return
    backends.recordings.delete_chunks(session_id)
