"""The approvals service: the one place where approval decisions are made and signed.

Slack clicks (a verified Slack request), the web console and the CLI (an OIDC token) all end
here (functions/approvals). The service authenticates the approver, checks their rights against
the current policy and the request's state in one store transaction, and signs the decision
with the approvals key. The broker releases a statement only on a decision that verifies with
the approvals public key (GET /keys), so writing "approved" into the store releases nothing.

The approvals key, like the grant key: JITGATE_APPROVALS_SIGNING_KEY (an Ed25519 PEM, injected
from Secret Manager in production), or JITGATE_APPROVALS_KMS_KEY (a Cloud KMS EC_SIGN_ED25519
key version), else <home>/keys/approvals-signing.pem (created on first use, local stack).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from jitgate import approvals as ap
from jitgate.logs import log

logger = logging.getLogger("jitgate.approvals_service")


class Refusal(Exception):
    """A decision that was not applied: ``status`` is the HTTP status, ``code`` stable, the message for people."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


def load_signer(settings, env: dict | None = None):
    from jitgate.keys import LocalSigner

    env = dict(os.environ if env is None else env)
    pem = env.get("JITGATE_APPROVALS_SIGNING_KEY")
    if pem:
        return LocalSigner.from_pem(pem.encode())
    if env.get("JITGATE_APPROVALS_KMS_KEY"):
        from jitgate.backends.gcp import KmsSigner

        return KmsSigner(env["JITGATE_APPROVALS_KMS_KEY"])
    return LocalSigner(Path(env.get("JITGATE_APPROVALS_KEY", settings.keys_dir / "approvals-signing.pem")))


class ApprovalsService:
    def __init__(self, settings, backends, signer, env: dict | None = None):
        from jitgate.keys import load_public_key
        from jitgate.policy import PolicyHolder

        self.settings = settings
        self.backends = backends
        self.signer = signer
        self.env = dict(os.environ if env is None else env)
        self.policy = PolicyHolder(settings.policy_path)
        self.public_keys = {signer.key_id: load_public_key(signer.public_key_pem())}
        self._verifiers: dict = {}
        from jitgate.directory import CloudIdentityGroups

        self.directory = CloudIdentityGroups.from_env(self.env)

    @classmethod
    def from_env(cls, env: dict | None = None) -> "ApprovalsService":
        from jitgate.backends import open_backends
        from jitgate.settings import Settings

        settings = Settings.from_env(env)
        return cls(settings, open_backends(settings), load_signer(settings, env), env)

    def jwks(self) -> dict:
        return ap.jwks(self.signer)

    # -- who is deciding ------------------------------------------------------------------------

    def _verifier(self):
        from jitgate.identity.authorize import Authorizer
        from jitgate.identity.oidc import OIDCVerifier

        identity = self.policy.policy.identity
        Authorizer._check_pinned(identity)  # infra/ pins the IdP (JITGATE_OIDC_*) here as for authorize
        # The review console forwards the approver's own ID token, issued to its client id by the
        # same identity provider: that audience is accepted too (the person is still the token's).
        review_client = self.env.get("JITGATE_REVIEW_CLIENT_ID") or "jitgate-review"
        if review_client not in identity.audiences:
            identity = identity.model_copy(update={"audience": [*identity.audiences, review_client]})
        key = identity.model_dump_json()
        if key not in self._verifiers:
            self._verifiers = {key: OIDCVerifier(identity)}
        return self._verifiers[key]

    def approver_from_token(self, token: str, via: str) -> ap.Approver:
        """An OIDC ID token -> the approver. Raises Refusal(401)."""
        from jitgate.identity.oidc import TokenError

        try:
            return ap.approver_from_token(token, self.policy.policy.identity, via=via, store=self.backends.approvals,
                                          verifier=self._verifier())  # raises TokenError for a pin mismatch too
        except TokenError as exc:
            raise Refusal(401, "token_refused", f"token refused: {exc}") from None

    # -- deciding ---------------------------------------------------------------------------------

    def decide(self, approver: ap.Approver, approval_id: str, action: str, reason: str = "") -> dict:
        """Check and apply one decision, signed. Raises ap.DecisionError, or Refusal for bad input."""
        if action not in ("approve", "deny"):
            raise Refusal(400, "bad_request", f"action must be approve or deny, not {action!r}")
        if action == "deny" and not reason.strip():
            raise Refusal(400, "bad_request", "a denial needs a reason (the requester sees it)")
        record = self.backends.approvals.get_approval(approval_id)
        if record is None or not ap.is_request(record):
            raise ap.DecisionError("not_found", f"no approval request {approval_id!r}")
        target = self.policy.policy.targets.get(record.get("target", ""))
        if target is None:
            raise ap.DecisionError("not_approver", f"target {record.get('target')!r} is no longer in the policy; "
                                   "nobody can approve requests for it", record)
        approver = self.fresh_rights(approver, target.approvals)
        result = ap.apply_decision(self.backends, approval_id, approver, action, reason=reason, signer=self.signer,
                                   config=target.approvals, public_keys=self.public_keys)
        log(logger, logging.INFO, "decision signed", approval_id=approval_id, approver=approver.email, via=approver.via,
            action=action, status=result["status"])
        self._refresh_slack(result)
        return result

    def fresh_rights(self, approver: ap.Approver, config) -> ap.Approver:
        """The approver's groups as of now: the directory (transitive membership of each approver
        group), else the OIDC token's groups, else (Slack) the last sign-in if fresh enough."""
        from dataclasses import replace

        from jitgate.directory import DirectoryUnavailable

        fallback_note = ""
        if self.directory is not None:
            try:
                groups = self.directory.member_groups(approver.email, config.approver_groups)
                return replace(approver, groups=groups, groups_source="the directory, checked now")
            except DirectoryUnavailable as exc:
                log(logger, logging.WARNING, "directory unavailable; falling back", error=str(exc))
                fallback_note = f" (the directory did not answer: {exc})"
        if approver.via != "slack":
            return replace(approver, groups_source="your sign-in token" + fallback_note)
        groups, source = ap.fallback_groups(self.backends.approvals, approver.email, env=self.env)
        return replace(approver, groups=groups, groups_source=source + fallback_note)

    def _refresh_slack(self, record: dict) -> None:
        try:
            from jitgate.slack.messages import refresh_if_configured

            refresh_if_configured(self.backends.approvals, record)
        except Exception as exc:  # noqa: BLE001 - the decision stands; expire_approvals reconciles the message
            log(logger, logging.WARNING, "Slack message not updated", approval_id=record["approval_id"], error=str(exc))

    def decide_with_token(self, token: str, approval_id: str, action: str, reason: str = "", via: str = "cli") -> tuple[int, dict]:
        """The HTTP answer for POST /decisions: (status, body)."""
        try:
            approver = self.approver_from_token(token, via if via in ("cli", "console") else "cli")
            record = self.decide(approver, approval_id, action, reason)
        except Refusal as exc:
            return exc.status, {"ok": False, "code": exc.code, "error": str(exc)}
        except ap.DecisionError as exc:
            return (404 if exc.code == "not_found" else 409), {"ok": False, "code": exc.code, "error": str(exc)}
        return 200, {"ok": True, "approval_id": approval_id, "status": record["status"],
                     "summary": ap.describe_decision(record), "covers": ap.coverage(record),
                     "approvals": len(record["approvals"]),
                     "required": record["required"]}
