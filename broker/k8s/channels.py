"""The Kubernetes remote-command channel protocol over WebSocket, sans-IO.

``kubectl exec`` (1.30+) and the official clients speak it after upgrading
``GET .../pods/NAME/exec?command=...`` to a WebSocket with the subprotocol
``v5.channel.k8s.io`` (or ``v4.channel.k8s.io`` with older peers). Every binary
message starts with one byte that names the stream:

    0 stdin (client -> server)     3 error: a metav1.Status JSON with the outcome (server -> client)
    1 stdout (server -> client)    4 resize: {"Width": w, "Height": h} (client -> server)
    2 stderr (server -> client)  255 close (v5 only): [255, stream] half-closes a stream (stdin EOF)

The relay forwards messages unchanged; this module only reads them (for the
recording and the exit status) and builds the few the broker sends itself.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
# In the broker's order of preference. v1-v3 (channel.k8s.io, base64.channel.k8s.io, ...) are not
# relayed: they cannot signal stdin EOF and carry the exit status differently.
SUPPORTED = (V5, V4)


class ChannelError(ValueError):
    """A message that is not a channel frame."""


@dataclass(frozen=True)
class Frame:
    channel: int
    payload: bytes


def pick_protocol(offered: list[str] | tuple[str, ...]) -> str | None:
    """The subprotocol to speak with a client that offered these (None: nothing in common)."""
    offered_set = {p.strip() for p in offered}
    return next((p for p in SUPPORTED if p in offered_set), None)


def offered_protocols(header: str | None) -> list[str]:
    return [p.strip() for p in (header or "").split(",") if p.strip()]


def parse(message: bytes) -> Frame:
    if not message:
        raise ChannelError("empty message (no stream byte)")
    return Frame(message[0], bytes(message[1:]))


def encode(channel: int, payload: bytes = b"") -> bytes:
    if not 0 <= channel <= 255:
        raise ChannelError(f"stream {channel} is out of range")
    return bytes([channel]) + payload


def parse_resize(payload: bytes) -> tuple[int, int] | None:
    """``{"Width": 120, "Height": 40}`` -> (120, 40); None when it is not a size."""
    try:
        size = json.loads(payload)
        width, height = int(size["Width"]), int(size["Height"])
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError):
        return None
    return (width, height) if width >= 0 and height >= 0 else None


@dataclass(frozen=True)
class Outcome:
    """What the status stream said: the exit code, or a failure without one."""

    status: str  # Success | Failure
    exit_code: int | None
    reason: str
    message: str


def parse_status(payload: bytes) -> Outcome:
    """Read the Status JSON of stream 3. Success is exit 0; NonZeroExitCode carries the code in
    ``details.causes[reason=ExitCode].message``; any other failure has no exit code."""
    try:
        status = json.loads(payload)
    except (ValueError, RecursionError):
        return Outcome("Failure", None, "Unparsable", payload.decode("utf-8", "replace")[:500])
    if not isinstance(status, dict):
        return Outcome("Failure", None, "Unparsable", str(status)[:500])
    state = str(status.get("status", ""))
    reason = str(status.get("reason", ""))
    message = str(status.get("message", ""))
    if state == "Success":
        return Outcome("Success", 0, reason, message)
    code = None
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    if reason == "NonZeroExitCode" and isinstance(causes, list):
        for cause in causes:
            if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
                try:
                    code = int(cause.get("message"))
                except (TypeError, ValueError, OverflowError):
                    pass
    return Outcome(state or "Failure", code, reason, message)


def status_object(message: str, *, reason: str = "Forbidden", code: int = 403, details: dict | None = None) -> dict:
    """A metav1.Status as kube-apiserver sends it; kubectl prints ``Error from server (<reason>): <message>``."""
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


def exit_status_object(code: int) -> dict:
    """The Status a server sends on stream 3 when the command ended with ``code`` (what the stand-in sends)."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure", "message": f"command terminated with non-zero exit code: exit status {code}",
            "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def status_frame(status: dict) -> bytes:
    return encode(ERROR, json.dumps(status).encode())
