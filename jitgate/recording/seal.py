"""The sealed recording format: JSON Lines with a SHA-256 chain, and a signed manifest.

Each line of ``recording.jsonl`` is one event exactly as the broker wrote it to its
spool, with a ``chain`` field appended:
    chain_i = sha256(chain_{i-1} || spool_line_i)
starting from chain_{-1} = sha256("jitgate-recording-v2:" + session_id). The chain is
over the bytes the broker wrote, so the broker knows the head of its own spool without
re-serialising anything, its signed session-closed event names that head, and sealing
is a copy that streams (memory bounded by one chunk, never by the recording).

The manifest binds the session: its id, target, principal, protocol, start and end,
event count, chain head and the SHA-256 of the whole file, signed by a trusted key.
``verify_recording`` recomputes everything from a stream of lines and names the first
line that differs, so a single changed byte anywhere is caught and located.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

FORMAT = "jitgate-recording-v2"
_CHAIN_SUFFIX = re.compile(rb',"chain":"([0-9a-f]{64})"\}$')


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_seed(session_id: str) -> str:
    return hashlib.sha256(f"{FORMAT}:{session_id}".encode()).hexdigest()


def next_link(previous: str, line: bytes) -> str:
    return hashlib.sha256(previous.encode() + line).hexdigest()


def chained(line: bytes, link: str) -> bytes:
    """A spool line with its chain value appended as the last JSON field."""
    return line[:-1] + b',"chain":"' + link.encode() + b'"}'


def unchained(line: bytes) -> tuple[bytes, str] | None:
    """(the spool line, its claimed chain value), or None when the line carries no chain field."""
    match = _CHAIN_SUFFIX.search(line)
    if not match:
        return None
    return line[: match.start()] + b"}", match.group(1).decode()


def is_event_line(line: bytes) -> bool:
    return line.startswith(b"{") and line.endswith(b"}")


def iter_lines(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """Non-empty lines from a stream of byte blocks split anywhere; a torn last line is yielded too
    (callers decide: a torn tail is dropped by the sealer, reported by the verifier)."""
    rest = b""
    for block in blocks:
        if not block:
            continue
        rest += block
        *lines, rest = rest.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    if rest.strip():
        yield rest


class Chain:
    """The running head of a session's chain."""

    def __init__(self, session_id: str, head: str | None = None, count: int = 0):
        self.head = head or chain_seed(session_id)
        self.count = count

    def add(self, line: bytes) -> str:
        self.head = next_link(self.head, line)
        self.count += 1
        return self.head


def parse_events(raw: bytes) -> list[dict]:
    """Events from spool or recording bytes. A torn last line (crash mid-write) is dropped, not fatal."""
    events = []
    lines = raw.split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1 or all(not rest.strip() for rest in lines[i + 1 :]):
                break  # torn tail from a crash
            raise
    return events


class Summary:
    """What the manifest and the index say about a session, gathered one event at a time."""

    def __init__(self, session_id: str):
        self.session_id = session_id
        self.start: dict = {}
        self.end: dict | None = None
        self.first_ts = self.last_ts = 0.0
        self.statements = self.errors = self.denied = 0
        self.approvals: set[str] = set()
        self.continues: dict | None = None

    def add(self, event: dict) -> None:
        kind = event.get("type")
        ts = event.get("ts") or 0
        if not self.first_ts:
            self.first_ts = ts
        self.last_ts = ts
        if kind == "session.start" and not self.start:
            self.start = event
        elif kind == "session.end":
            self.end = event
        elif kind == "session.continued" and self.continues is None:
            self.continues = event
        elif kind == "statement":
            self.statements += 1
            self.denied += event.get("decision") == "deny"
        elif kind == "result" and event.get("error"):
            self.errors += 1
        if event.get("approval_id"):
            self.approvals.add(str(event["approval_id"]))

    @property
    def principal(self) -> dict:
        return (self.start.get("principal") or (self.continues or {}).get("principal") or {})

    def entry(self) -> dict:
        """The index entry of a session: who, when, target, what ran, approvals."""
        origin = self.start or self.continues or {}
        return {
            "session_id": self.session_id,
            "principal": self.principal.get("username", ""),
            "groups": self.principal.get("groups", []),
            "target": origin.get("target", ""),
            "kind": origin.get("kind", ""),
            "client": origin.get("client", ""),
            "broker": origin.get("broker", ""),
            "started_at": origin.get("ts", self.first_ts),
            "ended_at": (self.end or {}).get("ts", self.last_ts),
            "end_reason": (self.end or {}).get("reason", "crash: no session.end event"),
            "statements": self.statements,
            "errors": self.errors,
            "denied": self.denied,
            "approvals": sorted(self.approvals),
            **({"continues": self.continues.get("previous")} if self.continues else {}),
        }


