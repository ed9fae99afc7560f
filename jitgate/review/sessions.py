"""Sessions as the console shows them, read-only from the index and the recordings store.

The index (SessionIndex) answers the list; filters it cannot apply itself are applied here
over at most SCAN_LIMIT newest entries. A statement search reads the recordings of the
sessions in its time range (at most SEARCH_SESSIONS of them) and says when it stopped early.
Recordings are already masked by the broker: nothing here unmasks or re-derives a value.
"""
from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field

from jitgate.recording.asciicast import TERM_START, to_asciicast
from jitgate.recording.finalize import MANIFEST, RECORDING
from jitgate.recording.seal import parse_events

SCAN_LIMIT = 2000
SEARCH_SESSIONS = 200
SEARCH_HITS = 200
PAGE_SIZE = 25
SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class NotFound(LookupError):
    pass


def valid_session_id(session_id: str) -> bool:
    return bool(SESSION_ID.match(session_id or ""))


def parse_when(value: str, what: str) -> float | None:
    """'2026-12-01' or '2026-12-01T14:05' (UTC) -> epoch seconds; ValueError with what to type."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{what}: {value!r} is not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def fmt_time(ts) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(float(ts), datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass
class Filters:
    person: str = ""
    group: str = ""
    target: str = ""
    kind: str = ""
    since: str = ""
    until: str = ""
    denied: bool = False
    held: bool = False
    errors: bool = False
    crashed: bool = False
    page: int = 1
    problems: list[str] = field(default_factory=list)

    FLAGS = ("denied", "held", "errors", "crashed")
    TEXT = ("person", "group", "target", "kind", "since", "until")

    @classmethod
    def from_args(cls, args) -> "Filters":
        f = cls(**{k: (args.get(k) or "").strip()[:200] for k in cls.TEXT})
        for flag in cls.FLAGS:
            setattr(f, flag, args.get(flag) in ("1", "on", "true"))
        try:
            f.page = max(1, min(10_000, int(args.get("page") or 1)))
        except ValueError:
            f.problems.append("page: not a number; showing page 1")
        return f

    def query(self, page: int | None = None) -> dict:
        out = {k: getattr(self, k) for k in self.TEXT if getattr(self, k)}
        out.update({k: "1" for k in self.FLAGS if getattr(self, k)})
        if page and page > 1:
            out["page"] = str(page)
        return out

    def window(self) -> tuple[float | None, float | None]:
        since = until = None
        try:
            since = parse_when(self.since, "from")
        except ValueError as exc:
            self.problems.append(str(exc))
        try:
            until = parse_when(self.until, "to")
            if until is not None and "T" not in self.until:
                until += 86400  # a date means the whole day
        except ValueError as exc:
            self.problems.append(str(exc))
        return since, until

    def matches(self, row: dict, since: float | None, until: float | None) -> bool:
        if self.person and self.person.lower() not in row.get("principal", "").lower():
            return False
        if self.group and self.group not in row.get("groups", []):
            return False
        if self.kind and row.get("kind") != self.kind:
            return False
        if since is not None and row.get("started_at", 0) < since:
            return False
        if until is not None and row.get("started_at", 0) >= until:
            return False
        if self.denied and not row.get("denied"):
            return False
        if self.held and not row.get("approvals"):
            return False
        if self.errors and not row.get("errors"):
            return False
        if self.crashed and not str(row.get("end_reason", "")).startswith("crash"):
            return False
        return True


def list_sessions(backends, filters: Filters, page_size: int = PAGE_SIZE) -> tuple[list[dict], bool]:
    """(rows of the requested page, whether a next page exists), newest first."""
    since, until = filters.window()
    rows = backends.index.list_sessions(target=filters.target or None, limit=SCAN_LIMIT)
    rows = [r for r in rows if filters.matches(r, since, until)]
    rows.sort(key=lambda r: r.get("started_at", 0), reverse=True)
    start = (filters.page - 1) * page_size
    return rows[start:start + page_size], len(rows) > start + page_size


@dataclass
class SearchResult:
    hits: list[dict]
    scanned: int
    truncated: bool


def search_statements(backends, text: str, since: float | None, until: float | None) -> SearchResult:
    """Statements and commands whose (recorded, masked) text contains ``text``, case-insensitive."""
    needle = text.lower()
    rows = backends.index.list_sessions(limit=SCAN_LIMIT)
    rows = [r for r in rows if (since is None or r.get("started_at", 0) >= since) and (until is None or r.get("started_at", 0) < until)]
    rows.sort(key=lambda r: r.get("started_at", 0), reverse=True)
    truncated = len(rows) > SEARCH_SESSIONS
    hits: list[dict] = []
    for row in rows[:SEARCH_SESSIONS]:
        try:
            events = parse_events(backends.recordings.get_object(row["session_id"], RECORDING))
        except (FileNotFoundError, KeyError, ValueError):
            continue
        for event in events:
            said = _text_of(event)
            if said and needle in said.lower():
                hits.append({"session_id": row["session_id"], "principal": row.get("principal", ""),
                             "target": row.get("target", ""), "at": event.get("ts"), "text": said,
                             "decision": event.get("decision", "")})
                if len(hits) >= SEARCH_HITS:
                    return SearchResult(hits, rows.index(row) + 1, True)
    return SearchResult(hits, min(len(rows), SEARCH_SESSIONS), truncated)


def _text_of(event: dict) -> str:
    if event.get("type") == "statement":
        return event.get("sql", "")
    if event.get("type") == "ssh.channel":
        return event.get("command") or ""
    if event.get("type") == "agent.request":
        return json.dumps({k: v for k, v in event.items() if k not in ("seq", "ts", "type", "chain")}, sort_keys=True)
    return ""


# -- one session ----------------------------------------------------------------------------


@dataclass
class SessionView:
    session_id: str
    entry: dict
    events: list[dict]
    recording: bytes
    manifest: bytes
    timeline: list[dict]
    approvals: list[dict]
    transfers: list[dict]
    terminals: list[dict]


def load_recording(backends, session_id: str) -> tuple[bytes, bytes]:
    if not valid_session_id(session_id):
        raise NotFound(f"{session_id!r} is not a session id")
    try:
        return backends.recordings.get_object(session_id, RECORDING), backends.recordings.get_object(session_id, MANIFEST)
    except (FileNotFoundError, KeyError):
        raise NotFound(f"no sealed recording for session {session_id}") from None


def load_session(backends, session_id: str) -> SessionView:
    recording, manifest = load_recording(backends, session_id)
    try:
        events = parse_events(recording)
    except ValueError:
        events = []  # unreadable lines: the verification badge says where; show what the index knows
    entry = backends.index.get_session(session_id) or {}
    return SessionView(session_id, entry, events, recording, manifest, *_timeline(backends, events))


def _timeline(backends, events: list[dict]) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    t0 = events[0].get("ts", 0) if events else 0
    results = {e.get("id"): e for e in events if e.get("type") == "result"}
    approvals: dict[str, dict] = {}
    timeline, transfers, terminals = [], [], []
    for e in events:
        kind = e.get("type", "")
        item = {"kind": kind, "at": e.get("ts"), "offset": round((e.get("ts") or t0) - t0, 3), "seq": e.get("seq")}
        if kind == "statement":
            result = results.get(e.get("id"), {})
            item.update(text=e.get("sql", ""), decision=e.get("decision", ""), classes=e.get("classes", []),
                        reason=e.get("reason"), approval_id=e.get("approval_id"), params=e.get("params"),
                        rows=result.get("rows"), duration_ms=result.get("duration_ms"), error=result.get("error"),
                        tag=result.get("tag"))
        elif kind == "ssh.channel":
            item.update(text=e.get("command") or e.get("request", ""), channel=e.get("channel"), pty=e.get("pty"))
        elif kind == "ssh.exit":
            item.update(text=f"exit {e.get('exit_status', e.get('signal', ''))}", channel=e.get("channel"),
                        error=e.get("reason"))
        elif kind.startswith("approval."):
            approval = approvals.setdefault(e.get("approval_id", ""), {"approval_id": e.get("approval_id", "")})
            approval.setdefault("events", []).append(e)
            if kind == "approval.requested":
                approval.update(requested_at=e.get("ts"), classes=e.get("classes", []), sha256=e.get("sha256"),
                                requester=e.get("requester"), approvers_needed=_names(e.get("approvers")),
                                required=e.get("required"))
            elif kind == "approval.decided":
                approval.update(status=e.get("status"), decided_by=e.get("decided_by"), approved_by=e.get("approvers", []),
                                via=e.get("via", []), reason=e.get("reason"), decided_at=e.get("decided_at"))
            item.update(approval_id=e.get("approval_id"), status=e.get("status"), decided_by=e.get("decided_by"),
                        text=_approval_line(kind, e))
        elif kind == "file.transfer":
            transfers.append(e)
            item.update(text=f"{e.get('protocol', '')} {e.get('action', '')} {e.get('path', '')}")
        elif kind == TERM_START:
            terminals.append({"channel": e.get("channel"), "width": e.get("width"), "height": e.get("height"),
                              "command": e.get("command")})
            item.update(text=f"terminal opened ({e.get('width')}x{e.get('height')})", channel=e.get("channel"))
        elif kind in ("term.output", "term.resize", "exec.output", "result"):
            continue  # shown by the player / folded into their statement
        elif kind == "session.start":
            p = e.get("principal") or {}
            item.update(text=f"session by {p.get('username', '')} to {e.get('target', '')} from {e.get('client', '')}")
        elif kind == "session.end":
            item.update(text=f"session ended: {e.get('reason', '')}")
        else:
            item.update(text=json.dumps({k: v for k, v in e.items() if k not in ("seq", "ts", "type", "chain")},
                                        sort_keys=True)[:500])
        timeline.append(item)
    for approval_id, approval in approvals.items():
        record = backends.approvals.get_approval(approval_id) if approval_id else None
        if record:  # what exactly was approved, and each approver with the moment they decided
            approval.update(statement=record.get("statement"), target=record.get("target"),
                            decisions=record.get("approvals", []), denial=record.get("denial"),
                            store_status=record.get("status"), expires_at=record.get("expires_at"))
    return timeline, list(approvals.values()), transfers, terminals


def _names(value) -> list[str]:
    """Approvers as the recording names them: one phrase ("group dba") or a list."""
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _approval_line(kind: str, e: dict) -> str:
    if kind == "approval.requested":
        return f"held for approval ({', '.join(e.get('classes', []))}); asks {', '.join(_names(e.get('approvers'))) or 'approvers'}"
    if kind == "approval.decided":
        who = ", ".join(_names(e.get("approvers"))) or e.get("decided_by") or "-"
        return f"{e.get('status', '')} by {who}" + (f" via {', '.join(e.get('via'))}" if e.get("via") else "")
    return kind.partition(".")[2].replace("_", " ")


def terminal_cast(view: SessionView, channel: int) -> str:
    return to_asciicast(view.events, channel, title=f"jitgate session {view.session_id}")
