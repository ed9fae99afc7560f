"""Grants: the short-lived, signed answer of functions/authorize that the broker trusts.

A grant is an EdDSA (Ed25519) JWT. It says who the caller is, which target the
grant is for and until when. The broker verifies it with the authorize
function's public key (served at ``GET <authorize>/keys``) and caches it by the
SHA-256 of the caller's token until it expires.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from jitgate.identity.oidc import Principal
from jitgate.keys import LocalSigner, key_id_of

GRANT_ISSUER = "jitgate-authorize"
GRANT_AUDIENCE = "jitgate-broker"
# Grants are short so that a policy change or a revoked IdP account takes effect quickly.
GRANT_MAX_SECONDS = 300


@dataclass(frozen=True)
class Grant:
    principal: Principal
    target: str
    expires_at: int
    policy_digest: str
    grant_id: str


def sign_grant(signer: LocalSigner, principal: Principal, target: str, policy_digest: str, *, now: float | None = None) -> tuple[str, int]:
    now = int(now if now is not None else time.time())
    expires_at = min(principal.expires_at, now + GRANT_MAX_SECONDS)
    claims = {
        "iss": GRANT_ISSUER,
        "aud": GRANT_AUDIENCE,
        "sub": principal.subject,
        "usr": principal.username,
        "ide": principal.identity,
        "grp": sorted(principal.groups),
        "idp": principal.issuer,
        "idp_exp": principal.expires_at,
        "tgt": target,
        "pol": policy_digest,
        "iat": now,
        "exp": expires_at,
        "jti": uuid.uuid4().hex,
    }
    token = jwt.encode(claims, signer.private_key, algorithm="EdDSA", headers={"kid": signer.key_id})
    return token, expires_at


class GrantError(Exception):
    pass


def verify_grant(token: str, keys: dict[str, Ed25519PublicKey], *, target: str) -> Grant:
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.DecodeError:
        raise GrantError("malformed grant") from None
    key = keys.get(kid)
    if key is None:
        raise GrantError(f"grant signed by unknown key {kid!r}")
    try:
        claims = jwt.decode(token, key=key, algorithms=["EdDSA"], audience=GRANT_AUDIENCE, issuer=GRANT_ISSUER, leeway=5)
    except jwt.PyJWTError as exc:
        raise GrantError(f"grant rejected: {type(exc).__name__}") from None
    if claims.get("tgt") != target:
        raise GrantError("grant is for another target")
    principal = Principal(
        subject=claims["sub"],
        username=claims["usr"],
        groups=frozenset(claims.get("grp", [])),
        issuer=claims.get("idp", ""),
        expires_at=int(claims.get("idp_exp", claims["exp"])),
        identity=str(claims.get("ide") or ""),
    )
    return Grant(principal, claims["tgt"], int(claims["exp"]), claims.get("pol", ""), claims["jti"])


def public_jwks(signer: LocalSigner) -> dict:
    from cryptography.hazmat.primitives import serialization
    import base64

    raw = signer.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": signer.key_id, "alg": "EdDSA", "use": "sig"}]}


def keys_from_jwks(doc: dict) -> dict[str, Ed25519PublicKey]:
    import base64

    out = {}
    for jwk in doc.get("keys", []):
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
            raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
            key = Ed25519PublicKey.from_public_bytes(raw)
            out[jwk.get("kid") or key_id_of(key)] = key
    return out
