"""The interfaces every backend set implements.

Two sets exist side by side: ``embedded`` (SQLite, a local folder, an in-process
bus, file/env secrets, a local Ed25519 key) for one machine, and ``gcp``
(Firestore, Pub/Sub, Cloud Storage, Secret Manager, Cloud KMS) for production.
The broker, the functions and the CLI only ever see these interfaces; one
setting (JITGATE_BACKENDS) picks the set.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol, runtime_checkable

# Event bus topics (Pub/Sub topic names carry a "jitgate-" prefix).
TOPIC_APPROVAL_REQUESTED = "approval-requested"
TOPIC_APPROVAL_DECIDED = "approval-decided"
TOPIC_SESSION_CLOSED = "session-closed"
TOPICS = (TOPIC_APPROVAL_REQUESTED, TOPIC_APPROVAL_DECIDED, TOPIC_SESSION_CLOSED)


class BackendUnavailable(RuntimeError):
    """A backend could not be reached; the caller keeps its data and retries later."""


@runtime_checkable
class SessionIndex(Protocol):
    """Searchable index of sealed sessions (who, when, target, statements, approvals)."""

    def put_session(self, entry: dict[str, Any]) -> None: ...

    def get_session(self, session_id: str) -> dict[str, Any] | None: ...

    def list_sessions(
        self, *, target: str | None = None, principal: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]: ...

    def mark_finalized(self, session_id: str) -> bool:
        """Record that a session was sealed. False when it already was (duplicate delivery)."""
        ...


@runtime_checkable
class ApprovalStore(Protocol):
    """Approval requests. ``update`` is a read-modify-write in one transaction, so the
    state machine in jitgate.approvals decides and the store only guarantees that
    the first decision wins."""

    def create_approval(self, request: dict[str, Any]) -> None: ...

    def get_approval(self, approval_id: str) -> dict[str, Any] | None: ...

    def update_approval(
        self, approval_id: str, change: Callable[[dict[str, Any]], dict[str, Any] | None], *, once: bool = False
    ) -> dict[str, Any] | None:
        """Apply change(current) atomically; change returns the new record or None to leave it.

        ``once``: when the new record is consumed (a one-time approval used), the same transaction
        also creates a use record keyed by the approval id (create-only, never updated); if one is
        there already, the approval was consumed before: nothing changes and None is returned. A
        consumed approval that a store writer puts back as approved thus stays used, whichever
        broker (a new VM, another of the group) reads it."""
        ...

    def list_approvals(
        self, *, status: str | None = None, target: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]: ...

    def find_approvals(
        self, *, target: str, requester: str, sha256: str, session_id: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Requests for this exact statement by this person on this target (and, with session_id, the
        session-scoped requests of that session), newest first, found through an index
        (approval_match_key / approval_session_key), never by scanning the target's history."""
        ...


def approval_use(record: dict[str, Any]) -> dict[str, Any]:
    """The use record of a consumed one-time approval (update_approval(once=True)): what an
    investigation needs to match it with the recording that ran the statement."""
    return {"approval_id": record["approval_id"], "sha256": record.get("sha256"), "target": record.get("target"),
            "requester": record.get("requester"), "used_at": record.get("last_used_at"),
            "expires_at": record.get("expires_at")}


def approval_match_key(target: str, requester: str, sha256: str) -> str:
    return f"{target}\x1f{requester.lower()}\x1f{sha256}"


def approval_session_key(target: str, session_id: str) -> str:
    return f"{target}\x1f{session_id}"


@runtime_checkable
class EventBus(Protocol):
    def publish(self, topic: str, payload: dict[str, Any]) -> None: ...

    def subscribe(self, topic: str, callback: Callable[[dict[str, Any]], None]) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class RecordingStore(Protocol):
    """Raw chunks uploaded while a session runs, and the sealed objects written once."""

    def put_chunk(self, session_id: str, index: int, data: bytes) -> None: ...

    def list_chunks(self, session_id: str) -> list[int]: ...

    def get_chunk(self, session_id: str, index: int) -> bytes: ...

    def read_chunks(self, session_id: str) -> Iterator[bytes]:
        """Every chunk's bytes in order (what a seal reads)."""
        ...

    def put_object(self, session_id: str, name: str, data: bytes) -> str:
        """Write a sealed object once; refuses to overwrite. Returns its URI."""
        ...

    def get_object(self, session_id: str, name: str) -> bytes: ...

    def object_exists(self, session_id: str, name: str) -> bool: ...


@runtime_checkable
class SecretStore(Protocol):
    def get(self, ref: str) -> bytes:
        """Resolve a credential reference (env:, file:, gcp-secret:) to its value."""
        ...


@runtime_checkable
class Signer(Protocol):
    key_id: str

    def sign(self, data: bytes) -> bytes: ...

    def public_key_pem(self) -> bytes: ...