def summarize(session_id: str, events: list[dict]) -> dict:
    summary = Summary(session_id)
    for event in events:
        summary.add(event)
    return summary.entry()


def build_manifest(session_id: str, summary: Summary, *, events: int, chain_head: str, sha256: str, size: int,
                   closed_by: str, signer, previous: dict | None = None, sealed_at: float | None = None) -> bytes:
    """The signed manifest: everything a reviewer needs to know the file is this session's, whole."""
    entry = summary.entry()
    manifest = {
        "format": FORMAT,
        "session_id": session_id,
        "target": entry["target"],
        "principal": entry["principal"],
        "protocol": entry["kind"],
        "started_at": entry["started_at"],
        "ended_at": entry["ended_at"],
        "end_reason": entry["end_reason"],
        "events": events,
        "chain_head": chain_head,
        "sha256": sha256,
        "bytes": size,
        "closed_by": closed_by,
        "sealed_at": round(sealed_at if sealed_at is not None else time.time(), 3),
        "key_id": signer.key_id,
    }
    if previous:  # a continuation names the part it follows
        manifest["continues"] = previous
    signature = signer.sign(canonical(manifest))
    manifest["signature"] = base64.b64encode(signature).decode()
    return json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"


def seal(session_id: str, events: list[dict], signer, *, sealed_at: float | None = None) -> tuple[bytes, bytes]:
    """(recording.jsonl bytes, manifest.json bytes) for a list of events, in order (tests and tools;
    finalize streams the same steps from the stored chunks)."""
    chain, summary, out = Chain(session_id), Summary(session_id), []
    for event in events:
        event = {k: v for k, v in event.items() if k != "chain"}
        line = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
        out.append(chained(line, chain.add(line)))
        summary.add(event)
    recording = b"\n".join(out) + (b"\n" if out else b"")
    manifest = build_manifest(session_id, summary, events=chain.count, chain_head=chain.head,
                              sha256=hashlib.sha256(recording).hexdigest(), size=len(recording),
                              closed_by="", signer=signer, sealed_at=sealed_at)
    return recording, manifest


@dataclass
class Verification:
    """The result of verifying one sealed session: one function's answer for the CLI and the console.

    status: "ok", "tampered" (something does not match), "untrusted" (signed by a key that is not
    configured), "missing" (no sealed recording) or "unreadable"."""

    ok: bool
    problems: list[str]
    events: int
    key_id: str | None
    status: str = "ok"
    session_id: str = ""
    key_name: str | None = None
    manifest: dict = field(default_factory=dict)
    ledger_entry: int | None = None
    notes: list[str] = field(default_factory=list)  # facts a reviewer needs beside the verdict (continuations)
    continuation: str | None = None  # the part that holds what this session recorded after an unrequested seal

    def __str__(self) -> str:
        if self.ok:
            where = f", ledger entry {self.ledger_entry}" if self.ledger_entry is not None else ""
            text = (f"OK: session {self.session_id}: {self.events} events, chain intact, signature valid "
                    f"(key {self.key_name or self.key_id}){where}")
        else:
            text = f"{self.status.upper()}: session {self.session_id}: " + "; ".join(self.problems)
        return "\n".join([text, *(f"  {note}" for note in self.notes)])

    def to_dict(self) -> dict:
        return {"session_id": self.session_id, "status": self.status, "ok": self.ok, "problems": list(self.problems),
                "events": self.events, "key_id": self.key_id, "key_name": self.key_name,
                "ledger_entry": self.ledger_entry, "notes": list(self.notes),
                **({"continues": self.manifest["continues"]} if self.manifest.get("continues") else {})}


