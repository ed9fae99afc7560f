"""Verification of one session, and the audit of the whole store against the ledger.

``verify_session`` is the one function the CLI and the review console call: it returns a
``Verification`` (status, problems, key name, ledger entry). ``audit`` walks the ledger and the
store and reports what is missing, changed, never sealed or out of the ledger.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from jitgate.recording import ledger
from jitgate.recording.finalize import MANIFEST, RECORDING
from jitgate.recording.continuation import CONTINUED, NO_END, continuation_id, link_problems
from jitgate.recording.seal import Verification, read_manifest, verify_recording

NEVER_SEALED_SECONDS = 3600.0  # a spool or chunks older than this without a seal is reported


def verify_session(backends, session_id: str, *, ledger_walk: ledger.LedgerWalk | None = None,
                   trust=None) -> Verification:
    """Verify a sealed session where it is stored: the manifest is this session's, signed by a
    configured key, the recording matches it byte for byte, and the ledger holds that manifest.

    ``ledger_walk`` (from ledger.walk) saves re-reading the ledger when verifying many sessions."""
    trust = trust or backends.trust
    store = backends.recordings
    try:
        manifest = store.get_object(session_id, MANIFEST)
    except (FileNotFoundError, KeyError, ValueError):
        return Verification(False, [f"no sealed recording for session {session_id!r} (no manifest)"], 0, None,
                            status="missing", session_id=session_id)
    try:
        result = verify_recording(store.open_object(session_id, RECORDING), manifest, trust, session_id=session_id)
    except FileNotFoundError:
        parsed = read_manifest(manifest)
        key_id = parsed[0].get("key_id") if parsed else None
        return Verification(False, [f"the recording file of session {session_id!r} is gone (its manifest remains)"],
                            0, key_id, status="missing", session_id=session_id, key_name=trust.describe(key_id))
    manifest_sha256 = hashlib.sha256(manifest).hexdigest()
    located = ledger.Located()
    if ledger_walk is None and not result.manifest.get("continues") and result.manifest.get("end_reason") != NO_END:
        # A session that no continuation concerns: its marker leads to its entry, signed by the seal
        # key, a few reads whatever the ledger's size (a page view would read it all).
        located = ledger.locate(store, trust, session_id, manifest_sha256)
        result.notes.extend(located.notes)
    if located.number is not None:
        result.ledger_entry = located.number
    else:
        _check_in_walk(store, trust, session_id, manifest_sha256, result, ledger_walk)
    result.notes = list(dict.fromkeys(result.notes))  # a bad checkpoint seen by both ways is named once
    if result.problems:
        result.ok = False
        if result.status == "ok":
            result.status = "tampered"
    return result


def _check_in_walk(store, trust, session_id: str, manifest_sha256: str, result: Verification,
                   walk: ledger.LedgerWalk | None) -> None:
    """The ledger's word on one session from the whole ledger (audit's walk, or read now)."""
    reading_now = walk is None
    # One session needs the entries only (a checkpoint per seal would double what it reads).
    walk = walk if walk is not None else ledger.walk(store, trust, checkpoints=False)
    numbers = walk.by_session.get(session_id, [])
    matching = [n for n in numbers if walk.entries[n].get("manifest_sha256") == manifest_sha256]
    if matching:
        result.ledger_entry = matching[0]
        if reading_now and matching[0] in walk.unsigned:  # an older version's entry; audit checks checkpoints itself
            raw = store.get_ledger(ledger.entry_name(matching[0]))
            if ledger.covering_checkpoint(store, trust, matching[0], raw, result.notes) is None:
                result.notes.append(f"ledger entry {matching[0]} carries no signature of its own and is not under a "
                                    "signed checkpoint yet: no seal-key signature vouches for it")
    elif walk.rejected.get(session_id) and not numbers:
        number, why = walk.rejected[session_id][0]
        result.problems.append(f"its only ledger entry ({number}) was not written by finalize: {why}")
    elif numbers:
        result.problems.append(f"the manifest differs from the one the ledger recorded at its seal (entry {numbers[0]}): "
                               "the session was re-sealed or its manifest replaced")
    else:
        result.problems.append("the session is not in the seal ledger (sealed outside finalize, or its entry removed)")
    _check_continuation(store, trust, session_id, result, walk)


def _first_event(store, session_id: str) -> dict:
    for block in store.open_object(session_id, RECORDING):
        line = block.split(b"\n", 1)[0]
        try:
            return json.loads(line)
        except ValueError:
            return {}
    return {}


def _check_continuation(store, trust, session_id: str, result: Verification, walk: ledger.LedgerWalk) -> None:
    """A continuation's link must hold; a part that was continued says so and its continuation must be there."""
    link = result.manifest.get("continues")
    if link:
        first = _first_event(store, session_id)
        if first.get("type") != CONTINUED or first.get("previous") != link:
            result.problems.append("the manifest's continuation link is not the one the recording's first event holds")
        else:
            problems = link_problems(store, trust, session_id, first)
            result.problems.extend(f"broken continuation link: {p}" for p in problems)
            if not problems:
                numbers = walk.by_session.get(link["session_id"], [])
                where = f" (ledger entry {numbers[0]})" if numbers else ""
                result.notes.append(f"continues session {link['session_id']}{where}, after its {link['events']} "
                                    "sealed events: that part was sealed without its broker's end")
    for number in walk.continued_by.get(session_id, []):
        part = str(walk.entries[number].get("session_id"))
        result.continuation = part
        if store.object_exists(part, MANIFEST):
            result.notes.append(f"has a continuation: session {part} (ledger entry {number}) holds what it recorded "
                                f"after this seal; verify it too")
        else:
            result.problems.append(f"its continuation, session {part} (ledger entry {number}), is gone")
    if not walk.continued_by.get(session_id) and result.manifest.get("end_reason") == NO_END:
        result.notes.append(f"sealed without its session end (not by its broker's end): what followed is in "
                            f"continuation {continuation_id(session_id)}, which is not in the ledger yet")


