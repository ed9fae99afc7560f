"""The review console in headless Chromium against the local stack (both backend sets).

A reviewer signs in through the dev issuer, approves a held DROP from the page (which releases
it in the waiting psql session), finds that session with the filters, opens it and sees the
approval and the verified badge; a changed byte in the recording turns the badge red; people
outside the review groups are refused; forged or cross-site posts are refused; every look at
a recording is in the audit trail.
"""
from __future__ import annotations

import re
import secrets
import threading
import time

import httpx
import psycopg
import pytest

from jitgate import approvals as ap
from jitgate.backends import open_backends
from jitgate.review.audit import AuditTrail
from jitgate.settings import Settings
from tests.conftest import wait_sealed
from tests.review.signin import client_sign_in, csrf_of

REVIEWER = ("rita@example.com", ("security", "dba"))  # reviews recordings and approves for demo
APPROVER_ONLY = ("erin@example.com", ("dba",))
OUTSIDER = ("bob@example.com", ("analysts",))


@pytest.fixture(scope="module")
def backends(stack):
    b = open_backends(Settings.from_env(stack.env))
    yield b
    b.close()


def _pending_for(backends, sql: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in backends.approvals.list_approvals(status=ap.PENDING, limit=200):
            if record.get("statement") == sql:
                return record
        time.sleep(0.1)
    raise AssertionError(f"no pending approval for {sql!r} within {timeout}s")


@pytest.fixture(scope="module")
def held_drop(stack, broker_dsn, backends, chromium, tmp_path_factory):
    """alice's DROP TABLE is held; the reviewer approves it from the approvals page; psql gets its answer."""
    from tests.review.signin import SignedIn

    table = f"review_drop_{secrets.token_hex(4)}"
    with psycopg.connect(broker_dsn(user="dora@example.com", groups=("dba",)), autocommit=True) as admin:
        admin.execute(f"CREATE TABLE {table} (id int)")  # dba: ddl allowed without approval
    sql = f"DROP TABLE {table}"
    outcome: dict = {}
    conn = psycopg.connect(broker_dsn(), autocommit=True)

    def run():
        try:
            outcome["status"] = conn.execute(sql).statusmessage
        except Exception as exc:  # noqa: BLE001 - reported by the assertions below
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    record = _pending_for(backends, sql)
    assert worker.is_alive(), "the DROP must wait for a decision"

    reviewer = SignedIn(chromium, stack.console_url, *REVIEWER, tmp_path_factory.mktemp("held-drop-shots"))
    page = reviewer.page
    reviewer.goto("/approvals")
    article = page.get_by_role("article", name=re.compile(record["approval_id"]))
    assert sql in article.inner_text()
    reviewer.shot("approvals")
    with page.expect_navigation():
        article.get_by_role("button", name=f"Approve {record['approval_id']}").click()
    assert "approved by rita@example.com" in page.get_by_role("status").inner_text()
    worker.join(20)
    assert outcome.get("status") == "DROP TABLE", outcome
    session_id = backends.approvals.get_approval(record["approval_id"])["session_id"]
    conn.close()
    wait_sealed(stack, session_id, timeout=30)
    yield {"session_id": session_id, "approval_id": record["approval_id"], "sql": sql, "reviewer": reviewer}
    reviewer.close()


def test_approving_from_the_page_releases_the_held_statement(held_drop, backends):
    record = backends.approvals.get_approval(held_drop["approval_id"])
    assert record["status"] in (ap.APPROVED, ap.CONSUMED) and record["uses"] == 1
    assert record["approvals"][0]["email"] == "rita@example.com" and record["approvals"][0]["via"] == "console"


def test_reviewer_finds_the_session_and_sees_approval_and_verified_badge(held_drop, stack, backends):
    reviewer = held_drop["reviewer"]
    page = reviewer.page
    reviewer.goto("/sessions")
    page.get_by_label("Person").fill("alice@example.com")
    page.get_by_label("held statements / approvals").check()
    with page.expect_navigation():
        page.get_by_role("button", name="Apply filters").click()
    assert "held=1" in page.url and "alice%40example.com" in page.url
    rows = page.locator("table.data tbody tr")
    assert rows.count() >= 1
    for text in rows.all_inner_texts():
        assert "alice@example.com" in text
    reviewer.shot("sessions")
    with page.expect_navigation():
        page.locator(f'a[href="/sessions/{held_drop["session_id"]}"]').click()

    badge = page.locator("#verification")
    assert "badge ok" in badge.get_attribute("class") and "Verified" in badge.inner_text()
    assert "in the seal ledger (entry" in badge.inner_text()  # the same verify_session as `jitgate verify`
    approval = page.get_by_role("article", name=f"Approval {held_drop['approval_id']}")
    text = approval.inner_text()
    assert held_drop["sql"] in text and "rita@example.com" in text and "via console" in text and "approved" in text
    timeline = page.locator("table.timeline").inner_text()
    assert held_drop["sql"] in timeline and "approval.requested" in timeline and "approval.decided" in timeline
    reviewer.shot("session")
    assert reviewer.csp_violations() == []

    # that look is in the audit trail, and the next view of the page lists it
    views = AuditTrail(Settings.from_env(stack.env)).views(held_drop["session_id"])
    assert any(v["who"] == "rita@example.com" and v["action"] == "view" for v in views)
    reviewer.goto(f"/sessions/{held_drop['session_id']}")
    assert "rita@example.com · view" in page.locator("ul.views").inner_text()


def test_statement_search_is_a_post_within_a_time_range(held_drop):
    reviewer = held_drop["reviewer"]
    page = reviewer.page
    reviewer.goto("/sessions")
    today = time.strftime("%Y-%m-%d", time.gmtime())
    page.get_by_label("From (UTC)").fill(today)
    with page.expect_navigation():
        page.get_by_role("button", name="Apply filters").click()
    page.get_by_label("Text (within the time range above)").fill(held_drop["sql"].split()[-1])
    with page.expect_navigation():
        page.get_by_role("button", name="Search").click()
    assert page.url.endswith("/search"), "the searched text never goes into a URL"
    hits = page.get_by_role("region", name=re.compile(r"\d+ match")).inner_text()
    assert held_drop["sql"] in hits
    reviewer.shot("sessions-search")
    # outside the time range (applied with the filters): nothing
    page.get_by_label("From (UTC)").fill("2001-01-01")
    page.get_by_label("To (UTC)").fill("2001-01-02")
    with page.expect_navigation():
        page.get_by_role("button", name="Apply filters").click()
    page.get_by_label("Text (within the time range above)").fill(held_drop["sql"].split()[-1])
    with page.expect_navigation():
        page.get_by_role("button", name="Search").click()
    assert "0 matches" in page.locator("#hits-h").inner_text()


def test_a_changed_byte_in_the_recording_turns_the_badge_red(stack, broker_dsn, sign_in, backends):
    marker = f"tamper_{secrets.token_hex(4)}"
    with psycopg.connect(broker_dsn(user="tess@example.com"), autocommit=True) as conn:
        session_id = conn.info.parameter_status("jitgate_session_id")
        conn.execute(f"SELECT '{marker}' AS note")
    assert session_id, "the broker did not name the session (ParameterStatus jitgate_session_id)"
    sealed = None
    deadline = time.monotonic() + 60
    while not sealed and time.monotonic() < deadline:
        sealed = backends.index.get_session(session_id)
        time.sleep(0.2)
    assert sealed, f"session {session_id} was not sealed within 60 s"
    reviewer = sign_in(*REVIEWER)
    reviewer.goto(f"/sessions/{session_id}")
    assert "badge ok" in reviewer.page.locator("#verification").get_attribute("class")

    original = backends.recordings.get_object(session_id, "recording.jsonl")
    tampered = original.replace(marker.encode(), marker[:-1].encode() + b"X", 1)
    assert tampered != original
    _overwrite(stack, backends, session_id, tampered)
    reviewer.goto(f"/sessions/{session_id}")
    badge = reviewer.page.locator("#verification")
    assert "badge bad" in badge.get_attribute("class")
    assert "Verification failed" in badge.inner_text() and "chain breaks at line" in badge.inner_text()
    reviewer.shot("session-tampered")


def _overwrite(stack, backends, session_id: str, data: bytes) -> None:
    """What an attacker with write access to the store would do (sealed objects are write-once for jitgate)."""
    if backends.name == "embedded":
        path = stack.home / "recordings" / session_id / "recording.jsonl"
        path.chmod(0o640)
        path.write_bytes(data)
    else:
        backends.recordings.bucket.blob(f"{session_id}/recording.jsonl").upload_from_string(data)


def test_people_outside_the_review_groups_are_refused(stack, sign_in, held_drop):
    outsider = sign_in(*OUTSIDER)
    assert outsider.page.get_by_role("heading", name="Access refused").is_visible()
    response = outsider.goto(f"/sessions/{held_drop['session_id']}")
    assert response.status == 403 and held_drop["sql"] not in outsider.page.content()
    response = outsider.goto(f"/sessions/{held_drop['session_id']}/download/recording.jsonl")
    assert response.status == 403
    assert outsider.goto("/approvals").status == 403
    outsider.shot("refused")

    # an approver who is not a reviewer decides approvals but opens no recording
    approver = sign_in(*APPROVER_ONLY)
    assert approver.page.url.endswith("/approvals")
    assert approver.page.get_by_role("heading", name="Approvals", exact=True).is_visible()
    response = approver.goto(f"/sessions/{held_drop['session_id']}")
    assert response.status == 403 and held_drop["sql"] not in approver.page.locator("main").inner_text()


def test_state_changes_need_the_csrf_token_and_our_origin(stack, held_drop, backends):
    client, landing = client_sign_in(stack.console_url, *REVIEWER)
    assert landing.status_code == 200 and "Sessions" in landing.text
    csrf = csrf_of(landing.text)
    headers = landing.headers
    assert "script-src 'self'" in headers["content-security-policy"] and "unsafe-inline" not in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
    cookie = next(r.headers["set-cookie"] for r in landing.history if "jitgate_review=" in r.headers.get("set-cookie", ""))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie

    sql = "ALTER TABLE orders ADD COLUMN review_csrf_probe text"
    probe = psycopg.connect(f"host=127.0.0.1 port={stack.broker_port} dbname=demo user=alice@example.com "
                            f"password={_token(stack)} sslmode=require", autocommit=True)
    worker = threading.Thread(target=lambda: _swallow(probe, sql))
    worker.start()
    try:
        record = _pending_for(backends, sql)
        url = f"{stack.console_url}/approvals/{record['approval_id']}/decide"
        assert client.post(url, data={"action": "approve"}).status_code == 403  # no token
        assert client.post(url, data={"action": "approve", "csrf": "x" * 43}).status_code == 403  # wrong token
        cross = client.post(url, data={"action": "approve", "csrf": csrf}, headers={"Origin": "http://evil.example"})
        assert cross.status_code == 403
        assert backends.approvals.get_approval(record["approval_id"])["status"] == ap.PENDING
        # a GET never changes anything
        assert client.get(url).status_code == 405
        no_reason = client.post(url, data={"action": "deny", "csrf": csrf})
        assert no_reason.status_code == 400 and "needs a reason" in no_reason.text
        denied = client.post(url, data={"action": "deny", "reason": "probe", "csrf": csrf})
        assert denied.status_code == 200 and "denied by rita@example.com: probe" in denied.text
        assert backends.approvals.get_approval(record["approval_id"])["status"] == ap.DENIED
        # the search text is sent in the body, and a search without the token is refused
        assert client.post(f"{stack.console_url}/search", data={"text": "x"}).status_code == 403
    finally:
        worker.join(20)
        probe.close()
        client.close()


def test_sign_in_refuses_a_forged_callback_and_an_open_redirect(stack):
    with httpx.Client(follow_redirects=False, timeout=15) as client:
        start = client.get(stack.console_url + "/auth/login", params={"next": "//evil.example/x"})
        assert start.status_code == 302
        query = dict(httpx.URL(start.headers["location"]).params)
        assert query["code_challenge_method"] == "S256" and query["state"] and query["nonce"]
        forged = client.get(stack.console_url + "/auth/callback", params={"code": "stolen", "state": "guessed"})
        assert forged.status_code == 401 and "state mismatch" in forged.text
        again = client.get(stack.console_url + "/auth/callback", params={"code": "stolen", "state": query["state"]})
        assert again.status_code == 400, "a sign-in state is used once"

    from jitgate.review.app import _local_path

    for hostile in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"):
        assert _local_path(hostile) == "/"
    assert _local_path("/sessions?held=1") == "/sessions?held=1"


def _token(stack) -> str:
    from jitgate.devstack import dev_token

    return dev_token(stack.issuer.issuer, "alice@example.com", ["sre"])


def _swallow(conn, sql: str) -> None:
    try:
        conn.execute(sql)
    except Exception:  # noqa: BLE001 - denied on purpose
        pass
