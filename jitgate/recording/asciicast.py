"""Terminal recordings as asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/).

The broker does not write a separate .cast file: terminal output goes into the
session recording like every other event, so it is chained, signed and verified
with the rest. Each terminal (one SSH channel with a PTY) contributes:

    {"type": "term.start",  "channel": 0, "width": 80, "height": 24, "term": "xterm", "command": null}
    {"type": "term.output", "channel": 0, "event": [0.512, "o", "text"]}
    {"type": "term.resize", "channel": 0, "event": [3.1, "r", "120x40"]}

``event`` is an asciicast v2 event line as is (time in seconds since the
terminal started), so exporting a terminal is writing a header and copying the
events: ``to_asciicast(events)``. ``read_asciicast`` parses a .cast file back
(the tests use it, and ``jitgate replay`` uses the same event shapes).
"""
from __future__ import annotations

import codecs
import json
from dataclasses import dataclass, field

TERM_START = "term.start"
TERM_OUTPUT = "term.output"
TERM_RESIZE = "term.resize"


class Utf8Stream:
    """Bytes from a terminal to text, never splitting a multi-byte character across events."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


def header(width: int, height: int, *, timestamp: float | None = None, term: str | None = None,
           title: str | None = None, command: str | None = None) -> dict:
    head: dict = {"version": 2, "width": int(width) or 80, "height": int(height) or 24}
    if timestamp is not None:
        head["timestamp"] = int(timestamp)
    if command:
        head["command"] = command
    if title:
        head["title"] = title
    head["env"] = {"TERM": term or "xterm", "SHELL": "/bin/sh"}
    return head


def terminals(events: list[dict]) -> list[int]:
    """Channels of a recording that carried a terminal, in the order they started."""
    return [e["channel"] for e in events if e.get("type") == TERM_START]


def to_asciicast(events: list[dict], channel: int | None = None, *, title: str | None = None) -> str:
    """One terminal of a session recording as an asciicast v2 document (header line + event lines).

    ``channel`` picks the terminal (default: the first one). Raises LookupError
    when the recording has no terminal.
    """
    starts = {e["channel"]: e for e in events if e.get("type") == TERM_START}
    if not starts:
        raise LookupError("this recording has no terminal session (no PTY was opened)")
    if channel is None:
        channel = next(iter(starts))
    if channel not in starts:
        raise LookupError(f"no terminal on channel {channel}; terminals: {', '.join(map(str, starts))}")
    start = starts[channel]
    lines = [json.dumps(header(start.get("width", 80), start.get("height", 24), timestamp=start.get("ts"),
                               term=start.get("term"), title=title, command=start.get("command")))]
    for e in events:
        if e.get("channel") == channel and e.get("type") in (TERM_OUTPUT, TERM_RESIZE):
            lines.append(json.dumps(e["event"], ensure_ascii=False))
    return "\n".join(lines) + "\n"


@dataclass
class Cast:
    header: dict
    events: list[list] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(e[2] for e in self.events if e[1] == "o")


def read_asciicast(text: str) -> Cast:
    """Parse an asciicast v2 document; ValueError when it is not one."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty asciicast")
    head = json.loads(lines[0])
    if not isinstance(head, dict) or head.get("version") != 2:
        raise ValueError("not an asciicast v2 header")
    events = []
    last = 0.0
    for number, line in enumerate(lines[1:], start=2):
        event = json.loads(line)
        if not (isinstance(event, list) and len(event) == 3 and isinstance(event[0], (int, float))
                and isinstance(event[1], str) and isinstance(event[2], str)):
            raise ValueError(f"line {number}: not an asciicast v2 event")
        if event[0] < last:
            raise ValueError(f"line {number}: time goes backwards")
        last = event[0]
        events.append(event)
    return Cast(head, events)
