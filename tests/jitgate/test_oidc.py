"""OIDC validation against a real provider (panva/oidc-provider): discovery, JWKS caching and rotation."""
from __future__ import annotations

import jwt
import pytest

from jitgate.devstack import DevIssuer, dev_token
from jitgate.identity.oidc import OIDCVerifier, TokenError
from jitgate.policy import IdentityConfig


@pytest.fixture(scope="module")
def issuer(tmp_path_factory):
    started = DevIssuer.start(tmp_path_factory.mktemp("issuer"))
    yield started
    started.proc.stop()


def _config(issuer, **kw) -> IdentityConfig:
    return IdentityConfig(issuer=issuer.issuer, audience=["jitgate-dev", "jitgate-dev-es256"], **kw)


def test_rs256_and_es256_tokens_verify(issuer):
    verifier = OIDCVerifier(_config(issuer))
    rs = dev_token(issuer.issuer, "alice@example.com", ["sre", "dba"])
    es = dev_token(issuer.issuer, "bob@example.com", ["sre"], audience="jitgate-dev-es256")
    assert jwt.get_unverified_header(rs)["alg"] == "RS256"
    assert jwt.get_unverified_header(es)["alg"] == "ES256"
    alice = verifier.verify(rs)
    assert alice.username == "alice@example.com" and alice.groups == frozenset({"sre", "dba"})
    assert verifier.verify(es).username == "bob@example.com"
    assert verifier.jwks_fetches == 1  # cached


def test_custom_groups_claim(issuer):
    verifier = OIDCVerifier(_config(issuer, groups_claim="roles"))
    principal = verifier.verify(dev_token(issuer.issuer, "alice@example.com", ["sre"]))
    assert principal.groups == frozenset()  # the token has no 'roles' claim: no groups, not the wrong ones


def test_key_rotation_triggers_one_refetch(issuer):
    verifier = OIDCVerifier(_config(issuer))
    verifier.verify(dev_token(issuer.issuer, "alice@example.com", ["sre"]))
    before = verifier.jwks_fetches
    issuer.rotate_keys()
    fresh = dev_token(issuer.issuer, "alice@example.com", ["sre"])
    assert verifier.verify(fresh).username == "alice@example.com"
    assert verifier.jwks_fetches == before + 1


def test_unknown_kids_are_rate_limited(issuer):
    verifier = OIDCVerifier(_config(issuer))
    good = dev_token(issuer.issuer, "alice@example.com", ["sre"])
    verifier.verify(good)
    header, payload, signature = good.split(".")
    import base64, json

    forged_header = base64.urlsafe_b64encode(json.dumps({"alg": "RS256", "kid": "made-up"}).encode()).rstrip(b"=").decode()
    fetches = verifier.jwks_fetches
    for _ in range(5):
        with pytest.raises(TokenError, match="does not publish"):
            verifier.verify(f"{forged_header}.{payload}.{signature}")
    assert verifier.jwks_fetches == fetches + 1


def test_issuer_mismatch_in_discovery(issuer):
    config = IdentityConfig(issuer=issuer.issuer + "/", audience="jitgate-dev")
    with pytest.raises(TokenError, match="discovery document names issuer"):
        OIDCVerifier(config).verify(dev_token(issuer.issuer, "alice@example.com"))


def test_unreachable_issuer_is_a_clear_error():
    config = IdentityConfig(issuer="http://127.0.0.1:9", audience="jitgate-dev")
    token = jwt.encode({"sub": "x"}, "k" * 32, algorithm="HS256")
    rs_like = token.replace(token.split(".")[0], jwt.utils.base64url_encode(b'{"alg":"RS256","kid":"k"}').decode())
    with pytest.raises(TokenError, match="cannot reach the identity provider"):
        OIDCVerifier(config).verify(rs_like)
