"""Sign-in to the review console, and what a signed-in person may see.

Two ways in, chosen by JITGATE_REVIEW_AUTH:

- ``oidc`` (default): the authorization code flow with PKCE (RFC 7636, S256) against the
  policy's issuer (or JITGATE_REVIEW_OIDC_ISSUER) for the client JITGATE_REVIEW_CLIENT_ID
  (default ``jitgate-review``; JITGATE_REVIEW_CLIENT_SECRET when the IdP wants a confidential
  client). The ID token is verified like every other (OIDCVerifier: issuer, JWKS, algorithm
  allow-list), with the console's client id as audience, and its nonce must be the one we sent.
- ``iap``: Identity-Aware Proxy in front of the console. Every request carries IAP's signed
  header ``x-goog-iap-jwt-assertion``; it is verified (ES256 with IAP's published keys, issuer
  https://cloud.google.com/iap, audience JITGATE_REVIEW_IAP_AUDIENCE) on every request, so a
  request that reaches the console around the proxy gets nothing. IAP names the person, not
  their groups: groups come from the person's last verified sign-in to the gateway or the
  approver directory (jitgate.approvals.known_groups).

Who gets in (read from the policy on every request, so a change applies at once):
reviewers (``review: {groups, users}``) see sessions and approvals; approvers of any target
see approvals; nobody else gets past the refusal page.
"""
from __future__ import annotations

import base64
import hashlib
import secrets
import urllib.parse
from dataclasses import dataclass

import httpx
import jwt

from jitgate import approvals as ap
from jitgate.identity.oidc import OIDCVerifier, Principal, TokenError
from jitgate.policy import IdentityConfig, Policy

IAP_ISSUER = "https://cloud.google.com/iap"
IAP_JWKS_URL = "https://www.gstatic.com/iap/verify/public_key-jwk"
IAP_HEADER = "x-goog-iap-jwt-assertion"


class SignInError(Exception):
    """Sign-in did not complete; the message is safe to show (never a token or a code)."""


@dataclass(frozen=True)
class Access:
    reviewer: bool
    approver: bool

    @property
    def any(self) -> bool:
        return self.reviewer or self.approver


def access_for(policy: Policy, email: str, groups: frozenset[str]) -> Access:
    email = email.lower()
    approver = any(
        email in {u.lower() for u in t.approvals.approver_users} or groups.intersection(t.approvals.approver_groups)
        for t in policy.targets.values()
    )
    return Access(reviewer=policy.review.admits(email, groups), approver=approver)


def approver_of(email: str, groups, via: str = "console") -> ap.Approver:
    return ap.Approver(email=email.lower(), groups=frozenset(groups), via=via)


# -- OIDC authorization code + PKCE ----------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class PendingLogin:
    """What the browser keeps (in the signed session cookie) between /auth/login and the callback."""

    state: str
    nonce: str
    verifier: str
    redirect_uri: str
    next: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class OidcLogin:
    def __init__(self, identity: IdentityConfig, client_id: str, client_secret: str = "", *,
                 http: httpx.Client | None = None):
        self.identity = identity.model_copy(update={"audience": client_id})
        self.client_id = client_id
        self.client_secret = client_secret
        self.http = http or httpx.Client(timeout=10.0)
        self.verifier = OIDCVerifier(self.identity, http=self.http)

    def _discovery(self) -> dict:
        return self.verifier._discover()  # cached; issuer checked against the policy

    def start(self, redirect_uri: str, next_path: str) -> tuple[str, PendingLogin]:
        try:
            endpoint = self._discovery()["authorization_endpoint"]
        except (TokenError, KeyError) as exc:
            raise SignInError(f"the identity provider cannot be used for sign-in: {exc}") from None
        pending = PendingLogin(state=secrets.token_urlsafe(24), nonce=secrets.token_urlsafe(24),
                               verifier=secrets.token_urlsafe(48), redirect_uri=redirect_uri, next=next_path)
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": "openid email groups",
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": _b64url(hashlib.sha256(pending.verifier.encode()).digest()),
            "code_challenge_method": "S256",
            "prompt": "login",  # a reviewer signs in on purpose, not by a lingering IdP session
        }
        return f"{endpoint}?{urllib.parse.urlencode(query)}", pending

    def finish(self, pending: PendingLogin, params: dict) -> tuple[Principal, str]:
        """(who signed in, their ID token). The token is kept (HttpOnly session cookie) so decisions
        can be sent on to a service that authenticates the approver itself; its audience is the
        console's client id, so the broker does not accept it."""
        if params.get("error"):
            raise SignInError(f"the identity provider refused the sign-in: {params.get('error')}"
                              f" {params.get('error_description', '')}".rstrip())
        if not params.get("state") or not secrets.compare_digest(params["state"], pending.state):
            raise SignInError("the sign-in answer does not belong to this browser (state mismatch); start again")
        code = params.get("code") or ""
        if not code:
            raise SignInError("the sign-in answer carries no authorization code; start again")
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": pending.redirect_uri,
                "client_id": self.client_id, "code_verifier": pending.verifier}
        if self.client_secret:
            form["client_secret"] = self.client_secret
        try:
            response = self.http.post(self._discovery()["token_endpoint"], data=form)
        except httpx.HTTPError as exc:
            raise SignInError(f"cannot reach the identity provider's token endpoint ({type(exc).__name__})") from None
        if response.status_code != 200:
            try:
                detail = response.json().get("error", "")
            except ValueError:
                detail = ""
            raise SignInError(f"the identity provider refused the authorization code ({response.status_code} {detail})".strip())
        id_token = response.json().get("id_token") or ""
        try:
            principal = self.verifier.verify(id_token)
        except TokenError as exc:
            raise SignInError(f"the ID token was refused: {exc}") from None
        if not secrets.compare_digest(str(principal.claims.get("nonce", "")), pending.nonce):
            raise SignInError("the ID token was minted for another sign-in (nonce mismatch)")
        return principal, id_token


# -- Identity-Aware Proxy ----------------------------------------------------------------------


class IapVerifier:
    """IAP's signed header: ES256 JWT, issuer IAP, audience the backend service / Cloud Run service."""

    def __init__(self, audience: str, jwks_url: str = IAP_JWKS_URL):
        if not audience:
            raise ValueError("JITGATE_REVIEW_IAP_AUDIENCE is required with JITGATE_REVIEW_AUTH=iap "
                             "(/projects/NUMBER/global/backendServices/ID or /projects/NUMBER/apps/PROJECT)")
        self.audience = audience
        self.jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=600)

    def verify(self, assertion: str | None) -> tuple[str, str]:
        """(email, subject) of the person IAP let through; raises SignInError."""
        if not assertion:
            raise SignInError("no IAP assertion on the request: the console is reachable only through Identity-Aware Proxy")
        try:
            key = self.jwks.get_signing_key_from_jwt(assertion)
            claims = jwt.decode(assertion, key.key, algorithms=["ES256"], audience=self.audience, issuer=IAP_ISSUER,
                                leeway=30, options={"require": ["exp", "iat", "aud", "iss", "sub", "email"]})
        except jwt.PyJWKClientError as exc:
            raise SignInError(f"IAP's signing key is unknown or unreachable ({exc})") from None
        except jwt.PyJWTError as exc:
            raise SignInError(f"the IAP assertion was refused ({type(exc).__name__})") from None
        return str(claims["email"]).lower(), str(claims["sub"])
