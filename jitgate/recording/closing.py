"""The broker's authenticated end of a session: the only thing finalize seals on.

The broker signs {session id, event count, chain head} of the spool it closed with its own
session-closed key; finalize checks the signature against the trusted session-closed keys and
seals exactly that many events, and only if the stored chunks chain to that head. Anyone who can
publish to the topic or reach the function's URL without the broker's key gets a refusal in the
log and changes nothing.
"""
from __future__ import annotations

import base64
import time

from jitgate.recording.seal import canonical

KIND = "jitgate-session-closed-v1"


class ClosingRefused(ValueError):
    """A session-closed event that must not be acted on (unsigned, untrusted key, wrong shape)."""


def sign_closing(signer, session_id: str, *, events: int, chain_head: str, previous: dict | None = None) -> dict:
    body = {"kind": KIND, "session_id": session_id, "events": events, "chain_head": chain_head,
            "closed_at": round(time.time(), 3), "key_id": signer.key_id}
    if previous:
        body["continues"] = previous
    body["signature"] = base64.b64encode(signer.sign(canonical(body))).decode()
    return body


def check_closing(payload, trust) -> dict:
    """The verified closing event (without its signature), or ClosingRefused saying what is wrong."""
    from jitgate.recording.trust import signature_valid

    if not isinstance(payload, dict):
        raise ClosingRefused("the event is not a JSON object")
    session_id = payload.get("session_id")
    if not isinstance(session_id, str) or not session_id:
        raise ClosingRefused("session_id must be a non-empty string")
    body = {k: v for k, v in payload.items() if k != "signature"}
    if body.get("kind") != KIND or "signature" not in payload:
        raise ClosingRefused(f"session {session_id}: the session-closed event is not signed by a broker "
                             "(only the broker that recorded a session can close it)")
    if not isinstance(body.get("events"), int) or body["events"] < 1 or not isinstance(body.get("chain_head"), str):
        raise ClosingRefused(f"session {session_id}: the session-closed event lacks its event count or chain head")
    key = trust.session_closed_key(body.get("key_id"))
    if key is None:
        raise ClosingRefused(f"session {session_id}: the session-closed event is signed by key {body.get('key_id')!r}, "
                             f"which is not a trusted broker key ({trust.where()})")
    try:
        signature = base64.b64decode(payload["signature"], validate=True)
    except (ValueError, TypeError):
        raise ClosingRefused(f"session {session_id}: the session-closed signature is not base64") from None
    if not signature_valid(key, signature, canonical(body)):
        raise ClosingRefused(f"session {session_id}: the session-closed signature does not verify with "
                             f"{trust.describe(body.get('key_id'))}")
    return body
