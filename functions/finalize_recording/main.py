"""Cloud Function (Pub/Sub session-closed): seal a session's recording. Redelivery-safe."""
import logging

import functions_framework

from jitgate import logs
from jitgate.backends import open_backends
from jitgate.events import decode_pubsub_event
from jitgate.logs import log
from jitgate.recording.finalize import finalize_session
from jitgate.settings import Settings

logger = logging.getLogger("jitgate.finalize")
logs.setup()  # JSON lines on stderr: Cloud Logging's structured format

_backends = None


@functions_framework.cloud_event
def finalize_recording(cloud_event):
    global _backends
    if _backends is None:
        _backends = open_backends(Settings.from_env())
    try:
        payload = decode_pubsub_event(cloud_event)
        session_id = payload["session_id"]
        if not isinstance(session_id, str) or not session_id:
            raise ValueError("session_id must be a non-empty string")
    except (ValueError, KeyError, TypeError) as exc:
        # Acknowledge a malformed event (retrying cannot fix it) and say why in the log.
        log(logger, logging.ERROR, "session-closed event ignored: malformed", error=f"{type(exc).__name__}: {exc}")
        return
    entry = finalize_session(_backends, session_id)
    if entry is None:
        log(logger, logging.INFO, "already sealed; duplicate delivery ignored", session_id=session_id)
    else:
        log(logger, logging.INFO, "session sealed", session_id=session_id, events=entry.get("statements"))
