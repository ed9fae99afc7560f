"""GCP backends: Firestore, Pub/Sub, Cloud Storage, Secret Manager, Cloud KMS.

Chosen with JITGATE_BACKENDS=gcp; the broker, the functions and the CLI see the
same interfaces as with the embedded set (jitgate.backends.base). The official
``google-cloud-*`` clients are used throughout, so the same code runs against
the emulators (PUBSUB_EMULATOR_HOST, FIRESTORE_EMULATOR_HOST,
STORAGE_EMULATOR_HOST) and against Google Cloud.

Settings (environment, as infra/ passes them):
  GOOGLE_CLOUD_PROJECT         project of the topics, the Firestore database and secrets
  JITGATE_FIRESTORE_DATABASE   Firestore database name (default "(default)")
  JITGATE_RECORDINGS_BUCKET    recordings bucket (default "<project>-jitgate-recordings")
  JITGATE_KMS_KEY              full cryptoKeyVersion name of the EC_SIGN_ED25519 manifest key that
                               finalize signs seals with; unset: the local Ed25519 key signs (logged;
                               for emulators/dev only). The broker never needs it to sign.
  JITGATE_KMS_TRUSTED_KEYS     comma-separated key versions verify trusts for seals (default: JITGATE_KMS_KEY)
  JITGATE_BROKER_KMS_KEY       key version the broker signs its session-closed events with; unset: a local
                               key (keys/broker-session-closed.pem, in the trust file)
  JITGATE_BROKER_KMS_TRUSTED_KEYS  versions finalize trusts for session-closed (default: JITGATE_BROKER_KMS_KEY)
  JITGATE_BROKER_ID            names this broker's own Pub/Sub subscriptions (default: host + random)
  JITGATE_GCS_PART_BYTES       sealed objects larger than this are uploaded in parts and composed
  JITGATE_GCS_RESUMABLE_BYTES  chunks/parts larger than this use a resumable upload
  JITGATE_GCS_DELETE_CHUNKS    "true": finalize deletes a session's chunks after a verified seal (needs
                               storage.objects.delete and no retention on them; infra/ grants neither)
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from typing import Any, Callable

from jitgate.backends.base import (
    TOPICS,
    BackendUnavailable,
    approval_match_key,
    approval_session_key,
    approval_use,
)
from jitgate.logs import log

logger = logging.getLogger("jitgate.backends.gcp")

DEAD_LETTER_TOPIC = "dead-letter"
EMULATOR_VARS = ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "STORAGE_EMULATOR_HOST")
SUBSCRIPTION_TTL_SECONDS = 24 * 3600  # a broker's own subscription goes away after a day without it
COMPOSE_MAX_SOURCES = 32
LEDGER_PREFIX = "ledger"  # gs://BUCKET/ledger/...: the seal ledger, not a session


def topic_name(topic: str) -> str:
    return f"jitgate-{topic}"


def _crc32c(data: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.value(data))


def _unavailable(what: str, exc: BaseException) -> BackendUnavailable:
    return BackendUnavailable(f"{what}: {type(exc).__name__}: {exc}")


# --- Firestore: approvals and the session index -------------------------------------------


class FirestoreState:
    """Session index (collection ``sessions``) and approvals (collection ``approvals``).

    Each document keeps the fields that are queried (target, principal, started_at;
    status, target, created_at, expires_at) as top-level fields, matching the
    composite indexes in infra/firestore.indexes.json, and the full record as a JSON
    string (records can hold nested lists, which Firestore fields cannot).
    Read-modify-write goes through Firestore transactions: the first decision wins.
    """

    TRANSACTION_ATTEMPTS = 25

    def __init__(self, project: str, database: str | None = None):
        from google.cloud import firestore

        self._firestore = firestore
        kwargs: dict[str, Any] = {"project": project}
        if database and database != "(default)":
            kwargs["database"] = database
        self.db = firestore.Client(**kwargs)
        self.sessions = self.db.collection("sessions")
        self.approvals = self.db.collection("approvals")
        # Lookup documents, one per approval_match_key / approval_session_key (id = its SHA-256): the
        # newest request ids for that statement or session, written in the request's own transaction.
        # A lookup is two document reads whatever the history's size.
        self.approval_keys = self.db.collection("approval_keys")
        # One document per consumed one-time approval (update_approval(once=True)), created once.
        self.approval_uses = self.db.collection("approval_uses")

    @staticmethod
    def _doc_id(value: str) -> str:
        if not value or "/" in value or value in (".", "..") or (value.startswith("__") and value.endswith("__")):
            raise ValueError(f"invalid document id {value!r}")
        return value

    def _run_transaction(self, body: Callable):
        """Run body(transaction) in a Firestore transaction, retrying on contention."""
        from google.api_core import exceptions as gexc

        transactional = self._firestore.transactional(body)
        delay = 0.05
        for attempt in range(6):
            try:
                return transactional(self.db.transaction(max_attempts=self.TRANSACTION_ATTEMPTS))
            except (gexc.Aborted, gexc.DeadlineExceeded) as exc:
                last = exc
            except ValueError as exc:  # "Failed to commit transaction in N attempts"
                if "Failed to commit" not in str(exc):
                    raise
                last = exc
            time.sleep(delay)
            delay = min(1.0, delay * 2)
        raise BackendUnavailable(f"Firestore transaction kept conflicting: {last}")

    # -- session index --------------------------------------------------------------------

    def put_session(self, entry: dict[str, Any]) -> None:
        ref = self.sessions.document(self._doc_id(entry["session_id"]))
        ref.set(
            {
                "session_id": entry["session_id"],
                "target": entry.get("target") or "",
                "principal": entry.get("principal") or "",
                "started_at": float(entry.get("started_at") or 0),
                "entry": json.dumps(entry, separators=(",", ":"), default=str),
            },
            merge=True,  # keeps "finalized"
        )

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        snap = self.sessions.document(self._doc_id(session_id)).get()
        if not snap.exists:
            return None
        raw = (snap.to_dict() or {}).get("entry")
        return json.loads(raw) if raw else None

    def list_sessions(self, *, target=None, principal=None, limit: int = 50) -> list[dict[str, Any]]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = self.sessions
        client_filter = None
        # Declared composite indexes: (target, started_at desc) and (principal, started_at desc).
        if target:
            query = query.where(filter=FieldFilter("target", "==", target))
            if principal:
                client_filter = principal
        elif principal:
            query = query.where(filter=FieldFilter("principal", "==", principal))
        query = query.order_by("started_at", direction=self._firestore.Query.DESCENDING)
        if client_filter is None:
            query = query.limit(limit)
        out = []
        for snap in query.stream():
            data = snap.to_dict() or {}
            if not data.get("entry"):
                continue
            if client_filter is not None and data.get("principal") != client_filter:
                continue
            out.append(json.loads(data["entry"]))
            if len(out) >= limit:
                break
        return out

    def mark_finalized(self, session_id: str) -> bool:
        ref = self.sessions.document(self._doc_id(session_id))

        def body(transaction) -> bool:
            snap = ref.get(transaction=transaction)
            if snap.exists and (snap.to_dict() or {}).get("finalized"):
                return False
            transaction.set(ref, {"session_id": session_id, "finalized": True, "finalized_at": time.time()}, merge=True)
            return True

        return self._run_transaction(body)

    # -- approvals ------------------------------------------------------------------------

    @staticmethod
    def _approval_fields(record: dict[str, Any]) -> dict[str, Any]:
        return {
            "approval_id": record["approval_id"],
            "target": record.get("target") or "",
            "status": record.get("status") or "",
            "created_at": float(record.get("created_at") or 0),
            "expires_at": float(record.get("expires_at") or 0),
            "record": json.dumps(record, separators=(",", ":"), default=str),
            # Indexed lookups (find_approvals): this statement by this person, or this session's requests.
            "match_key": approval_match_key(record.get("target") or "", record.get("requester") or "", record.get("sha256") or ""),
            "session_key": approval_session_key(record.get("target") or "", record.get("session_id") or ""),
        }

    KEY_IDS_KEPT = 50

    def _key_ref(self, key: str):
        return self.approval_keys.document(hashlib.sha256(key.encode()).hexdigest())

    def find_approvals(self, *, target, requester, sha256, session_id=None, limit: int = 50) -> list[dict[str, Any]]:
        keys = [("match_key", approval_match_key(target, requester, sha256))]
        if session_id:
            keys.append(("session_key", approval_session_key(target, session_id)))
        ids: list[str] = []
        for snap in self.db.get_all([self._key_ref(k) for _, k in keys]):
            if snap.exists:
                ids.extend(i for i in (snap.to_dict() or {}).get("ids", []) if isinstance(i, str) and i not in ids)
        wanted = dict(keys)
        found = []
        refs = [self.approvals.document(self._doc_id(i)) for i in ids if i and "/" not in i]
        for snap in (self.db.get_all(refs) if refs else []):
            data = (snap.to_dict() or {}) if snap.exists else {}
            # Only what the key names (a lookup document is a hint; the request document is the record).
            if data and (data.get("match_key") == wanted["match_key"] or data.get("session_key") == wanted.get("session_key")):
                found.append(json.loads(data["record"]))
        return sorted(found, key=lambda r: r.get("created_at", 0), reverse=True)[:limit]

    def create_approval(self, request: dict[str, Any]) -> None:
        fields = self._approval_fields(request)
        ref = self.approvals.document(self._doc_id(request["approval_id"]))
        key_refs = [self._key_ref(fields["match_key"]), self._key_ref(fields["session_key"])] if request.get("sha256") else []

        def body(transaction):
            snaps = [r.get(transaction=transaction) for r in key_refs]  # reads before writes
            # create() fails with Conflict (409) when the id exists, like the embedded INSERT.
            transaction.create(ref, fields)
            for key_ref, snap in zip(key_refs, snaps):
                ids = (snap.to_dict() or {}).get("ids", []) if snap.exists else []
                transaction.set(key_ref, {"ids": ([request["approval_id"]] + [i for i in ids if i != request["approval_id"]])
                                          [:self.KEY_IDS_KEPT]})

        self._run_transaction(body)

    def get_approval(self, approval_id: str) -> dict[str, Any] | None:
        snap = self.approvals.document(self._doc_id(approval_id)).get()
        if not snap.exists:
            return None
        return json.loads((snap.to_dict() or {})["record"])

    def update_approval(self, approval_id: str, change: Callable[[dict], dict | None], *, once: bool = False) -> dict | None:
        ref = self.approvals.document(self._doc_id(approval_id))
        use_ref = self.approval_uses.document(self._doc_id(approval_id))

        def body(transaction):
            snap = ref.get(transaction=transaction)
            used = use_ref.get(transaction=transaction) if once else None  # reads before writes
            if not snap.exists:
                return None
            new = change(json.loads((snap.to_dict() or {})["record"]))
            if new is not None and once and new.get("status") == "consumed":
                if used.exists:
                    return None
                # create(): a concurrent consumer that read "absent" too fails the commit (Conflict).
                transaction.create(use_ref, approval_use(new))
            if new is not None:
                transaction.set(ref, self._approval_fields({**new, "approval_id": approval_id}))
            return new

        # A concurrent decider makes Firestore abort and retry this body with fresh data:
        # change() sees the first decision and answers instead of applying a second one.
        return self._run_transaction(body)

    def list_approvals(self, *, status=None, target=None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        firestore = self._firestore
        query = self.approvals
        # Declared composite indexes (infra/firestore.indexes.json): (status, created_at desc),
        # (target, created_at desc) and (target, status, created_at desc). Newest first, one page
        # of `limit` after `offset`: callers page explicitly, nothing is filtered after the query.
        if target:
            query = query.where(filter=FieldFilter("target", "==", target))
        if status:
            query = query.where(filter=FieldFilter("status", "==", status))
        query = query.order_by("created_at", direction=firestore.Query.DESCENDING)
        if offset:
            query = query.offset(offset)
        return [json.loads((snap.to_dict() or {})["record"]) for snap in query.limit(limit).stream()]

    def overdue_approvals(self, now: float, limit: int) -> list[dict[str, Any]]:
        """Pending requests past their TTL, oldest expiry first (index (status, expires_at asc))."""
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = (self.approvals.where(filter=FieldFilter("status", "==", "pending"))
                 .where(filter=FieldFilter("expires_at", "<=", now))
                 .order_by("expires_at", direction=self._firestore.Query.ASCENDING).limit(limit))
        return [json.loads((snap.to_dict() or {})["record"]) for snap in query.stream()]


# --- Pub/Sub: the event bus --------------------------------------------------------------


def _subscription_suffix(broker_id: str) -> str:
    raw = broker_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    clean = re.sub(r"[^A-Za-z0-9_.~+%-]", "-", raw).strip("-")
    return clean[:150] or uuid.uuid4().hex[:8]


class PubSubBus:
    """publish(topic) to jitgate-<topic>; subscribe(topic) creates this broker's own
    subscription (expires after 24 h idle) and streams from it, so every broker sees
    every decision. Push delivery to the functions is configured on the topic side
    (Eventarc in production, ``provision`` on the emulator), not here."""

    def __init__(self, project: str, broker_id: str = "", *, publish_timeout: float = 30.0):
        self.project = project
        self.suffix = _subscription_suffix(broker_id)
        self._ephemeral = not broker_id  # a random suffix: delete our subscriptions on close
        self.publish_timeout = publish_timeout
        self._publisher = None
        self._subscriber = None
        self._lock = threading.Lock()
        self._streams: dict[str, Any] = {}  # subscription path -> StreamingPullFuture
        self._callbacks: dict[str, tuple[str, Callable]] = {}
        self._closing = threading.Event()
        self._down_until = 0.0

    @property
    def publisher(self):
        if self._publisher is None:
            from google.cloud import pubsub_v1

            self._publisher = pubsub_v1.PublisherClient()
        return self._publisher

    @property
    def subscriber(self):
        if self._subscriber is None:
            from google.cloud import pubsub_v1

            self._subscriber = pubsub_v1.SubscriberClient()
        return self._subscriber

    def topic_path(self, topic: str) -> str:
        return f"projects/{self.project}/topics/{topic_name(topic)}"

    def subscription_path(self, topic: str) -> str:
        return f"projects/{self.project}/subscriptions/{topic_name(topic)}-{self.suffix}"

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, separators=(",", ":"), default=str).encode()
        try:
            future = self.publisher.publish(self.topic_path(topic), data, jitgate_topic=topic)
            future.result(timeout=self.publish_timeout)
        except Exception as exc:  # noqa: BLE001 - every failure means "not published"
            raise _unavailable(f"Pub/Sub publish to {topic_name(topic)} failed", exc) from exc

    def subscribe(self, topic: str, callback: Callable[[dict[str, Any]], None]) -> None:
        path = self.subscription_path(topic)
        self._callbacks[path] = (topic, callback)
        try:
            if time.monotonic() < self._down_until:
                raise BackendUnavailable("Pub/Sub was unreachable moments ago")
            self._ensure_subscription(topic, path)
            self._start_stream(path)
        except BackendUnavailable:
            # Keep trying in the background: the subscription starts once Pub/Sub answers. Meanwhile
            # callers fall back to reading the store (a held statement polls its approval).
            self._down_until = time.monotonic() + 30
            self._restart_later(path, None)
            raise

    def _ensure_subscription(self, topic: str, path: str) -> None:
        from google.api_core import exceptions as gexc

        try:
            self.subscriber.create_subscription(
                request={
                    "name": path,
                    "topic": self.topic_path(topic),
                    "ack_deadline_seconds": 30,
                    "message_retention_duration": {"seconds": 3600},
                    "expiration_policy": {"ttl": {"seconds": SUBSCRIPTION_TTL_SECONDS}},
                },
                timeout=10, retry=None,
            )
            log(logger, logging.INFO, "subscription created", subscription=path)
        except gexc.AlreadyExists:
            pass
        except Exception as exc:  # noqa: BLE001
            raise _unavailable(f"cannot create the Pub/Sub subscription {path}", exc) from exc

    def _start_stream(self, path: str) -> None:
        topic, callback = self._callbacks[path]

        def on_message(message) -> None:
            try:
                payload = json.loads(message.data)
            except ValueError:
                log(logger, logging.WARNING, "dropping a message that is not JSON", subscription=path)
                message.ack()
                return
            try:
                callback(payload)
            except Exception:  # noqa: BLE001 - redelivered later
                logger.exception("subscriber callback failed; message will be redelivered")
                message.nack()
                return
            message.ack()

        from google.cloud import pubsub_v1

        future = self.subscriber.subscribe(path, callback=on_message,
                                           flow_control=pubsub_v1.types.FlowControl(max_messages=100))
        with self._lock:
            self._streams[path] = future
        future.add_done_callback(lambda f: self._restart_later(path, f))

    def _restart_later(self, path: str, future) -> None:
        """The stream ended (Pub/Sub unreachable for long, or the subscription expired): reopen it."""
        if self._closing.is_set():
            return
        try:
            error = future.exception(timeout=0) if future is not None else "not started"
        except Exception as exc:  # noqa: BLE001
            error = exc
        log(logger, logging.WARNING, "subscription stream ended; reopening", subscription=path, error=repr(error))

        def retry() -> None:
            delay = 1.0
            while not self._closing.is_set():
                try:
                    topic, _ = self._callbacks[path]
                    self._ensure_subscription(topic, path)
                    self._start_stream(path)
                    return
                except Exception as exc:  # noqa: BLE001
                    log(logger, logging.WARNING, "reopening the subscription failed", subscription=path, error=str(exc))
                    self._closing.wait(delay)
                    delay = min(30.0, delay * 2)

        threading.Thread(target=retry, name="pubsub-reopen", daemon=True).start()

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            streams = dict(self._streams)
            self._streams.clear()
        for path, future in streams.items():
            future.cancel()
            try:
                future.result(timeout=5)
            except Exception:  # noqa: BLE001
                pass
            if self._ephemeral:
                try:
                    self.subscriber.delete_subscription(subscription=path, timeout=5)
                except Exception:  # noqa: BLE001 - the expiration policy removes it anyway
                    pass
        if self._subscriber is not None:
            try:
                self._subscriber.close()
            except Exception:  # noqa: BLE001
                pass


# --- Cloud Storage: recordings ----------------------------------------------------------


_CHUNK_OBJECT = re.compile(r"([0-9]{6})\.jsonl(?:\.[0-9]{12})?")  # a chunk, or a continuation at its offset


class GcsRecordingStore:
    """gs://BUCKET/<session>/chunks/NNNNNN.jsonl while running; gs://BUCKET/<session>/<name> once sealed.

    - chunks and sealed objects are written with if_generation_match=0: nothing is ever
      overwritten (the bucket has versioning and a retention policy). A chunk re-uploaded
      after a crash with more bytes than the stored one gets a continuation object
      ``NNNNNN.jsonl.<offset>`` instead of an overwrite; get_chunk joins them.
    - uploads larger than JITGATE_GCS_RESUMABLE_BYTES are resumable;
    - a sealed object larger than JITGATE_GCS_PART_BYTES is uploaded in parts (split at
      line ends) and composed server-side, at most 32 sources per compose, through
      intermediate objects when there are more.
    """

    def __init__(self, bucket: str, project: str, *, part_bytes: int = 32 * 1024 * 1024,
                 resumable_bytes: int = 8 * 1024 * 1024, retry_deadline: float = 30.0, delete_chunks: bool = False):
        self.may_delete_chunks = delete_chunks
        self.bucket_name = bucket
        self.project = project
        self.part_bytes = max(1, part_bytes)
        self.resumable_bytes = resumable_bytes
        self.retry_deadline = retry_deadline
        self._bucket = None

    @property
    def bucket(self):
        if self._bucket is None:
            from google.cloud import storage

            self._bucket = storage.Client(project=self.project).bucket(self.bucket_name)
        return self._bucket

    @property
    def _retry(self):
        from google.cloud.storage.retry import DEFAULT_RETRY

        return DEFAULT_RETRY.with_deadline(self.retry_deadline)

    @staticmethod
    def _check(session_id: str) -> str:
        if not session_id or "/" in session_id or session_id.startswith(".") or session_id == LEDGER_PREFIX:
            raise ValueError(f"invalid session id {session_id!r}")
        return session_id

    def _upload_new(self, name: str, data: bytes, content_type: str) -> Any:
        """Create an object that must not exist yet (raises PreconditionFailed otherwise)."""
        blob = self.bucket.blob(name)
        if len(data) > self.resumable_bytes:
            blob.chunk_size = 4 * 1024 * 1024  # resumable upload in 4 MiB requests
        blob.upload_from_string(data, content_type=content_type, if_generation_match=0,
                                retry=self._retry, timeout=(10, 120))
        return blob

    # -- chunks ---------------------------------------------------------------------------

    def _chunk_name(self, session_id: str, index: int) -> str:
        return f"{self._check(session_id)}/chunks/{index:06d}.jsonl"

    def put_chunk(self, session_id: str, index: int, data: bytes) -> None:
        from google.api_core import exceptions as gexc

        base = self._chunk_name(session_id, index)
        for _ in range(5):
            try:
                stored = self.get_chunk(session_id, index) if self.bucket.blob(base).exists(retry=self._retry) else None
                if stored is None:
                    self._upload_new(base, data, "application/x-ndjson")
                    return
                if stored == data or stored.startswith(data):
                    return  # the same chunk again: idempotent
                if not data.startswith(stored):
                    raise RuntimeError(f"chunk {index} of {session_id} differs from the stored one; refusing to overwrite")
                self._upload_new(f"{base}.{len(stored):012d}", data[len(stored):], "application/x-ndjson")
                return
            except gexc.PreconditionFailed:
                continue  # a concurrent writer created it first: compare again
        raise BackendUnavailable(f"chunk {index} of {session_id} kept changing while uploading")

    def list_chunks(self, session_id: str) -> list[int]:
        prefix = f"{self._check(session_id)}/chunks/"
        indexes = set()
        for blob in self.bucket.client.list_blobs(self.bucket_name, prefix=prefix, retry=self._retry):
            head = blob.name[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                indexes.add(int(head))
        return sorted(indexes)

    def get_chunk(self, session_id: str, index: int) -> bytes:
        base = self._chunk_name(session_id, index)
        blobs = [b for b in self.bucket.client.list_blobs(self.bucket_name, prefix=base, retry=self._retry)
                 if b.name == base or b.name.startswith(base + ".")]
        if not blobs:
            raise FileNotFoundError(f"gs://{self.bucket_name}/{base}")
        blobs.sort(key=lambda b: b.name)  # the base first, then continuations by offset
        return b"".join(b.download_as_bytes(retry=self._retry) for b in blobs)

    def read_chunks(self, session_id: str):
        """Every chunk's bytes in order, each joined with its continuations, from one listing (a
        seal reads all of them: a listing per chunk, as get_chunk does, would double the requests)."""
        prefix = f"{self._check(session_id)}/chunks/"
        parts: dict[int, list] = {}
        for blob in self.bucket.client.list_blobs(self.bucket_name, prefix=prefix, retry=self._retry):
            match = _CHUNK_OBJECT.fullmatch(blob.name[len(prefix):])
            if match:
                parts.setdefault(int(match.group(1)), []).append(blob)
        for index in sorted(parts):
            for blob in sorted(parts[index], key=lambda b: b.name):  # the base first, then continuations
                yield blob.download_as_bytes(retry=self._retry)

    # -- sealed objects -------------------------------------------------------------------

    def put_object(self, session_id: str, name: str, data: bytes) -> str:
        from google.api_core import exceptions as gexc

        path = f"{self._check(session_id)}/{name}"
        try:
            if len(data) <= self.part_bytes:
                self._upload_new(path, data, "application/octet-stream")
            else:
                self._compose_new(path, data)
        except gexc.PreconditionFailed:
            raise FileExistsError(f"gs://{self.bucket_name}/{path} is already sealed; it is never overwritten") from None
        return f"gs://{self.bucket_name}/{path}"

    def _split(self, data: bytes) -> list[bytes]:
        parts, start = [], 0
        while start < len(data):
            end = min(len(data), start + self.part_bytes)
            if end < len(data):
                cut = data.rfind(b"\n", start, end)
                end = cut + 1 if cut >= start else end
            parts.append(data[start:end])
            start = end
        return parts

    def _compose_new(self, path: str, data: bytes) -> None:
        """Upload data in parts and compose them (<= 32 sources per call) into path, created once."""
        from google.api_core import exceptions as gexc

        if self.bucket.blob(path).exists(retry=self._retry):
            raise gexc.PreconditionFailed(f"{path} exists")
        scratch = f"{path.rpartition('/')[0]}/.compose/{uuid.uuid4().hex}"
        temporary = []
        sources = []
        for number, part in enumerate(self._split(data)):
            blob = self._upload_new(f"{scratch}/part-{number:05d}", part, "application/octet-stream")
            sources.append(blob)
            temporary.append(blob)
        level = 0
        while len(sources) > COMPOSE_MAX_SOURCES:
            grouped = []
            for n in range(0, len(sources), COMPOSE_MAX_SOURCES):
                target = self.bucket.blob(f"{scratch}/level{level}-{n // COMPOSE_MAX_SOURCES:05d}")
                target.content_type = "application/octet-stream"
                target.compose(sources[n:n + COMPOSE_MAX_SOURCES], if_generation_match=0, retry=self._retry)
                grouped.append(target)
                temporary.append(target)
            sources, level = grouped, level + 1
        final = self.bucket.blob(path)
        final.content_type = "application/octet-stream"
        final.compose(sources, if_generation_match=0, retry=self._retry)
        final.reload(retry=self._retry)
        if final.size != len(data) or (final.crc32c and final.crc32c != base64.b64encode(
                _crc32c(data).to_bytes(4, "big")).decode()):
            raise BackendUnavailable(f"composed gs://{self.bucket_name}/{path} does not match the sealed bytes")
        for blob in temporary:
            try:
                blob.delete(retry=self._retry)
            except Exception as exc:  # noqa: BLE001 - e.g. under the retention policy; lifecycle cleans up
                log(logger, logging.INFO, "compose scratch object kept", object=blob.name, reason=type(exc).__name__)

    def get_object(self, session_id: str, name: str) -> bytes:
        from google.api_core import exceptions as gexc

        path = f"{self._check(session_id)}/{name}"
        try:
            # Sealed objects carry their own SHA-256 chain and signed manifest (jitgate verify),
            # which is what must judge their bytes; the transport CRC would only raise instead.
            return self.bucket.blob(path).download_as_bytes(checksum=None, retry=self._retry)
        except gexc.NotFound:
            raise FileNotFoundError(f"gs://{self.bucket_name}/{path}") from None

    def object_exists(self, session_id: str, name: str) -> bool:
        return self.bucket.blob(f"{self._check(session_id)}/{name}").exists(retry=self._retry)

    STREAM_BLOCK = 4 * 1024 * 1024  # a multiple of 256 KiB, as resumable uploads require

    def open_object(self, session_id: str, name: str):
        """The object's bytes in blocks of STREAM_BLOCK (a recording can be larger than memory)."""
        from google.api_core import exceptions as gexc

        path = f"{self._check(session_id)}/{name}"
        try:
            with self.bucket.blob(path).open("rb", chunk_size=self.STREAM_BLOCK, retry=self._retry) as reader:
                while block := reader.read(self.STREAM_BLOCK):
                    yield block
        except gexc.NotFound:
            raise FileNotFoundError(f"gs://{self.bucket_name}/{path}") from None

    def put_object_stream(self, session_id: str, name: str, blocks) -> str:
        """A sealed object written from a stream (one resumable upload, STREAM_BLOCK at a time), once."""
        from google.api_core import exceptions as gexc

        path = f"{self._check(session_id)}/{name}"
        blob = self.bucket.blob(path)
        try:
            if blob.exists(retry=self._retry):
                raise gexc.PreconditionFailed(f"{path} exists")
            with blob.open("wb", chunk_size=self.STREAM_BLOCK, if_generation_match=0,
                           content_type="application/octet-stream", retry=self._retry) as writer:
                for block in blocks:
                    writer.write(block)
        except gexc.PreconditionFailed:
            raise FileExistsError(f"gs://{self.bucket_name}/{path} is already sealed; it is never overwritten") from None
        return f"gs://{self.bucket_name}/{path}"

    def delete_chunks(self, session_id: str) -> int:
        """Remove a sealed session's chunks, when this store may (``delete_chunks=True``). infra/ grants
        no delete on the recordings bucket and keeps it under retention: there chunks stay until they
        age out, and this does nothing."""
        from google.api_core import exceptions as gexc

        if not self.may_delete_chunks:
            return 0
        prefix = f"{self._check(session_id)}/chunks/"
        removed = 0
        for blob in self.bucket.client.list_blobs(self.bucket_name, prefix=prefix, retry=self._retry):
            try:
                blob.delete(retry=self._retry)
                removed += 1
            except gexc.Forbidden as exc:  # retention: kept until it ages out (docs/deploy.md)
                log(logger, logging.INFO, "chunk kept under the retention policy", object=blob.name,
                    reason=type(exc).__name__)
                break
            except gexc.NotFound:
                pass
        return removed

    def stored_sessions(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for blob in self.bucket.client.list_blobs(self.bucket_name, retry=self._retry):
            session_id, _, rest = blob.name.partition("/")
            if session_id == LEDGER_PREFIX or not rest or rest.startswith(".compose/"):
                continue
            info = out.setdefault(session_id, {"manifest": False, "recording": False, "chunks_updated": None})
            if rest == "manifest.json":
                info["manifest"] = True
            elif rest == "recording.jsonl":
                info["recording"] = True
            elif rest.startswith("chunks/"):
                updated = blob.updated.timestamp() if blob.updated else 0.0
                info["chunks_updated"] = max(info["chunks_updated"] or 0.0, updated)
        return out

    # -- ledger (under the bucket's retention policy, like the recordings) ------------------

    @property
    def ledger_location(self) -> str:
        return f"gs://{self.bucket_name}/{LEDGER_PREFIX}"

    def put_ledger(self, name: str, data: bytes) -> None:
        from google.api_core import exceptions as gexc

        try:
            self._upload_new(f"{LEDGER_PREFIX}/{name}", data, "application/json")
        except gexc.PreconditionFailed:
            raise FileExistsError(f"gs://{self.bucket_name}/{LEDGER_PREFIX}/{name} exists") from None

    def get_ledger(self, name: str) -> bytes:
        from google.api_core import exceptions as gexc

        try:
            return self.bucket.blob(f"{LEDGER_PREFIX}/{name}").download_as_bytes(checksum=None, retry=self._retry)
        except gexc.NotFound:
            raise FileNotFoundError(f"gs://{self.bucket_name}/{LEDGER_PREFIX}/{name}") from None

    def list_ledger(self, folder: str, start_after: str = "", limit: int | None = None) -> list[str]:
        """Names in ``folder`` after ``start_after``, in order; at most ``limit`` of them."""
        prefix = f"{LEDGER_PREFIX}/{folder}/"
        kwargs: dict[str, Any] = {"start_offset": f"{LEDGER_PREFIX}/{start_after}"} if start_after else {}
        if limit is not None:
            kwargs["max_results"] = limit + 1  # start_offset includes start_after itself
        names = [b.name[len(LEDGER_PREFIX) + 1:] for b in
                 self.bucket.client.list_blobs(self.bucket_name, prefix=prefix, retry=self._retry, **kwargs)]
        return sorted(n for n in names if n > start_after)[:limit]


# --- Secret Manager: held credentials ----------------------------------------------------

_SECRET_ID = r"[A-Za-z0-9_-]{1,255}"
_VERSION = r"(?:latest|[1-9][0-9]*)"
_SECRET_FORMS = (
    re.compile(rf"^projects/(?P<project>[a-z0-9][a-z0-9-]{{0,62}}|[0-9]+)/secrets/(?P<secret>{_SECRET_ID})"
               rf"(?:/versions/(?P<version>{_VERSION}))?$"),
    re.compile(rf"^(?P<secret>{_SECRET_ID})(?:/versions/(?P<version>{_VERSION}))?$"),
)


def parse_secret_ref(ref: str, default_project: str) -> str:
    """``gcp-secret:`` reference -> Secret Manager version name.

    Accepted: gcp-secret:NAME, gcp-secret:NAME/versions/V,
    gcp-secret:projects/P/secrets/NAME and gcp-secret:projects/P/secrets/NAME/versions/V
    (V is a number or ``latest``; a missing version means ``latest``)."""
    scheme, _, rest = ref.partition(":")
    if scheme != "gcp-secret":
        raise ValueError(f"{ref!r} is not a gcp-secret: reference")
    for form in _SECRET_FORMS:
        match = form.match(rest)
        if match:
            project = match.groupdict().get("project") or default_project
            if not project:
                raise ValueError(f"{ref!r} names no project and GOOGLE_CLOUD_PROJECT is not set")
            return f"projects/{project}/secrets/{match['secret']}/versions/{match['version'] or 'latest'}"
    raise ValueError(
        f"{ref!r} is not a Secret Manager reference: use gcp-secret:NAME, gcp-secret:NAME/versions/V or "
        "gcp-secret:projects/P/secrets/NAME/versions/V (V a number or 'latest')"
    )


class SecretManagerSecrets:
    """gcp-secret: references through Secret Manager; env: and file: as the embedded set does.

    Values are cached for ``cache_seconds`` (default 300) so a burst of connections
    does not become a burst of Secret Manager calls; a rotated secret is picked up
    within that time (pin versions in the policy to rotate deliberately)."""

    def __init__(self, project: str, fallback, *, client=None, cache_seconds: float = 300.0):
        self.project = project
        self.fallback = fallback
        self._client = client
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, bytes]] = {}

    @property
    def client(self):
        if self._client is None:
            from google.cloud import secretmanager

            self._client = secretmanager.SecretManagerServiceClient()
        return self._client

    def get(self, ref: str) -> bytes:
        scheme = ref.partition(":")[0]
        if scheme in ("env", "file"):
            return self.fallback.get(ref)
        if scheme != "gcp-secret":
            raise BackendUnavailable(f"held credential {ref}: unknown reference scheme (use env:, file: or gcp-secret:)")
        try:
            name = parse_secret_ref(ref, self.project)
        except ValueError as exc:
            raise BackendUnavailable(f"held credential {ref}: {exc}") from None
        cached = self._cache.get(name)
        if cached and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1]
        from google.api_core import exceptions as gexc

        try:
            response = self.client.access_secret_version(request={"name": name}, timeout=15)
        except gexc.NotFound:
            raise BackendUnavailable(f"held credential {ref}: {name} does not exist (or is disabled/destroyed)") from None
        except gexc.PermissionDenied:
            raise BackendUnavailable(
                f"held credential {ref}: permission denied on {name}; grant the broker's service account "
                "roles/secretmanager.secretAccessor on that secret") from None
        except Exception as exc:  # noqa: BLE001
            raise _unavailable(f"held credential {ref}: Secret Manager unreachable", exc) from exc
        data = bytes(response.payload.data)
        if response.payload.HasField("data_crc32c") and _crc32c(data) != response.payload.data_crc32c:
            raise BackendUnavailable(f"held credential {ref}: payload corrupted in transit (CRC32C mismatch)")
        value = data.rstrip(b"\n")  # like file: references (secrets are often created with echo)
        self._cache[name] = (time.monotonic(), value)
        return value


