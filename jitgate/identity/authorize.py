"""The authorize decision: OIDC token + target -> signed grant, or a refusal that says why.

functions/authorize is a thin HTTP adapter over ``Authorizer.decide``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from jitgate.identity.grants import public_jwks, sign_grant
from jitgate.identity.oidc import OIDCVerifier, TokenError
from jitgate.keys import LocalSigner
from jitgate.logs import log
from jitgate.policy import PolicyHolder

logger = logging.getLogger("jitgate.authorize")


@dataclass
class Decision:
    status: int
    body: dict


class Authorizer:
    def __init__(self, policy: PolicyHolder, signer: LocalSigner):
        self.policy_holder = policy
        self.signer = signer
        self._verifiers: dict[str, OIDCVerifier] = {}

    @classmethod
    def from_env(cls) -> "Authorizer":
        from jitgate.settings import Settings

        settings = Settings.from_env()
        # JITGATE_GRANT_SIGNING_KEY: the PEM itself, as Cloud Functions inject a Secret Manager secret.
        key_pem = os.environ.get("JITGATE_GRANT_SIGNING_KEY") or os.environ.get("JITGATE_GRANT_KEY_PEM")
        signer = LocalSigner.from_pem(key_pem.encode()) if key_pem else LocalSigner(
            Path(os.environ.get("JITGATE_GRANT_KEY", settings.keys_dir / "grant-signing.pem"))
        )
        return cls(PolicyHolder(settings.policy_path, on_error=lambda e: log(logger, logging.ERROR, str(e))), signer)

    def _verifier(self) -> OIDCVerifier:
        identity = self.policy_holder.policy.identity
        self._check_pinned(identity)
        key = identity.model_dump_json()
        verifier = self._verifiers.get(key)
        if verifier is None:
            verifier = self._verifiers[key] = OIDCVerifier(identity)
        return verifier

    @staticmethod
    def _check_pinned(identity) -> None:
        """infra/ pins the trusted IdP (JITGATE_OIDC_*): a policy edit must not switch it."""
        pins = {
            "issuer": (os.environ.get("JITGATE_OIDC_ISSUER"), identity.issuer),
            "groups_claim": (os.environ.get("JITGATE_OIDC_GROUPS_CLAIM"), identity.groups_claim),
        }
        audience = os.environ.get("JITGATE_OIDC_AUDIENCE")
        if audience and audience not in identity.audiences:
            raise TokenError(f"the policy's identity.audience does not include {audience!r}, which this deployment pins")
        for name, (pinned, configured) in pins.items():
            if pinned and pinned != configured:
                raise TokenError(
                    f"the policy's identity.{name} is {configured!r} but this deployment pins {pinned!r}; "
                    "fix the policy file (or the deployment's JITGATE_OIDC_* settings)"
                )

    def jwks(self) -> dict:
        return public_jwks(self.signer)

    def decide(self, token: str, target_name: str, requested_user: str | None = None) -> Decision:
        policy = self.policy_holder.policy
        try:
            principal = self._verifier().verify(token)  # raises TokenError, also for a pin mismatch
        except TokenError as exc:
            log(logger, logging.INFO, "token refused", target=target_name, reason=str(exc))
            return Decision(401, {"allowed": False, "code": "invalid_token", "reason": str(exc)})
        reachable = sorted(policy.reachable(principal.username, principal.groups))
        target = policy.target(target_name)
        if target is None:
            return Decision(
                404,
                {
                    "allowed": False,
                    "code": "unknown_target",
                    "reason": f"there is no target named {target_name!r}; targets you may reach: "
                    + (", ".join(reachable) or "none"),
                },
            )
        if requested_user and requested_user.lower() not in {
            principal.username.lower(), principal.subject.lower(), str(principal.claims.get("email", "")).lower()
        }:
            return Decision(
                403,
                {
                    "allowed": False,
                    "code": "user_mismatch",
                    "reason": f"you connected as {requested_user!r} but your token is for {principal.username!r}; "
                    f"connect with user={principal.username}",
                },
            )
        if not target.allow.admits(principal.username, principal.groups):
            log(logger, logging.INFO, "access refused", target=target_name, user=principal.username)
            return Decision(
                403,
                {
                    "allowed": False,
                    "code": "forbidden",
                    "reason": f"{principal.username} (groups: {', '.join(sorted(principal.groups)) or 'none'}) "
                    f"may not reach {target_name!r}; ask for one of the groups: {', '.join(target.allow.groups) or 'none'}",
                },
            )
        grant, expires_at = sign_grant(self.signer, principal, target_name, policy.digest)
        log(logger, logging.INFO, "access granted", target=target_name, user=principal.username)
        return Decision(
            200,
            {"allowed": True, "grant": grant, "expires_at": expires_at, "principal": principal.to_dict()},
        )