def read_manifest(manifest_bytes: bytes) -> tuple[dict, bytes] | None:
    """(manifest without its signature, signature), or None if it is not a signed jitgate manifest."""
    try:
        manifest = json.loads(manifest_bytes)
        signature = base64.b64decode(manifest.pop("signature"), validate=True)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(manifest, dict):
        return None
    return manifest, signature


def verify_recording(blocks: Iterable[bytes], manifest_bytes: bytes, trust, *, session_id: str | None = None) -> Verification:
    """Check a recording (a stream of byte blocks) against its manifest, with keys from ``trust``
    (a jitgate.recording.trust.Trust, or a plain {key_id: public key} dict in tests).

    ``session_id`` is the session the caller asked about: a manifest of another session is refused
    even when everything else verifies (a copied folder)."""
    from jitgate.recording.trust import as_trust

    trust = as_trust(trust)
    problems: list[str] = []
    parsed = read_manifest(manifest_bytes)
    if parsed is None:
        return Verification(False, ["the manifest is not a jitgate manifest (unreadable or unsigned)"], 0, None,
                            status="unreadable", session_id=session_id or "")
    manifest, signature = parsed
    key_id = manifest.get("key_id")
    status = "ok"
    signed_session = manifest.get("session_id")
    if manifest.get("format") != FORMAT:
        problems.append(f"manifest format {manifest.get('format')!r} is not {FORMAT}")
    if session_id is not None and signed_session != session_id:
        problems.append(f"the manifest is for session {signed_session!r}, not {session_id!r} "
                        "(files of another session were put in its place)")
    key = trust.seal_key(key_id)
    key_name = trust.describe(key_id)
    if key is None:
        problems.append(f"manifest signed by key {key_id!r}, which is not a configured seal key "
                        f"({trust.where()})")
        status = "untrusted"
    else:
        from jitgate.recording.trust import signature_valid

        if not signature_valid(key, signature, canonical(manifest)):
            problems.append(f"manifest signature does not verify with {key_name} "
                            "(the manifest was altered or signed by another key)")
    digest = hashlib.sha256()
    chain = Chain(signed_session or "")
    size = 0
    broken = False
    number = 0

    def hashed(stream):
        nonlocal size
        for block in stream:
            digest.update(block)
            size += len(block)
            yield block

    for number, line in enumerate(iter_lines(hashed(blocks)), start=1):
        if broken:
            continue  # keep hashing the rest of the file for its digest
        parts = unchained(line)
        if parts is None:
            problems.append(f"line {number} is not a chained event")
            broken = True
            continue
        original, claimed = parts
        if chain.add(original) != claimed:
            problems.append(f"chain breaks at line {number} (event altered, inserted or removed there)")
            broken = True
    if digest.hexdigest() != manifest.get("sha256"):
        problems.append("recording bytes do not match the manifest's SHA-256")
    if not broken:
        if chain.count != manifest.get("events"):
            problems.append(f"manifest says {manifest.get('events')} events, recording has {chain.count}")
        if chain.head != manifest.get("chain_head"):
            problems.append("chain head differs from the manifest (events truncated or appended)")
    if problems and status == "ok":
        status = "tampered"
    return Verification(not problems, problems, chain.count, key_id, status=status,
                        session_id=session_id or signed_session or "", key_name=key_name, manifest=manifest)


def verify(recording: bytes, manifest_bytes: bytes, trust, *, session_id: str | None = None) -> Verification:
    return verify_recording([recording], manifest_bytes, trust, session_id=session_id)