# --- Cloud KMS: manifest signing ---------------------------------------------------------

_KMS_VERSION = re.compile(r"^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+/cryptoKeyVersions/[0-9]+$")


class KmsSigner:
    """Signs manifests with a Cloud KMS EC_SIGN_ED25519 key version (asymmetricSign over the
    raw data, as Ed25519 requires: no digest). The key id written into manifests is the
    key version name; verifying needs its public key (get_public_key), which
    ``KmsPublicKeys`` fetches and caches."""

    def __init__(self, key_version: str, *, client=None):
        if not _KMS_VERSION.match(key_version):
            raise ValueError(
                f"JITGATE_KMS_KEY={key_version!r}: expected a full key version name "
                "projects/P/locations/L/keyRings/R/cryptoKeys/K/cryptoKeyVersions/N")
        self.name = key_version
        self.key_id = key_version
        self._client = client

    @property
    def client(self):
        if self._client is None:
            from google.cloud import kms

            self._client = kms.KeyManagementServiceClient()
        return self._client

    def sign(self, data: bytes) -> bytes:
        response = self.client.asymmetric_sign(
            request={"name": self.name, "data": data, "data_crc32c": _crc32c(data)}, timeout=30)
        if not response.verified_data_crc32c:
            raise BackendUnavailable("Cloud KMS did not verify the data checksum of the signing request")
        if response.name != self.name:
            raise BackendUnavailable(f"Cloud KMS signed with {response.name}, not {self.name}")
        if _crc32c(response.signature) != response.signature_crc32c:
            raise BackendUnavailable("Cloud KMS signature corrupted in transit (CRC32C mismatch)")
        return bytes(response.signature)

    def public_key_pem(self) -> bytes:
        response = self.client.get_public_key(request={"name": self.name}, timeout=30)
        pem = response.pem.encode()
        if response.pem_crc32c and _crc32c(pem) != response.pem_crc32c:
            raise BackendUnavailable("Cloud KMS public key corrupted in transit (CRC32C mismatch)")
        return pem


