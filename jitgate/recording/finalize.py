"""Sealing a session: gather its chunks, chain, sign, store, index. Idempotent.

This is the body of functions/finalize_recording; the broker also calls it for
orphaned spools after a crash and when no finalize endpoint is configured.
"""
from __future__ import annotations

from jitgate.backends import Backends
from jitgate.recording.seal import parse_events, seal, summarize

RECORDING = "recording.jsonl"
MANIFEST = "manifest.json"


def finalize_session(backends: Backends, session_id: str) -> dict | None:
    """Seal one session. Returns its index entry, or None if it was already sealed."""
    if backends.recordings.object_exists(session_id, MANIFEST):
        backends.index.mark_finalized(session_id)
        if backends.index.get_session(session_id) is None:  # the sealer died (or is still) before indexing
            _index_sealed(backends, session_id)
        return None
    raw = b"".join(backends.recordings.get_chunk(session_id, i) for i in backends.recordings.list_chunks(session_id))
    if not raw:
        raise FileNotFoundError(f"no recorded chunks for session {session_id}")
    events = parse_events(raw)
    recording, manifest = seal(session_id, events, backends.signer)
    recording_uri = None
    if not backends.recordings.object_exists(session_id, RECORDING):
        try:
            recording_uri = backends.recordings.put_object(session_id, RECORDING, recording)
        except FileExistsError:  # a concurrent delivery of the same event stored it first
            pass
    if recording_uri is None:
        # A previous attempt stored the recording but died before the manifest: reuse it.
        recording = backends.recordings.get_object(session_id, RECORDING)
        recording, manifest = _reseal_existing(session_id, recording, backends)
        recording_uri = f"{session_id}/{RECORDING}"
    try:
        manifest_uri = backends.recordings.put_object(session_id, MANIFEST, manifest)
    except FileExistsError:  # a concurrent delivery sealed it first (objects are created once); it indexes
        return None
    entry = summarize(session_id, events)
    entry.update(recording_uri=recording_uri, manifest_uri=manifest_uri)
    # Only the delivery that created the manifest gets here; a duplicate may already have marked it
    # finalized meanwhile (Pub/Sub delivers at least once, possibly concurrently), so index regardless.
    backends.index.mark_finalized(session_id)
    backends.index.put_session(entry)
    return entry


def _index_sealed(backends: Backends, session_id: str) -> None:
    entry = summarize(session_id, parse_events(backends.recordings.get_object(session_id, RECORDING)))
    entry.update(recording_uri=f"{session_id}/{RECORDING}", manifest_uri=f"{session_id}/{MANIFEST}")
    backends.index.put_session(entry)


def _reseal_existing(session_id: str, recording: bytes, backends: Backends) -> tuple[bytes, bytes]:
    events = parse_events(recording)
    return seal(session_id, events, backends.signer)
