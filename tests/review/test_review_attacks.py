"""Attacks on the review console, each with the answer it must get (the console's corpus).

The app runs on the embedded backends with a sealed recording written the way finalize writes
it. A signed-in browser is simulated by writing the app's own signed session (the sign-in flow
itself is exercised in Chromium by test_console.py).
"""
from __future__ import annotations

import time

import pytest

from jitgate import approvals as ap
from jitgate.backends import open_backends
from jitgate.recording.finalize import MANIFEST, RECORDING
from jitgate.recording.seal import seal, summarize
from jitgate.settings import Settings

POLICY = """
version: 1
identity: {issuer: "http://127.0.0.1:1", audience: jitgate}
review: {groups: [security]}
targets:
  db:
    kind: postgres
    address: 127.0.0.1:5432
    database: db
    username: u
    credential: env:NOPE
    allow: {groups: [sre]}
    approvals: {approver_groups: [dba]}
"""
XSS = "SELECT '<script>alert(1)</script>' AS \"<img src=x onerror=alert(2)>\""
SESSION = "s0a1b2c3d4"


@pytest.fixture
def console(tmp_path):
    from jitgate.review.app import create_app

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    settings = Settings.from_env({"JITGATE_HOME": str(tmp_path), "JITGATE_POLICY": str(policy)})
    backends = open_backends(settings)
    now = time.time()
    events = [
        {"seq": 0, "ts": now, "type": "session.start", "session": SESSION, "target": "db", "kind": "postgres",
         "client": "127.0.0.1:1", "principal": {"username": "mallory@example.com", "groups": ["sre"]}},
        {"seq": 1, "ts": now + 0.1, "type": "statement", "id": 1, "sql": XSS, "decision": "allow", "classes": ["read"]},
        {"seq": 2, "ts": now + 0.2, "type": "result", "id": 1, "rows": 1, "duration_ms": 0.5, "tag": "SELECT 1",
         "error": None},
        {"seq": 3, "ts": now + 0.3, "type": "session.end", "reason": "client terminated the session"},
    ]
    recording, manifest = seal(SESSION, events, backends.signer)
    backends.recordings.put_object(SESSION, RECORDING, recording)
    backends.recordings.put_object(SESSION, MANIFEST, manifest)
    backends.index.put_session(summarize(SESSION, events))
    app = create_app(settings)
    app.config["TESTING"] = False
    return app, backends, policy


def signed_in(app, email: str, groups, exp_in: float = 600):
    client = app.test_client()
    with client.session_transaction() as s:
        s["viewer"] = {"email": email, "groups": list(groups), "via": "oidc", "exp": time.time() + exp_in}
        s["csrf"] = "t" * 43
    return client


def test_recording_content_is_escaped_never_markup(console):
    app, _, _ = console
    page = signed_in(app, "rita@example.com", ["security"]).get(f"/sessions/{SESSION}")
    assert page.status_code == 200
    assert b"<script>alert(1)" not in page.data and b"&lt;script&gt;alert(1)&lt;/script&gt;" in page.data
    assert b"<img src=x" not in page.data
    assert "script-src 'self' 'wasm-unsafe-eval'" in page.headers["Content-Security-Policy"]


@pytest.mark.parametrize("path", ["/sessions/..%2F..%2Fkeys%2Fmanifest-signing.pem", "/sessions/.hidden",
                                  "/sessions/%2E%2E", f"/sessions/{SESSION}/download/..%2Fmanifest.json",
                                  f"/sessions/{SESSION}/download/keys", f"/sessions/{SESSION}/terminal/0.cast"])
def test_paths_outside_a_sealed_session_are_not_served(console, path):
    app, _, _ = console
    response = signed_in(app, "rita@example.com", ["security"]).get(path)
    assert response.status_code == 404
    assert b"PRIVATE KEY" not in response.data


