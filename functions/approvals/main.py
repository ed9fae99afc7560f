"""Cloud Function (HTTP): the approvals service. Every approval decision is made and signed here.

GET  /keys        the approvals public key (JWKS): the broker verifies decisions with it
POST /decisions   {"approval_id", "action": "approve"|"deny", "reason", "via"} with
                  Authorization: Bearer <OIDC ID token>  (the CLI and the web console,
                  through jitgate.approvals_client)
POST /slack       Slack interactivity (Approve / Deny buttons, the deny-reason modal): the
                  signature is checked before anything in the body is parsed
"""
import functions_framework
from flask import Request, jsonify

from jitgate import logs
from jitgate.approvals_service import ApprovalsService

logs.setup()  # JSON lines on stderr: Cloud Logging's structured format

MAX_BODY = 64 * 1024
_state: dict = {}


def _service() -> ApprovalsService:
    if "service" not in _state:
        _state["service"] = ApprovalsService.from_env()
    return _state["service"]


def _slack(request: Request):
    from jitgate.slack.app import SlackGate

    if "slack" not in _state:
        try:
            _state["slack"] = SlackGate(_service())
        except RuntimeError as exc:  # Slack not configured for this deployment
            return jsonify({"error": str(exc)}), 404
    return _state["slack"].handle(request)


@functions_framework.http
def approvals(request: Request):
    path = request.path.rstrip("/")
    if request.method == "GET" and path.endswith("/keys"):
        return jsonify(_service().jwks())
    if request.method != "POST":
        return jsonify({"error": "use POST /decisions or POST /slack (GET /keys for the public key)"}), 405
    if (request.content_length or 0) > MAX_BODY:
        return jsonify({"error": f"the body is over {MAX_BODY} bytes"}), 413
    if path.endswith("/slack"):
        return _slack(request)
    if not path.endswith("/decisions"):
        return jsonify({"error": "not found: POST /decisions or POST /slack"}), 404
    auth = request.headers.get("Authorization", "")
    if not auth.lower().startswith("bearer ") or not auth[7:].strip():
        return jsonify({"ok": False, "code": "token_required",
                        "error": "send your OIDC ID token as Authorization: Bearer <token> (`jitgate login`)"}), 401
    body = request.get_json(silent=True)
    if (not isinstance(body, dict) or not isinstance(body.get("approval_id"), str)
            or not isinstance(body.get("action"), str) or not isinstance(body.get("reason", ""), str)):
        return jsonify({"ok": False, "code": "bad_request",
                        "error": "expected JSON {approval_id, action: approve|deny, reason}"}), 400
    status, result = _service().decide_with_token(auth[7:].strip(), body["approval_id"], body["action"],
                                                  body.get("reason") or "", str(body.get("via") or "cli"))
    return jsonify(result), status
