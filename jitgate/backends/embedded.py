"""Embedded backends: everything on one machine, no cloud.

SQLite for the session index and approvals (one file, WAL, transactions with
BEGIN IMMEDIATE so the first decision wins), a local folder for recordings
(objects created with O_EXCL, never overwritten), an in-process event bus that
can also push topics to HTTP endpoints as Pub/Sub-style CloudEvents, and
env/file secrets.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx

from jitgate.backends.base import BackendUnavailable, approval_match_key, approval_session_key, approval_use
from jitgate.events import pubsub_envelope
from jitgate.logs import log

logger = logging.getLogger("jitgate.backends.embedded")


class SqliteState:
    """Session index and approval store in one SQLite file."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        with self._conn() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(
                """
                CREATE TABLE IF NOT EXISTS sessions (
                    session_id TEXT PRIMARY KEY, target TEXT, principal TEXT,
                    started_at REAL, finalized INTEGER DEFAULT 0, entry TEXT);
                CREATE INDEX IF NOT EXISTS sessions_target ON sessions(target, started_at DESC);
                CREATE INDEX IF NOT EXISTS sessions_principal ON sessions(principal, started_at DESC);
                CREATE TABLE IF NOT EXISTS approvals (
                    approval_id TEXT PRIMARY KEY, target TEXT, status TEXT,
                    created_at REAL, expires_at REAL, record TEXT);
                CREATE INDEX IF NOT EXISTS approvals_status ON approvals(status, expires_at);
                CREATE TABLE IF NOT EXISTS approval_uses (approval_id TEXT PRIMARY KEY, record TEXT);
                """
            )
            # Lookup keys (jitgate.backends.base.approval_match_key): added to older files in place.
            columns = {row[1] for row in db.execute("PRAGMA table_info(approvals)")}
            for column in ("match_key", "session_key"):
                if column not in columns:
                    db.execute(f"ALTER TABLE approvals ADD COLUMN {column} TEXT")
            db.execute("CREATE INDEX IF NOT EXISTS approvals_match ON approvals(match_key, created_at DESC)")
            db.execute("CREATE INDEX IF NOT EXISTS approvals_session ON approvals(session_key, created_at DESC)")
            db.execute("CREATE INDEX IF NOT EXISTS approvals_created ON approvals(created_at)")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    # -- session index ----------------------------------------------------------------

    def put_session(self, entry: dict[str, Any]) -> None:
        self._conn().execute(
            "INSERT INTO sessions(session_id, target, principal, started_at, entry) VALUES (?,?,?,?,?) "
            "ON CONFLICT(session_id) DO UPDATE SET target=excluded.target, principal=excluded.principal, "
            "started_at=excluded.started_at, entry=excluded.entry",
            (entry["session_id"], entry.get("target"), entry.get("principal"), entry.get("started_at", 0), json.dumps(entry)),
        )

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT entry FROM sessions WHERE session_id=?", (session_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None

    def list_sessions(self, *, target=None, principal=None, limit=50) -> list[dict[str, Any]]:
        sql, args = "SELECT entry FROM sessions WHERE entry IS NOT NULL", []
        if target:
            sql, args = sql + " AND target=?", args + [target]
        if principal:
            sql, args = sql + " AND principal=?", args + [principal]
        rows = self._conn().execute(sql + " ORDER BY started_at DESC LIMIT ?", (*args, limit)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def mark_finalized(self, session_id: str) -> bool:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT finalized FROM sessions WHERE session_id=?", (session_id,)).fetchone()
            if row and row[0]:
                db.execute("ROLLBACK")
                return False
            db.execute(
                "INSERT INTO sessions(session_id, finalized) VALUES (?,1) "
                "ON CONFLICT(session_id) DO UPDATE SET finalized=1",
                (session_id,),
            )
            db.execute("COMMIT")
            return True
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- approvals --------------------------------------------------------------------

    @staticmethod
    def _keys(record: dict[str, Any]) -> tuple[str | None, str | None]:
        if not record.get("sha256"):
            return None, None
        return (approval_match_key(record["target"], record.get("requester", ""), record["sha256"]),
                approval_session_key(record["target"], record.get("session_id", "")))

    def create_approval(self, request: dict[str, Any]) -> None:
        self._conn().execute(
            "INSERT INTO approvals(approval_id, target, status, created_at, expires_at, record, match_key, session_key) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (request["approval_id"], request["target"], request["status"], request["created_at"],
             request["expires_at"], json.dumps(request), *self._keys(request)),
        )

    def find_approvals(self, *, target, requester, sha256, session_id=None, limit=50) -> list[dict[str, Any]]:
        sql = "SELECT record, created_at FROM approvals WHERE match_key=? ORDER BY created_at DESC LIMIT ?"
        rows = self._conn().execute(sql, (approval_match_key(target, requester, sha256), limit)).fetchall()
        if session_id:
            rows += self._conn().execute(
                "SELECT record, created_at FROM approvals WHERE session_key=? ORDER BY created_at DESC LIMIT ?",
                (approval_session_key(target, session_id), limit)).fetchall()
        seen, out = set(), []
        for raw, _ in sorted(rows, key=lambda r: -r[1]):
            record = json.loads(raw)
            if record["approval_id"] not in seen:
                seen.add(record["approval_id"])
                out.append(record)
        return out

    def overdue_approvals(self, now: float, limit: int) -> list[dict[str, Any]]:
        """Pending requests past their TTL, oldest expiry first (index approvals_status)."""
        rows = self._conn().execute(
            "SELECT record FROM approvals WHERE status='pending' AND expires_at <= ? ORDER BY expires_at ASC LIMIT ?",
            (now, limit)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def data_version(self) -> int:
        """Changes whenever another connection commits (PRAGMA data_version): a cheap wake-up signal."""
        conn = getattr(self, "_watch_conn", None)
        if conn is None:
            conn = self._watch_conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        return conn.execute("PRAGMA data_version").fetchone()[0]

    def get_approval(self, approval_id: str) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT record FROM approvals WHERE approval_id=?", (approval_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def update_approval(self, approval_id: str, change: Callable[[dict], dict | None], *, once: bool = False) -> dict | None:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")  # takes the write lock first: concurrent deciders serialize here
        try:
            row = db.execute("SELECT record FROM approvals WHERE approval_id=?", (approval_id,)).fetchone()
            if not row:
                db.execute("ROLLBACK")
                return None
            new = change(json.loads(row[0]))
            if new is not None and once and new.get("status") == "consumed":
                if db.execute("SELECT 1 FROM approval_uses WHERE approval_id=?", (approval_id,)).fetchone():
                    db.execute("ROLLBACK")
                    return None
                db.execute("INSERT INTO approval_uses(approval_id, record) VALUES (?,?)",
                           (approval_id, json.dumps(approval_use(new))))
            if new is not None:
                db.execute(
                    "UPDATE approvals SET status=?, expires_at=?, record=? WHERE approval_id=?",
                    (new["status"], new["expires_at"], json.dumps(new), approval_id),
                )
            db.execute("COMMIT")
            return new
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def list_approvals(self, *, status=None, target=None, limit=100, offset: int = 0) -> list[dict[str, Any]]:
        sql, args = "SELECT record FROM approvals WHERE 1=1", []
        if status:
            sql, args = sql + " AND status=?", args + [status]
        if target:
            sql, args = sql + " AND target=?", args + [target]
        rows = self._conn().execute(sql + " ORDER BY created_at DESC LIMIT ? OFFSET ?", (*args, limit, offset)).fetchall()
        return [json.loads(r[0]) for r in rows]


