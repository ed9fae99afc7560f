"""Continuations: what a session records after a seal its broker did not ask for.

Only a session-closed event signed with a broker key seals a session, but whoever holds such a
key (a second broker of the group, an operator with the key file) can sign one over the chunks
uploaded so far while the session is still live. Nothing after that point may be lost: the broker
notices the seal (it reads seals back after its uploads and at its end) and records everything
past the sealed prefix into a continuation part, ``<session>-c1`` (then ``-c2`` ...), sealed at
the broker's own end. The continuation's first event, ``session.continued``, links it to the part
before: that part's session id, the SHA-256 of its signed manifest, its event count and chain
head. The link is inside the chained recording (the broker's signed end covers it) and copied
into the continuation's signed manifest; finalize seals a continuation only when the link holds,
and ``verify``/``audit`` check it again later.
"""
from __future__ import annotations

import hashlib
import re

from jitgate.recording.seal import FORMAT, canonical, read_manifest

CONTINUED = "session.continued"
NO_END = "crash: no session.end event"  # Summary's end_reason for a seal that does not hold the session's end
_PART = re.compile(r"^(?P<root>.+)-c(?P<n>[1-9][0-9]{0,5})$")


def continuation_id(session_id: str) -> str:
    """The one id the continuation of ``session_id`` may have: a part has at most one continuation."""
    match = _PART.match(session_id)
    if match:
        return f"{match['root']}-c{int(match['n']) + 1}"
    return f"{session_id}-c1"


def link_to(manifest_bytes: bytes) -> dict | None:
    """The link a continuation carries to the sealed part ``manifest_bytes`` describes."""
    parsed = read_manifest(manifest_bytes)
    if parsed is None:
        return None
    manifest = parsed[0]
    return {"session_id": manifest.get("session_id"), "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
            "events": manifest.get("events"), "chain_head": manifest.get("chain_head")}


def link_problems(store, trust, part_id: str, continued: dict) -> list[str]:
    """What is wrong with the link of continuation ``part_id`` (its session.continued event), as
    sentences naming the fault; [] when the part it names is sealed, unchanged since the link was
    made, signed by a trusted seal key, ended without its end, and the same principal/target/kind."""
    from jitgate.recording.finalize import MANIFEST
    from jitgate.recording.trust import as_trust, signature_valid

    link = continued.get("previous") if isinstance(continued, dict) else None
    if not isinstance(link, dict) or not isinstance(link.get("session_id"), str) or not link["session_id"]:
        return [f"continuation {part_id}: its session.continued event names no previous part"]
    previous = link["session_id"]
    expected = continuation_id(previous)
    if part_id != expected:
        return [f"{part_id} claims to continue session {previous}, whose continuation can only be {expected} "
                "(a part that claims another session)"]
    try:
        raw = store.get_object(previous, MANIFEST)
    except (FileNotFoundError, KeyError, ValueError):
        return [f"the part it continues, session {previous}, has no sealed manifest (deleted, or never sealed)"]
    actual = hashlib.sha256(raw).hexdigest()
    if link.get("manifest_sha256") != actual:
        return [f"the link names manifest SHA-256 {str(link.get('manifest_sha256'))[:16]}... of session {previous}, "
                f"but its manifest is {actual[:16]}... (the first part was replaced or re-sealed, or the link is forged)"]
    parsed = read_manifest(raw)
    if parsed is None:
        return [f"the manifest of session {previous} is not a signed jitgate manifest"]
    manifest, signature = parsed
    trust = as_trust(trust)
    key = trust.seal_key(manifest.get("key_id"))
    problems = []
    if key is None or not signature_valid(key, signature, canonical(manifest)):
        problems.append(f"the manifest of session {previous} is not signed by a configured seal key")
    if manifest.get("format") != FORMAT or manifest.get("session_id") != previous:
        problems.append(f"the manifest of session {previous} is not that session's")
    if manifest.get("events") != link.get("events") or manifest.get("chain_head") != link.get("chain_head"):
        problems.append(f"the link's event count and chain head differ from the seal of session {previous}")
    if manifest.get("end_reason") != NO_END:
        problems.append(f"session {previous} was sealed with its own end ({manifest.get('end_reason')!r}); "
                        "nothing continues a session that ended")
    principal = (continued.get("principal") or {}).get("username", "") if isinstance(continued.get("principal"), dict) else ""
    for what, mine, theirs in (("principal", principal, manifest.get("principal")),
                               ("target", continued.get("target", ""), manifest.get("target")),
                               ("protocol", continued.get("kind", ""), manifest.get("protocol"))):
        if mine != theirs:
            problems.append(f"the continuation's {what} {mine!r} is not the {what} {theirs!r} of session {previous}")
    return problems
