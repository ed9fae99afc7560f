"""Cloud Function (Pub/Sub session-closed): seal a session's recording. Redelivery-safe.

Only a session-closed event signed by a trusted broker key seals anything; any other
event is refused in the log (and acknowledged: redelivering it cannot make it valid).
"""
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
_settings = None


@functions_framework.cloud_event
def finalize_recording(cloud_event):
    global _backends, _settings
    if _backends is None:
        _settings = Settings.from_env()
        _backends = open_backends(_settings)
    try:
        payload = decode_pubsub_event(cloud_event)
        if not isinstance(payload, dict):
            raise ValueError("the event data is not a JSON object")
    except (ValueError, KeyError, TypeError) as exc:
        # Acknowledge a malformed event (retrying cannot fix it) and say why in the log.
        log(logger, logging.ERROR, "session-closed event ignored: malformed", error=f"{type(exc).__name__}: {exc}")
        return
    result = finalize_session(_backends, payload, checkpoint_every=_settings.ledger_checkpoint_every)
    if result.status == "duplicate":
        log(logger, logging.INFO, "already sealed; duplicate delivery ignored", session_id=result.session_id)
    elif result.status == "sealed":
        log(logger, logging.INFO, "session sealed", session_id=result.session_id,
            statements=result.entry.get("statements"), ledger_entry=result.entry.get("ledger_entry"))
