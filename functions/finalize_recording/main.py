"""Cloud Function (Pub/Sub session-closed): seal a session's recording. Redelivery-safe."""
import logging

import functions_framework

from jitgate.backends import open_backends
from jitgate.events import decode_pubsub_event
from jitgate.logs import log
from jitgate.recording.finalize import finalize_session
from jitgate.settings import Settings

logger = logging.getLogger("jitgate.finalize")
_backends = None


@functions_framework.cloud_event
def finalize_recording(cloud_event):
    global _backends
    if _backends is None:
        _backends = open_backends(Settings.from_env())
    payload = decode_pubsub_event(cloud_event)
    session_id = payload["session_id"]
    entry = finalize_session(_backends, session_id)
    if entry is None:
        log(logger, logging.INFO, "already sealed; duplicate delivery ignored", session_id=session_id)
    else:
        log(logger, logging.INFO, "session sealed", session_id=session_id, events=entry.get("statements"))