# --- provisioning (emulators and the local stack; Terraform does it in production) ----------

_provisioned: set[tuple] = set()
_warned_local_key: set[str] = set()


def emulated(env: dict[str, str]) -> bool:
    return any(env.get(k) for k in EMULATOR_VARS)


def _apply_emulator_env(env: dict[str, str]) -> None:
    """The google clients read *_EMULATOR_HOST from the process environment."""
    for key in EMULATOR_VARS:
        if env.get(key):
            os.environ[key] = env[key]


def _emulators_answer(env: dict[str, str]) -> None:
    """Fail fast (instead of retrying for minutes) when an emulator does not accept connections."""
    for key in EMULATOR_VARS:
        address = env.get(key, "").split("://")[-1].rstrip("/")
        if not address:
            continue
        host, _, port = address.rpartition(":")
        with socket.socket() as sock:
            sock.settimeout(2)
            if sock.connect_ex((host or "127.0.0.1", int(port))) != 0:
                raise BackendUnavailable(f"{key}={env[key]} does not answer")


def recordings_bucket(settings) -> str:
    return settings.env.get("JITGATE_RECORDINGS_BUCKET") or f"{settings.project}-jitgate-recordings"


def provision(settings, *, push_endpoints: dict[str, str] | None = None) -> None:
    """Create what infra/ creates in production, on the emulators: the topics, the
    dead-letter topic and its hold subscription, the recordings bucket, and one push
    subscription per pushed topic (what Eventarc creates for a function trigger), with
    the dead-letter policy that infra/scripts/attach_dead_letter.sh attaches.

    The push endpoint gets the path /projects/P/topics/T appended: functions-framework
    turns the raw Pub/Sub push body into the same CloudEvent (type
    google.cloud.pubsub.topic.v1.messagePublished, source //pubsub.googleapis.com/
    projects/P/topics/T, data.message.data) that Eventarc delivers."""
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1, storage

    _apply_emulator_env(settings.env)
    project = settings.project
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    try:
        for topic in (*TOPICS, DEAD_LETTER_TOPIC):
            try:
                publisher.create_topic(name=f"projects/{project}/topics/{topic_name(topic)}", timeout=30)
            except gexc.AlreadyExists:
                pass
        dead_letter = f"projects/{project}/topics/{topic_name(DEAD_LETTER_TOPIC)}"
        try:
            subscriber.create_subscription(request={
                "name": f"projects/{project}/subscriptions/jitgate-dead-letter-hold", "topic": dead_letter,
                "ack_deadline_seconds": 60, "retain_acked_messages": True}, timeout=30)
        except gexc.AlreadyExists:
            pass
        endpoints = settings.push_endpoints if push_endpoints is None else push_endpoints
        for topic, url in endpoints.items():
            if topic not in TOPICS:
                continue
            path = f"projects/{project}/subscriptions/{topic_name(topic)}-push"
            endpoint = url.rstrip("/") + f"/projects/{project}/topics/{topic_name(topic)}"
            try:
                subscriber.create_subscription(request={
                    "name": path, "topic": f"projects/{project}/topics/{topic_name(topic)}",
                    "push_config": {"push_endpoint": endpoint},
                    "ack_deadline_seconds": 60,
                    "dead_letter_policy": {"dead_letter_topic": dead_letter, "max_delivery_attempts": 10},
                    "retry_policy": {"minimum_backoff": {"seconds": 1}, "maximum_backoff": {"seconds": 10}},
                }, timeout=30)
            except gexc.AlreadyExists:
                subscriber.modify_push_config(request={"subscription": path, "push_config": {"push_endpoint": endpoint}})
    finally:
        subscriber.close()
    client = storage.Client(project=project)
    try:
        client.create_bucket(recordings_bucket(settings))
    except gexc.Conflict:
        pass


