"""One identity per person where approvals apply: the verified email (or the policy's
identity_claim). A token without it can neither request nor decide an approval."""
from __future__ import annotations

import psycopg
import pytest

from jitgate.approvals_client import DecisionRefused, submit_decision
from jitgate.identity.oidc import canonical_identity
from jitgate.policy import IdentityConfig


def test_canonical_identity_needs_a_verified_email_or_the_configured_claim():
    email = IdentityConfig(issuer="https://idp", audience="a")
    assert canonical_identity({"email": " Dana@Example.com", "email_verified": True}, email) == "dana@example.com"
    assert canonical_identity({"email": "dana@example.com", "email_verified": False}, email) == ""
    assert canonical_identity({"email": "dana@example.com"}, email) == ""  # unverified is not an identity
    assert canonical_identity({"preferred_username": "dana"}, email) == ""
    upn = IdentityConfig(issuer="https://idp", audience="a", identity_claim="upn")
    assert canonical_identity({"upn": "Dana@corp.example"}, upn) == "dana@corp.example"


def test_token_without_email_cannot_request_an_approval(broker_dsn):
    # "dana" signs in with a username only (no email claim): the DDL needs an approval, which needs her identity.
    with psycopg.connect(broker_dsn("demo", user="dana", groups=("sre",)), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1  # reading needs no approval
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("ALTER TABLE orders ADD COLUMN never_without_identity int")
    assert "no 'email' claim with email_verified true" in str(refused.value)


def test_token_without_email_cannot_decide(stack, token):
    with pytest.raises(DecisionRefused) as refused:
        submit_decision("apr_0000000000000000", "approve", token("dana", ["dba"]), url=stack.env["JITGATE_APPROVALS_URL"])
    assert refused.value.status == 401 and "cannot decide approvals" in str(refused.value)


def test_approvals_service_answers_bad_requests_with_4xx(stack):
    import httpx

    url = stack.env["JITGATE_APPROVALS_URL"]
    assert httpx.post(url + "/slack", content=b"payload=%7B%7D", timeout=15).status_code == 404  # no Slack here
    assert httpx.post(url + "/decisions", json={"approval_id": "x", "action": "approve"}, timeout=15).status_code == 401
    bad = httpx.post(url + "/decisions", headers={"Authorization": "Bearer x.y.z"}, content=b"[1]", timeout=15)
    assert bad.status_code == 400
    assert httpx.post(url + "/decisions", headers={"Authorization": "Bearer x.y.z"}, content=b"x" * 70000,
                      timeout=15).status_code == 413
    keys = httpx.get(url + "/keys", timeout=15).json()["keys"]
    assert keys and keys[0]["crv"] == "Ed25519" and "d" not in keys[0]  # public half only


def test_cli_finds_the_approvals_service_of_the_local_stack(stack, token):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "JITGATE_APPROVALS_URL"}
    cli = subprocess.run([sys.executable, "-m", "jitgate.cli", "--home", str(stack.home), "approvals", "approve",
                          "apr_00000000deadbeef", "--token", token("dana@example.com", ["dba"])],
                         capture_output=True, text=True, timeout=60, env=env)
    assert cli.returncode == 4 and "no approval request 'apr_00000000deadbeef'" in cli.stderr, cli.stderr
