"""The one place the review console judges a recording: every badge comes from verification_of.

It is jitgate.recording.audit.verify_session, the same check as `jitgate verify`: the manifest
is this session's and signed by a key the deployment trusts, the recording matches it byte for
byte and chain link for chain link, and the seal ledger holds that manifest.
"""
from __future__ import annotations

from jitgate.recording.audit import verify_session
from jitgate.recording.seal import Verification


def verification_of(backends, session_id: str) -> Verification:
    return verify_session(backends, session_id)
