"""The broker's side of identity: ask functions/authorize, verify its grant, cache it.

Grants are cached by (SHA-256 of the token, target, user) until they expire, so a
busy client reconnecting does not cost a round trip per connection. The token
itself is never stored or logged.
"""
from __future__ import annotations

import hashlib
import time

import httpx

from jitgate.identity.grants import Grant, GrantError, keys_from_jwks, verify_grant


class Refused(Exception):
    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class AuthorizeClient:
    def __init__(self, url: str, *, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(timeout=timeout)
        self._cache: dict[tuple[str, str, str], Grant] = {}
        self._keys: dict = {}
        self.calls = 0

    async def _load_keys(self) -> None:
        response = await self._http.get(self.url + "/keys")
        response.raise_for_status()
        self._keys = keys_from_jwks(response.json())

    async def authorize(self, token: str, target: str, user: str) -> Grant:
        cache_key = (hashlib.sha256(token.encode()).hexdigest(), target, user.lower())
        cached = self._cache.get(cache_key)
        now = time.time()
        if cached and cached.expires_at > now + 5:
            return cached
        try:
            if not self._keys:
                await self._load_keys()
            self.calls += 1
            response = await self._http.post(self.url, json={"token": token, "target": target, "user": user})
        except httpx.HTTPError as exc:
            raise Refused("unavailable", f"the authorization service is unreachable ({type(exc).__name__}); try again shortly") from None
        try:
            body = response.json()
        except ValueError:
            raise Refused("unavailable", f"the authorization service answered HTTP {response.status_code}") from None
        if response.status_code != 200 or not body.get("allowed"):
            raise Refused(body.get("code", "refused"), body.get("reason", f"refused (HTTP {response.status_code})"))
        try:
            grant = verify_grant(body["grant"], self._keys, target=target)
        except GrantError:
            await self._load_keys()  # the authorize key may have rotated
            try:
                grant = verify_grant(body["grant"], self._keys, target=target)
            except GrantError as exc:
                raise Refused("bad_grant", f"the authorization service's grant does not verify: {exc}") from None
        if len(self._cache) > 10000:
            self._cache = {k: g for k, g in self._cache.items() if g.expires_at > now}
        self._cache[cache_key] = grant
        return grant

    async def close(self) -> None:
        await self._http.aclose()