READ_BLOCK = 1024 * 1024


class LocalRecordingStore:
    """recordings/<session>/chunks/NNNNNN.jsonl while running; recordings/<session>/<name> once sealed;
    the ledger (jitgate.recording.ledger) in its own folder, objects created once."""

    def __init__(self, root: Path, ledger_dir: Path | None = None):
        self.root = root
        self.ledger_dir = ledger_dir or root.parent / "ledger"
        root.mkdir(parents=True, exist_ok=True)

    def _dir(self, session_id: str) -> Path:
        if not session_id or "/" in session_id or session_id.startswith("."):
            raise ValueError(f"invalid session id {session_id!r}")
        return self.root / session_id

    def put_chunk(self, session_id: str, index: int, data: bytes) -> None:
        directory = self._dir(session_id) / "chunks"
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{index:06d}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, directory / f"{index:06d}.jsonl")  # a re-upload of the same chunk is idempotent

    def list_chunks(self, session_id: str) -> list[int]:
        directory = self._dir(session_id) / "chunks"
        if not directory.exists():
            return []
        return sorted(int(p.stem) for p in directory.glob("*.jsonl"))

    def get_chunk(self, session_id: str, index: int) -> bytes:
        return (self._dir(session_id) / "chunks" / f"{index:06d}.jsonl").read_bytes()

    def read_chunks(self, session_id: str):
        """Every chunk's bytes, in order."""
        for index in self.list_chunks(session_id):
            yield self.get_chunk(session_id, index)

    def put_object(self, session_id: str, name: str, data: bytes) -> str:
        directory = self._dir(session_id)
        directory.mkdir(parents=True, exist_ok=True)
        return _create_once(directory / name, [data]).as_uri()  # never overwrites a sealed object

    def get_object(self, session_id: str, name: str) -> bytes:
        return (self._dir(session_id) / name).read_bytes()

    def object_exists(self, session_id: str, name: str) -> bool:
        return (self._dir(session_id) / name).exists()

    def open_object(self, session_id: str, name: str):
        """The object's bytes in blocks (a recording can be larger than memory)."""
        with open(self._dir(session_id) / name, "rb") as fh:
            while block := fh.read(READ_BLOCK):
                yield block

    def put_object_stream(self, session_id: str, name: str, blocks) -> str:
        """Write a sealed object from a stream of blocks, once: refuses to overwrite (FileExistsError)."""
        directory = self._dir(session_id)
        directory.mkdir(parents=True, exist_ok=True)
        return _create_once(directory / name, blocks).as_uri()

    def delete_chunks(self, session_id: str) -> int:
        directory = self._dir(session_id) / "chunks"
        removed = 0
        for path in directory.glob("*.jsonl") if directory.exists() else ():
            path.unlink(missing_ok=True)
            removed += 1
        if directory.exists():
            try:
                directory.rmdir()
            except OSError:
                pass
        return removed

    def stored_sessions(self) -> dict[str, dict]:
        """Every session folder: whether it has a manifest, and when its newest chunk was written."""
        out = {}
        for directory in self.root.iterdir():
            if not directory.is_dir() or directory.name.startswith("."):
                continue
            chunks = [p.stat().st_mtime for p in (directory / "chunks").glob("*.jsonl")]
            out[directory.name] = {"manifest": (directory / "manifest.json").exists(),
                                   "recording": (directory / "recording.jsonl").exists(),
                                   "chunks_updated": max(chunks) if chunks else None}
        return out

    # -- ledger ---------------------------------------------------------------------------

    @property
    def ledger_location(self) -> str:
        return str(self.ledger_dir.resolve())

    def put_ledger(self, name: str, data: bytes) -> None:
        path = self.ledger_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_once(path, [data])

    def get_ledger(self, name: str) -> bytes:
        return (self.ledger_dir / name).read_bytes()

    def list_ledger(self, folder: str, start_after: str = "", limit: int | None = None) -> list[str]:
        directory = self.ledger_dir / folder
        if not directory.exists():
            return []
        return sorted(f"{folder}/{p.name}" for p in directory.iterdir()
                      if not p.name.startswith(".") and f"{folder}/{p.name}" > start_after)[:limit]


