"""The one place the review console judges a recording. Every badge comes from verify_recording."""
from __future__ import annotations

from jitgate.recording.seal import Verification, verify


def verify_recording(backends, recording: bytes, manifest: bytes) -> Verification:
    """Chain, SHA-256 and signature, with the keys this deployment trusts (KMS in production)."""
    return verify(recording, manifest, backends.public_keys)
