"""Google ID tokens from the GCE metadata server, for calling functions that Cloud Run guards.

Cloud Run answers 403 before the function runs unless the request carries a Google-signed
ID token whose audience is the service URL and whose service account holds run.invoker.
A VM gets one from its metadata server; it is valid for an hour, so it is cached per
audience and fetched again shortly before it expires.

GCE_METADATA_HOST (host[:port]) points elsewhere than metadata.google.internal, as in
google-auth; the tests point it at a stand-in.
"""
from __future__ import annotations

import asyncio
import os
import time
from urllib.parse import urlsplit

import httpx
import jwt

METADATA_HOST = "metadata.google.internal"
IDENTITY_PATH = "/computeMetadata/v1/instance/service-accounts/default/identity"
# Fetch a new token this long before the current one expires (clock skew, slow calls).
REFRESH_MARGIN_SECONDS = 300


class IdTokenError(Exception):
    pass


def audience_of(url: str) -> str:
    """The service URL Cloud Run expects as audience: scheme://host[:port], no path."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class MetadataIdTokens:
    def __init__(self, *, host: str | None = None, timeout: float = 5.0):
        self.host = host or os.environ.get("GCE_METADATA_HOST") or METADATA_HOST
        self._http = httpx.AsyncClient(timeout=timeout)
        self._cache: dict[str, tuple[str, float]] = {}
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def token(self, audience: str) -> str:
        cached = self._cache.get(audience)
        if cached and cached[1] - REFRESH_MARGIN_SECONDS > time.time():
            return cached[0]
        async with self._lock:
            cached = self._cache.get(audience)
            if cached and cached[1] - REFRESH_MARGIN_SECONDS > time.time():
                return cached[0]
            token, expires_at = await self._fetch(audience)
            self._cache[audience] = (token, expires_at)
            return token

    async def _fetch(self, audience: str) -> tuple[str, float]:
        self.fetches += 1
        try:
            response = await self._http.get(
                f"http://{self.host}{IDENTITY_PATH}", params={"audience": audience, "format": "full"},
                headers={"Metadata-Flavor": "Google"})
        except httpx.HTTPError as exc:
            raise IdTokenError(f"the metadata server at {self.host} is unreachable ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise IdTokenError(f"the metadata server refused an ID token (HTTP {response.status_code}); "
                               "is a service account attached to this VM?")
        token = response.text.strip()
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
            expires_at = float(claims["exp"])
        except (jwt.PyJWTError, KeyError, TypeError, ValueError):
            raise IdTokenError("the metadata server's ID token is malformed") from None
        return token, expires_at

    async def close(self) -> None:
        await self._http.aclose()
