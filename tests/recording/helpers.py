"""What the recording tests share: sessions stored as a broker uploads them, and counted store reads."""
from __future__ import annotations

import collections
import json
import threading

from jitgate.recording.closing import sign_closing
from jitgate.recording.seal import Chain

EVENTS = [
    {"seq": 0, "ts": 1.0, "type": "session.start", "principal": {"username": "alice@example.com", "groups": ["sre"]},
     "target": "demo", "kind": "postgres"},
    {"seq": 1, "ts": 1.5, "type": "statement", "id": 1, "sql": "SELECT 1", "decision": "allow"},
    {"seq": 2, "ts": 1.6, "type": "result", "id": 1, "rows": 1, "error": None},
    {"seq": 3, "ts": 2.0, "type": "session.end", "reason": "client closed"},
]


def store_and_close(b, session_id: str, events=EVENTS) -> dict:
    """Store a session's chunks (two) as the broker uploads them; return its signed session-closed event."""
    data = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in events)
    cut = data.index(b"\n") + 1
    b.recordings.put_chunk(session_id, 0, data[:cut])
    b.recordings.put_chunk(session_id, 1, data[cut:])
    chain = Chain(session_id)
    for line in data.splitlines():
        chain.add(line)
    return sign_closing(b.closing_signer, session_id, events=chain.count, chain_head=chain.head)


class StoreCalls:
    """Counts the calls a recording store receives, by method (and the object names it reads)."""

    METHODS = ("get_object", "open_object", "object_exists", "get_chunk", "list_chunks", "read_chunks", "put_object",
               "put_object_stream", "get_ledger", "put_ledger", "list_ledger")

    def __init__(self, store):
        self.calls: collections.Counter = collections.Counter()
        self.names: list[str] = []
        self._lock = threading.Lock()
        for method in self.METHODS:
            original = getattr(store, method, None)
            if original is None:
                continue

            def counted(*args, _original=original, _method=method, **kwargs):
                with self._lock:
                    self.calls[_method] += 1
                    self.names.append(f"{_method} {'/'.join(str(a) for a in args)}")
                return _original(*args, **kwargs)

            setattr(store, method, counted)

    def take(self) -> collections.Counter:
        with self._lock:
            out, self.calls, self.names = self.calls, collections.Counter(), []
        return out
