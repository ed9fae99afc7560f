"""Event payloads as they travel between the broker and the functions.

In production a Pub/Sub push subscription (Eventarc) delivers each message to a
function as a CloudEvent of type ``google.cloud.pubsub.topic.v1.messagePublished``
whose data is ``{"message": {"data": base64(json), ...}, "subscription": ...}``.
The embedded event bus delivers exactly the same envelope over HTTP, so a
function cannot tell the two apart.
"""
from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timezone
from typing import Any

PUBSUB_EVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"


def pubsub_envelope(topic: str, payload: dict[str, Any], *, project: str = "local") -> tuple[dict[str, str], bytes]:
    """Headers and body of a binary-mode CloudEvent, as Eventarc pushes a Pub/Sub message."""
    message_id = uuid.uuid4().hex
    now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    data = {
        "message": {
            "data": base64.b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode(),
            "attributes": {"topic": topic},
            "messageId": message_id,
            "publishTime": now,
        },
        "subscription": f"projects/{project}/subscriptions/jitgate-{topic}-push",
    }
    headers = {
        "ce-id": message_id,
        "ce-specversion": "1.0",
        "ce-source": f"//pubsub.googleapis.com/projects/{project}/topics/jitgate-{topic}",
        "ce-type": PUBSUB_EVENT_TYPE,
        "ce-time": now,
        "content-type": "application/json",
    }
    return headers, json.dumps(data).encode()


def decode_pubsub_event(cloud_event: Any) -> dict[str, Any]:
    """The JSON payload carried by a Pub/Sub CloudEvent (functions-framework's CloudEvent or a dict)."""
    data = cloud_event.data if hasattr(cloud_event, "data") else cloud_event
    if isinstance(data, (bytes, str)):
        data = json.loads(data)
    try:
        raw = data["message"]["data"]
    except (KeyError, TypeError):
        raise ValueError("not a Pub/Sub CloudEvent: expected data.message.data") from None
    return json.loads(base64.b64decode(raw))
