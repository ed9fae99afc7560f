"""A stand-in for Cloud Run's invoker check in front of a function.

Cloud Run refuses a request before the function sees it unless it carries
``Authorization: Bearer <Google ID token>`` whose signature is Google's, whose audience is
the service URL and whose service account holds roles/run.invoker on the service
(infra/functions.tf). Here "Google's key" is the metadata stand-in's key, the service URL
is this proxy's URL and the invokers are read from infra/ (tests/cloud/iam_model.py).
Refusals are 401 (no or bad token) and 403 (a valid token of someone else), as Cloud Run's.
"""
from __future__ import annotations

from urllib.parse import urlsplit

import jwt

from tests.cloud.http_standin import Handler, Server
from tests.cloud.metadata_server import GOOGLE_ISSUER


class CloudRunInvoker:
    def __init__(self, backend_url: str, *, google_public_key, invokers: set[str]):
        self.backend = urlsplit(backend_url)
        self.google_public_key = google_public_key
        self.invokers = set(invokers)
        self.refused: list[tuple[int, str]] = []
        self.passed = 0
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    def check(self, authorization: str | None) -> tuple[int, str]:
        """(0, email) when Cloud Run would let the request through, else (status, reason)."""
        if "allUsers" in self.invokers:
            return 0, "allUsers"  # a public service: Cloud Run checks nothing
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return 401, "no bearer token"
        try:
            claims = jwt.decode(token, self.google_public_key, algorithms=["RS256"], audience=self.url,
                                issuer=GOOGLE_ISSUER, options={"require": ["exp", "iat", "aud", "iss"]})
        except jwt.PyJWTError as exc:
            return 401, f"token rejected: {type(exc).__name__}"
        email = claims.get("email", "")
        if not claims.get("email_verified") or email not in self.invokers:
            return 403, f"{email or 'caller'} lacks run.invoker"
        return 0, email

    def start(self) -> "CloudRunInvoker":
        outer = self

        class Front(Handler):
            def handle_request(self):
                body = self.body()
                status, reason = outer.check(self.headers.get("Authorization"))
                if status:
                    outer.refused.append((status, reason))
                    data = f"Error: {'Unauthorized' if status == 401 else 'Forbidden'}\n".encode()
                    return self.reply(status, data, [("Content-Type", "text/plain")])
                outer.passed += 1
                status, headers, data = self.forward(outer.backend, body)
                self.reply(status, data, headers)

        self._server = Server(Front)
        return self

    def stop(self) -> None:
        if self._server:
            self._server.stop()
