"""Reading what the broker recorded for an SSH session."""
from __future__ import annotations

import subprocess
import sys
import time

from jitgate.backends import open_backends
from jitgate.recording.finalize import RECORDING
from jitgate.recording.seal import parse_events
from jitgate.settings import Settings


def sealed_session(stack, user: str, count: int = 1, timeout: float = 30.0) -> str:
    """The id of the newest sealed session of ``user`` once ``count`` of them are sealed."""
    backends = open_backends(Settings.from_env(stack.env))
    deadline = time.monotonic() + timeout
    rows: list = []
    while time.monotonic() < deadline:
        rows = backends.index.list_sessions(principal=user, limit=50)
        if len(rows) >= count:
            return max(rows, key=lambda r: r["started_at"])["session_id"]
        time.sleep(0.2)
    raise AssertionError(f"no sealed session for {user} within {timeout}s (found {len(rows)})")


def recording_events(stack, session_id: str) -> list[dict]:
    backends = open_backends(Settings.from_env(stack.env))
    return parse_events(backends.recordings.get_object(session_id, RECORDING))


def of_type(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


def jitgate(stack, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jitgate.cli", "--home", str(stack.home), *args], env=stack.env,
                          capture_output=True, text=True, timeout=60, check=check)