def test_a_cookie_signed_with_another_key_or_expired_is_not_a_sign_in(console, tmp_path):
    from jitgate.review.app import create_app

    app, _, policy = console
    other_home = tmp_path / "other"
    other = create_app(Settings.from_env({"JITGATE_HOME": str(other_home), "JITGATE_POLICY": str(policy)}))
    forged = signed_in(other, "rita@example.com", ["security"])
    cookie = forged.get_cookie("jitgate_review").value
    victim = app.test_client()
    victim.set_cookie("jitgate_review", cookie)
    response = victim.get("/sessions")
    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]
    expired = signed_in(app, "rita@example.com", ["security"], exp_in=-1).get("/sessions")
    assert expired.status_code == 302 and "/auth/login" in expired.headers["Location"]


def test_an_iap_header_does_not_sign_anyone_in_when_the_console_signs_in_itself(console):
    app, _, _ = console
    response = app.test_client().get("/sessions", headers={"x-goog-iap-jwt-assertion": "eyJhbGciOiJub25lIn0.e30."})
    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]


def test_removal_from_the_review_groups_applies_on_the_next_request(console):
    app, _, policy = console
    client = signed_in(app, "rita@example.com", ["security"])
    assert client.get("/sessions").status_code == 200
    policy.write_text(POLICY.replace("review: {groups: [security]}", "review: {groups: [auditors]}"))
    time.sleep(0.01)
    assert client.get("/sessions").status_code == 403


def test_approvers_who_are_not_reviewers_get_no_recording_by_any_route(console):
    app, _, _ = console
    client = signed_in(app, "erin@example.com", ["dba"])
    assert client.get("/approvals").status_code == 200
    for path in (f"/sessions/{SESSION}", f"/sessions/{SESSION}/download/recording.jsonl",
                 f"/sessions/{SESSION}/download/manifest.json", f"/sessions/{SESSION}/terminal/0.cast", "/sessions"):
        response = client.get(path)
        assert response.status_code == 403 and b"alert(1)" not in response.data, path
    assert client.post("/search", data={"text": "alert", "csrf": "t" * 43}).status_code == 403


def test_forged_and_cross_site_posts_are_refused(console):
    app, backends, _ = console
    record = ap.new_request(requester="alice@example.com", requester_groups=["sre"], target="db", session_id="x",
                            statement="DROP TABLE t", classes=["ddl"],
                            config=ap_config())
    backends.approvals.create_approval(record)
    url = f"/approvals/{record['approval_id']}/decide"
    client = signed_in(app, "erin@example.com", ["dba"])
    attempts = [
        ({"action": "approve"}, {}),  # no token
        ({"action": "approve", "csrf": "u" * 43}, {}),  # another token
        ({"action": "approve", "csrf": "t" * 43}, {"Origin": "http://evil.example"}),  # cross-site
        ({"action": "approve", "csrf": "t" * 43}, {"Origin": "null"}),  # sandboxed frame / data: URL
    ]
    for form, headers in attempts:
        assert client.post(url, data=form, headers=headers).status_code == 403, (form, headers)
    assert client.get(url).status_code == 405
    assert backends.approvals.get_approval(record["approval_id"])["status"] == ap.PENDING
    assert client.get("/search?text=DROP").status_code == 405, "search text never travels in a URL"


def test_the_requester_cannot_approve_their_own_request_from_the_console(console):
    app, backends, _ = console
    record = ap.new_request(requester="dana@example.com", requester_groups=["dba"], target="db", session_id="x",
                            statement="DROP TABLE mine", classes=["ddl"], config=ap_config())
    backends.approvals.create_approval(record)
    client = signed_in(app, "DANA@example.com", ["dba"])
    page = client.get("/approvals")
    assert b"You cannot decide this request" in page.data
    response = client.post(f"/approvals/{record['approval_id']}/decide", data={"action": "approve", "csrf": "t" * 43})
    assert response.status_code == 409 and b"your own request" in response.data
    assert backends.approvals.get_approval(record["approval_id"])["status"] == ap.PENDING


def ap_config():
    from jitgate.policy import ApprovalConfig

    return ApprovalConfig(approver_groups=["dba"])
