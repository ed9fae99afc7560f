"""Cloud Function (HTTP): validate an OIDC token, apply the policy, return a signed grant.

POST /      {"token": ..., "target": ..., "user": ...} -> 200 grant | 401 | 403 | 404
GET  /keys  the grant-verification public keys (JWKS), for the broker.
Only the broker may invoke this function (IAM in infra/).
"""
import functions_framework
from flask import Request, jsonify

from jitgate import logs
from jitgate.identity.authorize import Authorizer

logs.setup()  # JSON lines on stderr: Cloud Logging's structured format

_authorizer: Authorizer | None = None


def _get() -> Authorizer:
    global _authorizer
    if _authorizer is None:
        _authorizer = Authorizer.from_env()
    return _authorizer


@functions_framework.http
def authorize(request: Request):
    if request.method == "GET" and request.path.rstrip("/").endswith("/keys"):
        return jsonify(_get().jwks())
    if request.method != "POST":
        return jsonify({"error": "use POST with a JSON body {token, target, user}"}), 405
    body = request.get_json(silent=True)
    if (not isinstance(body, dict) or not isinstance(body.get("token"), str) or not isinstance(body.get("target"), str)
            or not isinstance(body.get("user"), (str, type(None)))):
        return jsonify({"allowed": False, "code": "bad_request", "reason": "expected JSON {token, target, user}"}), 400
    decision = _get().decide(body["token"], body["target"], body.get("user"))
    return jsonify(decision.body), decision.status
