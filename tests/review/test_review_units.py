"""The review console's pieces without a browser: IAP's signed header, who gets in, filters, the vendored player."""
from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from jitgate import approvals as ap
from jitgate.backends import open_backends
from jitgate.policy import parse_policy
from jitgate.review.auth import IAP_HEADER, IAP_ISSUER, IapVerifier, SignInError, access_for
from jitgate.review.sessions import Filters
from jitgate.settings import Settings

VENDOR = Path(__file__).resolve().parents[2] / "jitgate/review/static/vendor/asciinema-player"
AUDIENCE = "/projects/123456/global/backendServices/987"
POLICY = """
version: 1
identity: {issuer: "http://127.0.0.1:1", audience: jitgate}
review: {groups: [security], users: [solo@example.com]}
targets:
  db:
    kind: postgres
    address: 127.0.0.1:5432
    database: db
    username: u
    credential: env:NOPE
    allow: {groups: [sre]}
    approvals: {approver_groups: [dba], approver_users: [lead@example.com]}
"""


def test_vendored_player_is_the_recorded_npm_release():
    lines = (VENDOR / "VERSION").read_text().split("\n")
    assert lines[0].startswith("version 3.")
    recorded = dict(reversed(line.split()) for line in lines[1:] if line.strip())
    assert set(recorded) == {"asciinema-player.min.js", "asciinema-player.css", "LICENSE"}
    for name, digest in recorded.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, f"{name} differs from the npm release"
    assert "Apache License" in (VENDOR / "LICENSE").read_text()


def test_who_gets_in():
    policy = parse_policy(POLICY)
    assert access_for(policy, "rita@example.com", frozenset({"security"})).reviewer
    assert access_for(policy, "SOLO@example.com", frozenset()).reviewer
    erin = access_for(policy, "erin@example.com", frozenset({"dba"}))
    assert erin.approver and not erin.reviewer
    assert access_for(policy, "lead@example.com", frozenset()).approver
    assert not access_for(policy, "bob@example.com", frozenset({"analysts", "sre"})).any


def test_filters_report_bad_dates_and_keep_paging_sane():
    f = Filters.from_args({"since": "yesterday", "until": "2026-12-01", "page": "x", "held": "1"})
    since, until = f.window()
    assert since is None and until == 1796083200.0 + 86400  # 2026-12-01T00:00Z, and the whole day
    assert any("from: 'yesterday' is not a date" in p for p in f.problems)
    assert any("page: not a number" in p for p in f.problems) and f.page == 1
    assert f.query() == {"since": "yesterday", "until": "2026-12-01", "held": "1"}
    assert Filters.from_args({"page": "99999999"}).page == 10_000


