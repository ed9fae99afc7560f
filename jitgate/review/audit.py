"""The review audit trail: who looked at which recording, when, and how.

Every view of a session page, terminal playback, download and statement search writes one
JSON object, once, never overwritten: <audit store>/<session id>/<time>-<random>.json
(searches under ``_search``), and logs the same as a structured line (Cloud Logging keeps
it in production). The store is a folder beside the recordings locally (<home>/review-audit)
and its own bucket in production (JITGATE_REVIEW_AUDIT_BUCKET, write-once objects under a
retention policy; the console's account may create objects there, not delete them).
A view is recorded before the content is sent: if the trail cannot be written, the reviewer
gets an error, not the recording (fail closed).
"""
from __future__ import annotations

import json
import logging
import secrets
import time
from pathlib import Path

from jitgate.logs import log

logger = logging.getLogger("jitgate.review.audit")
SEARCH_KEY = "_search"


def audit_bucket(settings) -> str:
    return settings.env.get("JITGATE_REVIEW_AUDIT_BUCKET") or f"{settings.project}-jitgate-review-audit"


def provision_audit_bucket(settings) -> None:
    """The audit bucket on a local emulator (in production Terraform creates it: infra/review.tf)."""
    from google.api_core import exceptions as gexc
    from google.cloud import storage

    try:
        storage.Client(project=settings.project).create_bucket(audit_bucket(settings))
    except gexc.Conflict:
        pass


class AuditTrail:
    def __init__(self, settings):
        self.settings = settings
        if settings.backends == "gcp":
            from jitgate.backends.gcp import GcsRecordingStore

            self.store = GcsRecordingStore(audit_bucket(settings), settings.project)
            self.root: Path | None = None
        else:
            from jitgate.backends.embedded import LocalRecordingStore

            self.root = Path(settings.env.get("JITGATE_REVIEW_AUDIT_DIR") or settings.home / "review-audit")
            self.store = LocalRecordingStore(self.root)

    def record(self, who: str, action: str, session_id: str, **detail) -> dict:
        now = time.time()
        entry = {"at": round(now, 3), "who": who, "action": action, "session_id": session_id, **detail}
        name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}-{int(now * 1e6) % 1_000_000:06d}-{secrets.token_hex(4)}.json"
        self.store.put_object(session_id or SEARCH_KEY, name, json.dumps(entry, sort_keys=True).encode())
        log(logger, logging.INFO, "review audit", **entry)
        return entry

    def views(self, session_id: str, limit: int = 50) -> list[dict]:
        """Earlier looks at this session, newest first."""
        if self.root is not None:
            folder = self.root / session_id
            paths = sorted(folder.glob("*.json"), reverse=True)[:limit] if folder.is_dir() else []
            return [json.loads(p.read_bytes()) for p in paths]
        blobs = sorted(self.store.bucket.list_blobs(prefix=f"{session_id}/"), key=lambda b: b.name, reverse=True)[:limit]
        return [json.loads(b.download_as_bytes()) for b in blobs]
