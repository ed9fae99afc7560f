"""A stand-in for the GCE metadata server's identity endpoint (what a broker VM asks for its ID token).

Like the real one it answers only requests with ``Metadata-Flavor: Google``, needs an
``audience`` and returns a Google-style RS256 ID token (iss https://accounts.google.com,
email of the VM's service account, one hour). Its signing key stands in for Google's; the
Cloud Run stand-in (tests/cloud/cloud_run.py) trusts exactly this key.
"""
from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.cloud.http_standin import Handler, Server

GOOGLE_ISSUER = "https://accounts.google.com"
IDENTITY_PATH = "/computeMetadata/v1/instance/service-accounts/default/identity"
EMAIL_PATH = "/computeMetadata/v1/instance/service-accounts/default/email"


class MetadataServer:
    def __init__(self, email: str, *, lifetime: int = 3600):
        self.email = email
        self.lifetime = lifetime
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "standin-google-1"
        self.issued: list[dict] = []
        self._server: Server | None = None

    @property
    def public_key(self):
        return self.key.public_key()

    @property
    def host(self) -> str:
        """host:port, as GCE_METADATA_HOST takes it."""
        return f"127.0.0.1:{self._server.port}"

    def mint(self, audience: str, *, email: str | None = None, now: float | None = None, key=None) -> str:
        now = int(now if now is not None else time.time())
        claims = {"iss": GOOGLE_ISSUER, "aud": audience, "azp": "104000000000000000001", "sub": "104000000000000000001",
                  "email": email or self.email, "email_verified": True, "iat": now, "exp": now + self.lifetime}
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": self.kid})

    def start(self) -> "MetadataServer":
        outer = self

        class Metadata(Handler):
            def _send(self, status: int, body: str) -> None:
                self.reply(status, body.encode(), [("Metadata-Flavor", "Google"), ("Content-Type", "application/text")])

            def handle_request(self):
                if self.command != "GET":
                    return self._send(405, "method not allowed")
                if self.headers.get("Metadata-Flavor") != "Google" or self.headers.get("X-Forwarded-For"):
                    return self._send(403, "Missing Metadata-Flavor:Google header.")
                url = urlsplit(self.path)
                if url.path == EMAIL_PATH:
                    return self._send(200, outer.email)
                if url.path != IDENTITY_PATH:
                    return self._send(404, "not found")
                audience = parse_qs(url.query).get("audience", [""])[0]
                if not audience:
                    return self._send(400, "non-empty audience parameter required")
                token = outer.mint(audience)
                outer.issued.append({"audience": audience, "at": time.time()})
                return self._send(200, token)

        self._server = Server(Metadata)
        return self

    def stop(self) -> None:
        if self._server:
            self._server.stop()
