"""The broker's side of identity: ask functions/authorize, verify its grant, cache it.

Grants are cached by (SHA-256 of the token, target, user) until they expire, so a
busy client reconnecting does not cost a round trip per connection. The token
itself is never stored or logged.

In production authorize sits behind Cloud Run's invoker check
(JITGATE_AUTHORIZE_AUTH=google-id-token): every call carries the VM's Google ID
token for authorize's URL, from the metadata server.
"""
from __future__ import annotations

import hashlib
import time

import httpx

from jitgate.identity.google_id_token import IdTokenError, MetadataIdTokens, audience_of
from jitgate.identity.grants import Grant, GrantError, keys_from_jwks, verify_grant

AUTH_MODES = ("", "google-id-token")


class Refused(Exception):
    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class AuthorizeClient:
    def __init__(self, url: str, *, timeout: float = 10.0, auth: str = ""):
        if auth not in AUTH_MODES:
            raise ValueError(f"JITGATE_AUTHORIZE_AUTH={auth!r} is not one of {AUTH_MODES[1:]} (or empty)")
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(timeout=timeout)
        self._cache: dict[tuple[str, str, str], Grant] = {}
        self._keys: dict = {}
        self._id_tokens = MetadataIdTokens() if auth == "google-id-token" else None
        self.calls = 0

    async def _headers(self) -> dict[str, str]:
        if self._id_tokens is None:
            return {}
        try:
            return {"Authorization": "Bearer " + await self._id_tokens.token(audience_of(self.url))}
        except IdTokenError as exc:
            raise Refused("unavailable", f"cannot call the authorization service: {exc}") from None

    async def _load_keys(self) -> None:
        response = await self._http.get(self.url + "/keys", headers=await self._headers())
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
            response = await self._http.post(self.url, json={"token": token, "target": target, "user": user},
                                             headers=await self._headers())
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
            try:
                await self._load_keys()  # the authorize key may have rotated
            except httpx.HTTPError as exc:
                raise Refused("unavailable", f"the authorization service's keys are unreachable ({type(exc).__name__})") from None
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
        if self._id_tokens is not None:
            await self._id_tokens.close()
