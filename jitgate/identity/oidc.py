"""OIDC ID token validation: discovery, JWKS with caching and rotation, strict checks.

- Only asymmetric algorithms the policy lists (RS256/ES256) are accepted; the
  algorithm comes from our allow-list, never from the token, so ``alg=none``
  and HS256-with-the-public-key tricks fail.
- A token whose ``kid`` is not in the cached key set triggers one JWKS refetch
  (key rotation), rate-limited so a stream of forged kids cannot hammer the IdP.
- ``iss``, ``aud``, ``exp`` and ``nbf`` are checked with a small leeway.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import httpx
import jwt
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from jitgate.policy import IdentityConfig

DISCOVERY_TTL = 3600
JWKS_TTL = 600
# Minimum seconds between two refetches caused by unknown kids.
REFETCH_COOLDOWN = 10


class TokenError(Exception):
    """The token cannot be accepted. The message is safe to show the caller: it never
    contains the token itself."""


@dataclass(frozen=True)
class Principal:
    subject: str
    username: str
    groups: frozenset[str]
    issuer: str
    expires_at: int
    claims: dict = field(default_factory=dict, compare=False, hash=False)
    # Canonical identity (policy identity.identity_claim, lower-cased): "" when the token lacks it
    # (or its email is not verified); such a token can neither request nor decide approvals.
    identity: str = ""

    def to_dict(self) -> dict:
        return {
            "subject": self.subject,
            "username": self.username,
            "identity": self.identity,
            "groups": sorted(self.groups),
            "issuer": self.issuer,
            "expires_at": self.expires_at,
        }


class OIDCVerifier:
    def __init__(self, config: IdentityConfig, *, http: httpx.Client | None = None, clock=time.time):
        self.config = config
        self._http = http or httpx.Client(timeout=5.0)
        self._clock = clock
        self._lock = threading.Lock()
        self._discovery: dict | None = None
        self._discovery_at = 0.0
        self._keys: dict[str, object] = {}
        self._keys_at = 0.0
        self._last_refetch = 0.0
        self.jwks_fetches = 0

    # -- fetching ---------------------------------------------------------------------

    def _get_json(self, url: str, what: str) -> dict:
        try:
            response = self._http.get(url)
        except httpx.HTTPError as exc:
            raise TokenError(f"cannot reach the identity provider for its {what} ({type(exc).__name__}); try again shortly") from None
        if response.status_code != 200:
            raise TokenError(f"the identity provider answered {response.status_code} for its {what}")
        try:
            return response.json()
        except json.JSONDecodeError:
            raise TokenError(f"the identity provider's {what} is not JSON") from None

    def _discover(self) -> dict:
        now = self._clock()
        if self._discovery is None or now - self._discovery_at > DISCOVERY_TTL:
            url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
            doc = self._get_json(url, "discovery document")
            if doc.get("issuer") != self.config.issuer:
                raise TokenError(
                    f"discovery document names issuer {doc.get('issuer')!r}, the policy trusts {self.config.issuer!r}"
                )
            self._discovery, self._discovery_at = doc, now
        return self._discovery

    def _load_keys(self) -> None:
        doc = self._get_json(self._discover()["jwks_uri"], "JWKS")
        keys: dict[str, object] = {}
        for jwk in doc.get("keys", []):
            kty, kid = jwk.get("kty"), jwk.get("kid")
            if not kid or jwk.get("use", "sig") != "sig":
                continue
            try:
                if kty == "RSA":
                    keys[kid] = ("RS256", RSAAlgorithm.from_jwk(jwk))
                elif kty == "EC" and jwk.get("crv") == "P-256":
                    keys[kid] = ("ES256", ECAlgorithm.from_jwk(jwk))
            except (ValueError, jwt.InvalidKeyError):
                continue
        self._keys, self._keys_at = keys, self._clock()
        self.jwks_fetches += 1

    def _key_for(self, kid: str):
        with self._lock:
            now = self._clock()
            if not self._keys or now - self._keys_at > JWKS_TTL:
                self._load_keys()
            if kid not in self._keys and now - self._last_refetch >= REFETCH_COOLDOWN:
                # Unknown kid: the IdP may have rotated its keys since our last fetch.
                self._last_refetch = now
                self._load_keys()
            return self._keys.get(kid)

    # -- validation -------------------------------------------------------------------

    def verify(self, token: str) -> Principal:
        if not token or token.count(".") != 2:
            raise TokenError("the password must be an OIDC ID token (a JWT); get one with `jitgate login`")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise TokenError("the token is not a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in self.config.algorithms:
            raise TokenError(f"token algorithm {alg!r} is not accepted; allowed: {', '.join(self.config.algorithms)}")
        kid = header.get("kid")
        if not kid:
            raise TokenError("the token header has no key id (kid)")
        found = self._key_for(kid)
        if found is None:
            raise TokenError(f"the token was signed with key {kid!r}, which the issuer does not publish")
        key_alg, key = found
        if key_alg != alg:
            raise TokenError(f"the token says {alg} but key {kid!r} is a {key_alg} key")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[key_alg],
                audience=self.config.audiences,
                issuer=self.config.issuer,
                leeway=self.config.leeway_seconds,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("the token has expired; get a new one with `jitgate login`") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("the token is not valid yet (nbf/iat in the future); check the clocks") from None
        except jwt.InvalidAudienceError:
            raise TokenError(
                f"the token is for another audience; jitgate accepts {', '.join(self.config.audiences)}"
            ) from None
        except jwt.InvalidIssuerError:
            raise TokenError(f"the token is from another issuer; jitgate trusts {self.config.issuer}") from None
        except jwt.InvalidSignatureError:
            raise TokenError("the token signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"the token lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"the token is invalid ({type(exc).__name__})") from None
        groups = claims.get(self.config.groups_claim, [])
        if isinstance(groups, str):
            groups = [g for g in groups.replace(",", " ").split() if g]
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise TokenError(f"the {self.config.groups_claim!r} claim must be a list of group names")
        username = next((str(claims[c]) for c in self.config.username_claims if claims.get(c)), claims["sub"])
        if "email" in self.config.username_claims and claims.get("email") and claims.get("email_verified") is False:
            username = claims["sub"]
        return Principal(
            subject=str(claims["sub"]),
            username=username,
            groups=frozenset(groups),
            issuer=claims["iss"],
            expires_at=int(claims["exp"]),
            claims=claims,
            identity=canonical_identity(claims, self.config),
        )


def canonical_identity(claims: dict, config: IdentityConfig) -> str:
    """The person's one identity: the configured claim; for email, only when email_verified is true."""
    value = claims.get(config.identity_claim)
    if not isinstance(value, str) or not value.strip():
        return ""
    if config.identity_claim == "email" and claims.get("email_verified") is not True:
        return ""
    return value.strip().lower()


def missing_identity_reason(config: IdentityConfig | None = None) -> str:
    claim = config.identity_claim if config is not None else "email"
    verified = " with email_verified true" if claim == "email" else ""
    return (f"your token has no {claim!r} claim{verified}, which approvals use as your one identity; "
            f"sign in with an account whose identity provider sets it (policy identity.identity_claim)")
