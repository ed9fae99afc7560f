"""The broker's side of the API server: the held credential and TLS trust for one target.

Credential forms (Target.credential):

- a reference (``env:``, ``file:``, ``gcp-secret:``) to a **bearer token** (a service account
  token of the cluster, or a static token for a test cluster);
- a reference to a **kubeconfig**: the token of its current context's user is used
  (``token`` or ``tokenFile``; client certificates and exec plugins are not used by the broker);
- a reference to a **Google service account key** (JSON with ``"type": "service_account"``): the
  broker mints short-lived Google access tokens from it (GKE accepts them as bearer tokens);
- **no credential** (GKE): Application Default Credentials, i.e. the broker VM's own service
  account, through google-auth. Grant that account ``roles/container.developer`` or an RBAC
  binding that allows exactly what the targets should allow.

Trust (Target.ca_certificate): the cluster CA as PEM text, a path to a PEM file, or a secret
reference; without it the system trust store is used (a GKE control plane needs its CA).
"""
from __future__ import annotations

import asyncio
import json
import ssl
import time
from dataclasses import dataclass, field

import yaml

GOOGLE_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
# Minted access tokens are refreshed this long before Google says they expire.
REFRESH_MARGIN = 300


class CredentialError(Exception):
    """The held credential cannot be loaded or used; the message is for the administrator."""


@dataclass
class HeldCredential:
    """Gives the Authorization header for the upstream; refreshes Google tokens when due."""

    kind: str  # token | google
    token: str = ""
    google: object | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def header(self) -> str:
        if self.kind == "token":
            return f"Bearer {self.token}"
        async with self._lock:
            creds = self.google
            expiry = getattr(creds, "expiry", None)
            due = not creds.token or (expiry is not None and expiry.timestamp() - time.time() < REFRESH_MARGIN)
            if due:
                await asyncio.to_thread(_refresh, creds)
            return f"Bearer {creds.token}"


def _refresh(creds) -> None:
    import google.auth.transport.requests

    try:
        creds.refresh(google.auth.transport.requests.Request())
    except Exception as exc:  # google.auth.exceptions.RefreshError and transport errors
        raise CredentialError(f"could not mint a Google access token ({type(exc).__name__})") from None


def parse_credential(raw: bytes | None) -> HeldCredential:
    """Turn the secret's bytes (or None: ADC) into a HeldCredential."""
    if raw is None:
        try:
            import google.auth
        except ImportError:  # pragma: no cover - google-auth is in requirements.txt
            raise CredentialError("no credential configured and google-auth is not installed") from None
        try:
            creds, _ = google.auth.default(scopes=list(GOOGLE_SCOPES))
        except Exception as exc:
            raise CredentialError(f"no credential configured and no Application Default Credentials ({type(exc).__name__})") from None
        return HeldCredential("google", google=creds)
    text = raw.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        try:
            info = json.loads(text)
        except ValueError:
            info = None
        if isinstance(info, dict) and info.get("type") == "service_account":
            from google.oauth2 import service_account

            creds = service_account.Credentials.from_service_account_info(info, scopes=list(GOOGLE_SCOPES))
            return HeldCredential("google", google=creds)
    if "clusters:" in text and "users:" in text:
        return HeldCredential("token", token=_kubeconfig_token(text))
    if not text or any(c.isspace() for c in text):
        raise CredentialError("the credential is neither a bearer token, a kubeconfig nor a service account key")
    return HeldCredential("token", token=text)


def _kubeconfig_token(text: str) -> str:
    try:
        config = yaml.safe_load(text)
        context_name = config.get("current-context")
        contexts = {c["name"]: c["context"] for c in config.get("contexts") or []}
        user_name = contexts[context_name]["user"] if context_name else (config["users"][0]["name"])
        user = {u["name"]: u.get("user") or {} for u in config["users"]}[user_name]
    except (yaml.YAMLError, KeyError, TypeError, IndexError, AttributeError) as exc:
        # Never the parser's message: it quotes the offending line, which may hold the token.
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise CredentialError(f"the kubeconfig credential cannot be read ({type(exc).__name__}"
                              + (f" near line {line + 1}" if line is not None else "") + ")") from None
    if user.get("token"):
        return str(user["token"])
    if user.get("tokenFile"):
        with open(user["tokenFile"]) as fh:
            return fh.read().strip()
    raise CredentialError("the kubeconfig credential's user has no token (client certificates and exec plugins "
                          "are not used by the broker; give it a service account token)")


def ssl_context(ca_pem: str | None) -> ssl.SSLContext:
    """Verify the API server against its cluster CA (or the system store without one)."""
    if ca_pem:
        return ssl.create_default_context(cadata=ca_pem)
    return ssl.create_default_context()


def ca_pem_of(value: str | None, secrets) -> str | None:
    """Target.ca_certificate as PEM text: given inline, as a secret reference, or as a file path."""
    if not value:
        return None
    if "-----BEGIN" in value:
        return value
    if value.startswith(("env:", "file:", "gcp-secret:")):
        return secrets.get(value).decode()
    with open(value) as fh:
        return fh.read()
