"""The sealed recording format: JSON Lines with a SHA-256 chain, and a signed manifest.

Each line of ``recording.jsonl`` is one event with a ``chain`` field:
    chain_i = sha256(chain_{i-1} || canonical(event_i without chain))
starting from chain_{-1} = sha256("jitgate-recording-v1:" + session_id). The
manifest names the head of the chain, the event count and the SHA-256 of the
whole file, and carries an Ed25519 signature over its canonical JSON. ``verify``
recomputes everything and names the first line that differs, so a single changed
byte anywhere is caught and located.
"""
from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FORMAT = "jitgate-recording-v1"


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_seed(session_id: str) -> str:
    return hashlib.sha256(f"{FORMAT}:{session_id}".encode()).hexdigest()


def next_link(previous: str, event: dict) -> str:
    return hashlib.sha256(previous.encode() + canonical(event)).hexdigest()


def parse_events(raw: bytes) -> list[dict]:
    """Events from spool bytes. A torn last line (crash mid-write) is dropped, not fatal."""
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


def seal(session_id: str, events: list[dict], signer, *, sealed_at: float | None = None) -> tuple[bytes, bytes]:
    """(recording.jsonl bytes, manifest.json bytes) for a session's events, in order."""
    link = chain_seed(session_id)
    out = []
    for event in events:
        event = {k: v for k, v in event.items() if k != "chain"}
        link = next_link(link, event)
        out.append(canonical({**event, "chain": link}))
    recording = b"\n".join(out) + (b"\n" if out else b"")
    manifest = {
        "format": FORMAT,
        "session_id": session_id,
        "events": len(events),
        "chain_head": link,
        "sha256": hashlib.sha256(recording).hexdigest(),
        "bytes": len(recording),
        "sealed_at": round(sealed_at if sealed_at is not None else time.time(), 3),
        "key_id": signer.key_id,
    }
    signature = signer.sign(canonical(manifest))
    manifest["signature"] = base64.b64encode(signature).decode()
    return recording, json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"


@dataclass
class Verification:
    ok: bool
    problems: list[str]
    events: int
    key_id: str | None

    def __str__(self) -> str:
        if self.ok:
            return f"OK: {self.events} events, chain intact, signature valid (key {self.key_id})"
        return "TAMPERED: " + "; ".join(self.problems)


def verify(recording: bytes, manifest_bytes: bytes, public_keys: dict[str, Ed25519PublicKey]) -> Verification:
    problems: list[str] = []
    try:
        manifest = json.loads(manifest_bytes)
        signature = base64.b64decode(manifest.pop("signature"))
    except (ValueError, KeyError, TypeError):
        return Verification(False, ["the manifest is not a jitgate manifest (unreadable or unsigned)"], 0, None)
    key_id = manifest.get("key_id")
    key = public_keys.get(key_id)
    if key is None:
        problems.append(f"manifest signed by unknown key {key_id!r}")
    else:
        try:
            key.verify(signature, canonical(manifest))
        except InvalidSignature:
            problems.append("manifest signature does not verify (the manifest was altered or signed by another key)")
    if hashlib.sha256(recording).hexdigest() != manifest.get("sha256"):
        problems.append("recording bytes do not match the manifest's SHA-256")
    link = chain_seed(manifest.get("session_id", ""))
    count = 0
    for number, line in enumerate(recording.split(b"\n"), start=1):
        if not line:
            continue
        try:
            event = json.loads(line)
            claimed = event.pop("chain")
        except (ValueError, KeyError, AttributeError):
            problems.append(f"line {number} is not a chained event")
            break
        link = next_link(link, event)
        count += 1
        if link != claimed:
            problems.append(f"chain breaks at line {number} (event altered, inserted or removed there)")
            break
    else:
        if count != manifest.get("events"):
            problems.append(f"manifest says {manifest.get('events')} events, recording has {count}")
        if link != manifest.get("chain_head"):
            problems.append("chain head differs from the manifest (events truncated or appended)")
    return Verification(not problems, problems, count, key_id)


def summarize(session_id: str, events: list[dict]) -> dict:
    """The index entry of a session: who, when, target, what ran, approvals."""
    start = next((e for e in events if e.get("type") == "session.start"), {})
    end = next((e for e in reversed(events) if e.get("type") == "session.end"), None)
    statements = [e for e in events if e.get("type") == "statement"]
    results = [e for e in events if e.get("type") == "result"]
    principal = start.get("principal") or {}
    return {
        "session_id": session_id,
        "principal": principal.get("username", ""),
        "groups": principal.get("groups", []),
        "target": start.get("target", ""),
        "kind": start.get("kind", ""),
        "client": start.get("client", ""),
        "broker": start.get("broker", ""),
        "started_at": start.get("ts", events[0]["ts"] if events else 0),
        "ended_at": (end or (events[-1] if events else {})).get("ts", 0),
        "end_reason": (end or {}).get("reason", "crash: no session.end event"),
        "statements": len(statements),
        "errors": sum(1 for r in results if r.get("error")),
        "denied": sum(1 for s in statements if s.get("decision") == "deny"),
        "approvals": sorted({e["approval_id"] for e in events if e.get("approval_id")}),
    }