# --- the set --------------------------------------------------------------------------------


def open_gcp_backends(settings):
    from jitgate.backends import Backends
    from jitgate.backends.embedded import EnvFileSecrets
    from jitgate.keys import LocalSigner
    from jitgate.recording.trust import SEAL, SESSION_CLOSED, Trust, TrustFile

    env = settings.env
    _apply_emulator_env(env)
    project = settings.project
    if emulated(env):
        key = (project, tuple(env.get(k, "") for k in EMULATOR_VARS), recordings_bucket(settings),
               tuple(sorted(settings.push_endpoints.items())))
        if key not in _provisioned:
            try:
                _emulators_answer(env)
                provision(settings)
                _provisioned.add(key)
            except Exception as exc:  # noqa: BLE001 - an emulator down: start anyway, calls fail and retry later
                log(logger, logging.WARNING, "emulator resources not provisioned", error=f"{type(exc).__name__}: {exc}")

    kms_key = env.get("JITGATE_KMS_KEY", "").strip()
    trust_file = TrustFile(settings.trust_file)
    configured = {SEAL: _names(env.get("JITGATE_KMS_TRUSTED_KEYS")) or ([kms_key] if kms_key else []),
                  SESSION_CLOSED: _names(env.get("JITGATE_BROKER_KMS_TRUSTED_KEYS"))
                  or _names(env.get("JITGATE_BROKER_KMS_KEY"))}
    for name in configured[SEAL] + configured[SESSION_CLOSED]:
        KmsSigner(name)  # a clear error for a malformed version name, at start
    kms_clients: list = []

    def kms_client():
        if not kms_clients:
            from google.cloud import kms

            kms_clients.append(kms.KeyManagementServiceClient())
        return kms_clients[0]

    trust = Trust(file=trust_file, configured=configured,
                  fetch=lambda name: KmsSigner(name, client=kms_client()).public_key_pem())
    if kms_key:
        signer = KmsSigner(kms_key, client=None)
    else:
        signer = LocalSigner(settings.keys_dir / "manifest-signing.pem")
        trust_file.trust_first_key(SEAL, signer)
        if signer.key_id not in _warned_local_key:
            _warned_local_key.add(signer.key_id)
            log(logger, logging.WARNING,
                "JITGATE_KMS_KEY is not set: manifests are signed with the local Ed25519 key (emulators/dev only)",
                key_id=signer.key_id, key_file=str(settings.keys_dir / "manifest-signing.pem"))

    def closing_signer():
        broker_key = env.get("JITGATE_BROKER_KMS_KEY", "").strip()
        if broker_key:
            return KmsSigner(broker_key)
        from jitgate.backends import local_closing_signer

        return local_closing_signer(settings)

    state = FirestoreState(project, env.get("JITGATE_FIRESTORE_DATABASE") or None)
    return Backends(
        index=state,
        approvals=state,
        bus=PubSubBus(project, settings.broker_id,
                      publish_timeout=float(env.get("JITGATE_PUBSUB_PUBLISH_TIMEOUT") or 30)),
        recordings=GcsRecordingStore(
            recordings_bucket(settings), project,
            part_bytes=int(env.get("JITGATE_GCS_PART_BYTES") or 32 * 1024 * 1024),
            resumable_bytes=int(env.get("JITGATE_GCS_RESUMABLE_BYTES") or 8 * 1024 * 1024),
            delete_chunks=(env.get("JITGATE_GCS_DELETE_CHUNKS") or "").lower() in ("1", "true", "yes"),
        ),
        secrets=SecretManagerSecrets(project, EnvFileSecrets(settings.policy_base_dir),
                                     cache_seconds=float(env.get("JITGATE_SECRET_CACHE_SECONDS") or 300)),
        signer=signer,
        public_keys=trust,
        name="gcp",
        closing_signer_factory=closing_signer,
    )


def _names(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]
