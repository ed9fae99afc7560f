"""A stand-in for Cloud Run's invoker check in front of a function.

Cloud Run refuses a request before the function sees it unless it carries
``Authorization: Bearer <Google ID token>`` whose signature is Google's, whose audience is
the service URL and whose service account holds roles/run.invoker on the service
(infra/functions.tf). Here "Google's key" is the metadata stand-in's key, the service URL
is this proxy's URL and the invokers are read from infra/ (tests/cloud/iam_model.py).
Refusals are 401 (no or bad token) and 403 (a valid token of someone else), as Cloud Run's.
"""
from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import jwt

from tests.cloud.metadata_server import GOOGLE_ISSUER

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
              "content-length", "host"}


class CloudRunInvoker:
    def __init__(self, backend_url: str, *, google_public_key, invokers: set[str]):
        self.backend = urlsplit(backend_url)
        self.google_public_key = google_public_key
        self.invokers = set(invokers)
        self.refused: list[tuple[int, str]] = []
        self.passed = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

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

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _relay(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, reason = outer.check(self.headers.get("Authorization"))
                if status:
                    outer.refused.append((status, reason))
                    data = f"Error: {'Unauthorized' if status == 401 else 'Forbidden'}\n".encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                outer.passed += 1
                conn = http.client.HTTPConnection(outer.backend.hostname, outer.backend.port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                conn.close()
                self.send_response(response.status)
                for k, v in response.getheaders():
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _relay

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