@dataclass
class AuditReport:
    problems: list[str] = field(default_factory=list)
    sessions_checked: int = 0
    ledger_entries: int = 0
    checkpoints: int = 0
    verified_size: int = 0
    unsigned_tail: list[tuple[int, str]] = field(default_factory=list)  # entries after the newest signed checkpoint

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"ok": self.ok, "problems": self.problems, "sessions_checked": self.sessions_checked,
                "ledger_entries": self.ledger_entries, "checkpoints": self.checkpoints,
                "checkpointed_entries": self.verified_size,
                "after_last_checkpoint": {"entries": len(self.unsigned_tail),
                                          "sessions": [session for _, session in self.unsigned_tail]}}


def audit(backends, *, spool_dir: Path | None = None, never_sealed_seconds: float = NEVER_SEALED_SECONDS,
          now: float | None = None, index_limit: int = 100000) -> AuditReport:
    now = time.time() if now is None else now
    store = backends.recordings
    walk = ledger.walk(store, backends.trust)
    report = AuditReport(problems=list(walk.problems), ledger_entries=walk.size, checkpoints=walk.checkpoints,
                         verified_size=walk.verified_size, unsigned_tail=walk.unsigned_tail())
    stored = store.stored_sessions()
    # Every session the ledger knows must still be there, unchanged.
    for session_id in sorted(walk.by_session):
        report.sessions_checked += 1
        if session_id not in stored or not stored[session_id]["manifest"]:
            entry = walk.by_session[session_id][0]
            report.problems.append(f"session {session_id} (ledger entry {entry}) is gone: its manifest was deleted")
            continue
        result = verify_session(backends, session_id, ledger_walk=walk)
        if not result.ok:
            report.problems.append(f"session {session_id}: " + "; ".join(result.problems))
        elif result.manifest.get("end_reason") == NO_END and not walk.continued_by.get(session_id):
            # Sealed over a prefix by someone else: its broker records the rest as a continuation.
            part = continuation_id(session_id)
            pending = (stored.get(part) or {}).get("chunks_updated") or (
                spool_dir is not None and (spool_dir / f"{part}.jsonl").exists())
            if not pending:
                report.problems.append(f"session {session_id} was sealed without its session end (not by its "
                                       f"broker's end) and no continuation follows it: what it recorded after "
                                       f"that seal is missing ({part} is neither sealed nor pending)")
    # Every sealed session must be in the ledger; chunks must not wait unsealed for long.
    for session_id, info in sorted(stored.items()):
        if info["manifest"] and session_id not in walk.by_session:
            report.problems.append(f"session {session_id} is sealed but missing from the ledger")
        elif not info["manifest"] and info["chunks_updated"] and now - info["chunks_updated"] > never_sealed_seconds:
            report.problems.append(f"session {session_id} has chunks from {int(now - info['chunks_updated'])}s ago "
                                   "and was never sealed")
    if spool_dir is not None and spool_dir.exists():
        for spool in sorted(spool_dir.glob("*.jsonl")):
            age = now - spool.stat().st_mtime
            if age > never_sealed_seconds:
                report.problems.append(f"spool {spool} was last written {int(age)}s ago and was never sealed")
    # The index is a search aid the broker host can edit: it must not list what the ledger does not hold.
    for row in backends.index.list_sessions(limit=index_limit):
        if row.get("session_id") not in walk.by_session:
            report.problems.append(f"the session index lists {row.get('session_id')}, which is not in the ledger")
    return report


def describe(report: AuditReport) -> str:
    head = (f"{report.ledger_entries} ledger entries ({report.verified_size} under a signed checkpoint, "
            f"{report.checkpoints} checkpoints), {report.sessions_checked} sessions verified")
    tail = ""
    if report.unsigned_tail:
        shown = report.unsigned_tail[:20]
        more = f" and {len(report.unsigned_tail) - len(shown)} more" if len(report.unsigned_tail) > len(shown) else ""
        tail = (f"\n  {len(report.unsigned_tail)} ledger entries after the last signed checkpoint (each is signed, but "
                f"no signature covers their count and order yet; the next seal's checkpoint will): " +
                ", ".join(f"{n} ({session})" for n, session in shown) + more)
    if report.ok:
        return "OK: " + head + tail
    return "PROBLEMS: " + head + tail + "\n" + "\n".join(f"  - {p}" for p in report.problems)


def as_json(report: AuditReport) -> str:
    return json.dumps(report.to_dict(), indent=2)
