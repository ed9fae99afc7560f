"""infra/ pins the trusted IdP for functions/authorize; a policy that names another one is refused."""
from __future__ import annotations

from jitgate.identity.authorize import Authorizer
from jitgate.keys import LocalSigner
from jitgate.policy import PolicyHolder
from tests.jitgate.test_policy import BASE


def _authorizer(tmp_path) -> Authorizer:
    path = tmp_path / "policy.yaml"
    path.write_text(BASE)
    return Authorizer(PolicyHolder(path), LocalSigner(tmp_path / "grant.pem"))


def test_pinned_issuer_mismatch_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("JITGATE_OIDC_ISSUER", "https://login.example.org")
    decision = _authorizer(tmp_path).decide("a.b.c", "prod-db")
    assert decision.status == 401
    assert "pins 'https://login.example.org'" in decision.body["reason"]


def test_pinned_audience_must_be_accepted(tmp_path, monkeypatch):
    monkeypatch.setenv("JITGATE_OIDC_AUDIENCE", "other-client")
    decision = _authorizer(tmp_path).decide("a.b.c", "prod-db")
    assert decision.status == 401 and "audience does not include 'other-client'" in decision.body["reason"]


def test_matching_pins_reach_token_validation(tmp_path, monkeypatch):
    monkeypatch.setenv("JITGATE_OIDC_ISSUER", "https://idp.example.com")
    monkeypatch.setenv("JITGATE_OIDC_AUDIENCE", "jitgate")
    decision = _authorizer(tmp_path).decide("not-a-jwt", "prod-db")
    assert decision.status == 401 and "must be an OIDC ID token" in decision.body["reason"]