def _create_once(path: Path, blocks) -> Path:
    """Write blocks to a temporary file, then link it into place: the name appears once, whole,
    and never replaces an existing object (FileExistsError)."""
    if path.exists():
        raise FileExistsError(f"{path} exists; sealed objects are never overwritten")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            for block in blocks:
                fh.write(block)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o640)
        os.link(tmp, path)  # fails if the name exists: the first writer wins
    finally:
        tmp.unlink(missing_ok=True)
    return path


class InProcessBus:
    """Callbacks in this process, plus optional HTTP push per topic (Pub/Sub push semantics:
    retried with backoff until the endpoint answers 2xx).

    ``PUSH_WORKERS`` deliveries run at once (a slow seal does not hold the sessions behind it),
    each given ``PUSH_TIMEOUT`` seconds: a seal of a large recording takes longer than an ack
    deadline, and resending it while it still runs only doubles the work."""

    PUSH_WORKERS = 4
    PUSH_TIMEOUT = 600.0

    def __init__(self, push_endpoints: dict[str, str] | None = None, project: str = "local"):
        self._subscribers: dict[str, list[Callable]] = {}
        self._push = dict(push_endpoints or {})
        self._project = project
        self._queue: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()
        self._stopped = threading.Event()

    def subscribe(self, topic: str, callback: Callable[[dict], None]) -> None:
        self._subscribers.setdefault(topic, []).append(callback)

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        for callback in list(self._subscribers.get(topic, [])):
            try:
                callback(payload)
            except Exception:  # a subscriber's bug must not break the publisher
                logger.exception("subscriber failed", extra={"fields": {"topic": topic}})
        if topic in self._push:
            self._ensure_thread()
            self._queue.put((topic, payload, 0))

    def _ensure_thread(self) -> None:
        with self._threads_lock:
            while len(self._threads) < self.PUSH_WORKERS:
                thread = threading.Thread(target=self._pusher, name=f"bus-push-{len(self._threads)}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pusher(self) -> None:
        with httpx.Client(timeout=httpx.Timeout(self.PUSH_TIMEOUT, connect=10)) as client:
            while not self._stopped.is_set():
                try:
                    topic, payload, attempt = self._queue.get(timeout=0.5)
                except queue.Empty:
                    continue
                headers, body = pubsub_envelope(topic, payload, project=self._project)
                try:
                    response = client.post(self._push[topic], headers=headers, content=body)
                    if response.status_code < 300:
                        continue
                    reason = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    reason = type(exc).__name__
                log(logger, logging.WARNING, "push delivery failed; will retry", topic=topic, attempt=attempt, reason=reason)
                time.sleep(min(10, 0.2 * 2**attempt))
                self._queue.put((topic, payload, attempt + 1))

    def drain(self, timeout: float = 10) -> bool:
        """Wait until queued pushes are delivered (used by graceful shutdown and tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0 or self._queue.empty():
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.drain(5)
        self._stopped.set()


class EnvFileSecrets:
    """env:NAME and file:/path references."""

    def __init__(self, base_dir: Path | None = None):
        self.base_dir = base_dir

    def get(self, ref: str) -> bytes:
        scheme, _, rest = ref.partition(":")
        if scheme == "env":
            value = os.environ.get(rest)
            if value is None:
                raise BackendUnavailable(f"held credential {ref} is not set in the broker's environment")
            return value.encode()
        if scheme == "file":
            path = Path(rest)
            if not path.is_absolute() and self.base_dir:
                path = self.base_dir / path
            try:
                return path.read_bytes().rstrip(b"\n")
            except OSError as exc:
                raise BackendUnavailable(f"held credential {ref} cannot be read: {exc.strerror}") from None
        raise BackendUnavailable(f"held credential {ref}: the embedded backends resolve env: and file: references only")