# -- IAP ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def iap_keys():
    """A stand-in for IAP's key endpoint on loopback, with a key of our own (IAP is SaaS)."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="iap-test-1", alg="ES256", use="sig")
    body = json.dumps({"keys": [jwk]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield key, f"http://127.0.0.1:{server.server_port}/jwk"
    server.shutdown()


def _assertion(key, *, email="rita@example.com", aud=AUDIENCE, iss=IAP_ISSUER, exp=300, kid="iap-test-1", alg="ES256"):
    now = int(time.time())
    claims = {"iss": iss, "aud": aud, "sub": "accounts.google.com:1234", "email": email, "iat": now, "exp": now + exp}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def test_iap_assertion_is_verified(iap_keys):
    key, url = iap_keys
    verifier = IapVerifier(AUDIENCE, url)
    assert verifier.verify(_assertion(key)) == ("rita@example.com", "accounts.google.com:1234")
    other = ec.generate_private_key(ec.SECP256R1())
    attacks = {
        "no header (a request around the proxy)": None,
        "another audience (a token for another backend)": _assertion(key, aud="/projects/1/global/backendServices/2"),
        "another issuer": _assertion(key, iss="https://accounts.google.com"),
        "expired": _assertion(key, exp=-120),
        "signed by another key under IAP's kid": _assertion(other, kid="iap-test-1"),
        "unknown kid": _assertion(other, kid="made-up"),
        "HS256 with the public key as secret": jwt.encode({"email": "x@example.com"}, "s" * 32, algorithm="HS256",
                                                           headers={"kid": "iap-test-1"}),
    }
    for what, token in attacks.items():
        with pytest.raises(SignInError):
            verifier.verify(token)
            pytest.fail(f"accepted: {what}")
    with pytest.raises(ValueError, match="JITGATE_REVIEW_IAP_AUDIENCE is required"):
        IapVerifier("", url)


def test_app_behind_iap(iap_keys, tmp_path):
    from jitgate.review.app import create_app

    key, url = iap_keys
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    settings = Settings.from_env({"JITGATE_HOME": str(tmp_path), "JITGATE_POLICY": str(policy),
                                  "JITGATE_REVIEW_AUTH": "iap", "JITGATE_REVIEW_IAP_AUDIENCE": AUDIENCE,
                                  "JITGATE_REVIEW_IAP_JWKS_URL": url})
    # IAP names the person; the groups are the ones they last proved to the gateway
    ap.remember_principal(open_backends(settings).approvals, "rita@example.com", ["security"])
    client = create_app(settings).test_client()
    assert client.get("/sessions").status_code == 401
    assert client.get("/sessions", headers={IAP_HEADER: _assertion(key, aud="/projects/1/apps/x")}).status_code == 401
    ok = client.get("/sessions", headers={IAP_HEADER: _assertion(key)})
    assert ok.status_code == 200 and b"Sealed sessions" in ok.data
    assert "frame-ancestors 'none'" in ok.headers["Content-Security-Policy"]
    refused = client.get("/sessions", headers={IAP_HEADER: _assertion(key, email="bob@example.com")})
    assert refused.status_code == 403 and b"Access refused" in refused.data


def test_the_function_serves_https_urls_and_secure_cookies(tmp_path, monkeypatch):
    """Behind Google's front end the app sees plain http: its sign-in redirect URI must still be https."""
    import importlib.util

    from flask import Flask

    class Discovery(BaseHTTPRequestHandler):
        def do_GET(self):
            issuer = f"http://127.0.0.1:{self.server.server_port}"
            body = json.dumps({"issuer": issuer, "authorization_endpoint": issuer + "/auth",
                               "token_endpoint": issuer + "/token", "jwks_uri": issuer + "/jwks"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    idp = ThreadingHTTPServer(("127.0.0.1", 0), Discovery)
    threading.Thread(target=idp.serve_forever, daemon=True).start()
    try:
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY.replace("http://127.0.0.1:1", f"http://127.0.0.1:{idp.server_port}"))
        for key, value in {"JITGATE_HOME": str(tmp_path), "JITGATE_POLICY": str(policy)}.items():
            monkeypatch.setenv(key, value)
        main = Path(__file__).resolve().parents[2] / "functions/review/main.py"
        spec = importlib.util.spec_from_file_location("review_function_main", main)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        frontend = Flask("frontend")  # what functions-framework hands the entry point: a flask.Request
        with frontend.test_request_context("/auth/login", base_url="http://review-abc.a.run.app"):
            from flask import request

            response = module.review(request)
        assert response.status_code == 302
        location = response.headers["Location"]
        assert "redirect_uri=https%3A%2F%2Freview-abc.a.run.app%2Fauth%2Fcallback" in location, location
        assert "Secure" in response.headers["Set-Cookie"] and "HttpOnly" in response.headers["Set-Cookie"]
    finally:
        idp.shutdown()


def test_a_session_page_reads_the_same_few_objects_whatever_the_ledger_size(iap_keys, tmp_path):
    """The session page verified a session by reading every ledger entry (one object per sealed
    session, per page view). It now follows the session's marker to its entry, which the seal key
    signed; a marker that someone wrote for a session sealed outside finalize still
    shows as not in the ledger."""
    from jitgate.recording.finalize import MANIFEST, RECORDING, finalize_session
    from jitgate.recording.ledger import MARKER
    from jitgate.recording.seal import seal
    from jitgate.review.app import create_app
    from tests.recording.helpers import EVENTS, StoreCalls, store_and_close

    key, url = iap_keys
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    settings = Settings.from_env({"JITGATE_HOME": str(tmp_path), "JITGATE_POLICY": str(policy),
                                  "JITGATE_REVIEW_AUTH": "iap", "JITGATE_REVIEW_IAP_AUDIENCE": AUDIENCE,
                                  "JITGATE_REVIEW_IAP_JWKS_URL": url})
    sealer = open_backends(settings)
    ap.remember_principal(sealer.approvals, "rita@example.com", ["security"])

    def seal_all(names):
        for sid in names:
            assert finalize_session(sealer, store_and_close(sealer, sid)).status == "sealed"

    seal_all(["p0", "p1", "p2"])
    app = create_app(settings)
    calls = StoreCalls(app.extensions["jitgate_review"].backends.recordings)
    client = app.test_client()
    headers = {IAP_HEADER: _assertion(key)}

    def page(session_id):
        calls.take()
        response = client.get(f"/sessions/{session_id}", headers=headers)
        assert response.status_code == 200
        return response.get_data(as_text=True), calls.take()

    text, small = page("p1")
    assert "Verified" in text and "in the seal ledger (entry 1)" in text
    seal_all([f"q{i}" for i in range(30)])
    text, large = page("p1")
    assert "in the seal ledger (entry 1)" in text and large == small, (small, large)
    assert large["get_ledger"] == 1 and large["list_ledger"] == 0, large  # its entry, signed by the seal key
    # Sealed with the seal key outside finalize, plus a marker naming another session's entry.
    recording, manifest = seal("f1", EVENTS, sealer.signer)
    for name, data in ((RECORDING, recording), (MANIFEST, manifest), (MARKER, b'{"entry": 1}\n')):
        sealer.recordings.put_object("f1", name, data)
    text, _ = page("f1")
    assert "Verification failed (tampered)" in text and "not in the seal ledger" in text, text
