"""The real Bolt app (functions/approvals POST /slack, under functions-framework) receiving requests
signed with the signing secret; Slack Web API calls go to the local stand-in."""
import json
import threading
import time

import pytest

from jitgate import approvals as ap
from jitgate.events import pubsub_envelope
from jitgate.policy import ApprovalConfig
from jitgate.slack import web_client
from jitgate.slack.messages import post_request
from tests.approvals.conftest import CHANNEL, SIGNING_SECRET, block_action, sign


@pytest.fixture()
def make_request(astack, backends):
    client = web_client(astack.env)

    def make(statement="ALTER TABLE orders ADD COLUMN slack_test int", *, requester="alice@example.com", post=True,
             target="demo", **config):
        # Who may approve and how many are needed come from the policy's target (the approvals
        # service reads them there): required=2 needs target demo-two.
        cfg = ApprovalConfig(**{"approver_groups": ["dba"], "slack_channel": CHANNEL, **config})
        record = ap.new_request(requester=requester, requester_groups={"sre"}, target=target, session_id="s-test",
                                statement=statement, classes={"ddl"}, config=cfg)
        backends.approvals.create_approval(record)
        if post:
            record = post_request(client, backends.approvals, record, astack.env)
        return record

    return make


def ephemerals(slack, user, since):
    return [c["params"]["text"] for c in slack.find("chat.postEphemeral", lambda c: c["params"]["user"] == user and c["at"] >= since)]


def test_forged_signature_is_refused(clicker, make_request, backends):
    record = make_request()
    response = clicker.post(block_action("UDANA", "approve", record["approval_id"]), secret="not-the-signing-secret")
    assert response.status_code == 401
    assert backends.approvals.get_approval(record["approval_id"])["status"] == ap.PENDING


def test_timestamp_older_than_five_minutes_is_refused(clicker, make_request, backends):
    record = make_request()
    response = clicker.post(block_action("UDANA", "approve", record["approval_id"]), timestamp=int(time.time()) - 301)
    assert response.status_code == 401
    assert backends.approvals.get_approval(record["approval_id"])["status"] == ap.PENDING


def test_replayed_request_is_refused(clicker, make_request):
    import httpx
    import urllib.parse

    record = make_request()
    body = "payload=" + urllib.parse.quote(json.dumps(block_action("UDANA", "deny", record["approval_id"])))
    headers = sign(body)
    first = httpx.post(clicker.url, content=body, headers=headers, timeout=15)
    again = httpx.post(clicker.url, content=body, headers=headers, timeout=15)
    assert first.status_code == 200 and again.status_code == 401


def test_two_approvers_click_at_the_same_moment_exactly_one_wins(clicker, make_request, backends, slack):
    record = make_request()
    ref = record["slack"]
    start = threading.Barrier(2)
    results = {}
    since = time.time()

    def click(user):
        start.wait()
        results[user] = clicker.click(user, "approve", record["approval_id"], ref).status_code

    threads = [threading.Thread(target=click, args=(u,)) for u in ("UDANA", "UERIN")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == {"UDANA": 200, "UERIN": 200}
    final = backends.approvals.get_approval(record["approval_id"])
    assert final["status"] == ap.APPROVED and len(final["approvals"]) == 1
    winner = final["decided_by"]
    loser = "UERIN" if winner == "dana@example.com" else "UDANA"
    told = ephemerals(slack, loser, since)
    assert len(told) == 1 and f"already decided: approved by {winner}" in told[0]
    assert ephemerals(slack, "UDANA" if loser == "UERIN" else "UERIN", since) == []
    assert slack.errors == []


def test_requester_cannot_approve_their_own_request(clicker, make_request, backends, slack):
    record = make_request()  # requested by alice, who is also in dba per the directory
    since = time.time()
    assert clicker.click("UALICE", "approve", record["approval_id"], record["slack"]).status_code == 200
    assert backends.approvals.get_approval(record["approval_id"])["status"] == ap.PENDING
    assert "cannot approve or deny your own request" in ephemerals(slack, "UALICE", since)[0]


def test_second_spelling_of_the_requesters_email_is_still_self_approval(clicker, make_request, backends, slack):
    record = make_request()  # alice@example.com; Slack user UALICE2 shows " Alice@Example.COM"
    since = time.time()
    assert clicker.click("UALICE2", "approve", record["approval_id"], record["slack"]).status_code == 200
    assert backends.approvals.get_approval(record["approval_id"])["status"] == ap.PENDING
    assert "cannot approve or deny your own request" in ephemerals(slack, "UALICE2", since)[0]


def test_clicks_from_another_workspace_are_refused(clicker, make_request, backends, slack):
    record = make_request()
    since = time.time()
    # The click itself comes from workspace T9999 (dana's Slack id, but not our workspace).
    clicker.post(block_action("UDANA", "approve", record["approval_id"], team="T9999"))
    # An account whose home workspace is T9999 with an approver's email, clicking in our channel.
    clicker.click("UFOREIGN", "approve", record["approval_id"], record["slack"])
    assert backends.approvals.get_approval(record["approval_id"])["status"] == ap.PENDING
    assert "workspace T9999, not one jitgate accepts" in ephemerals(slack, "UDANA", since)[0]
    assert "workspace T9999, not one jitgate accepts" in ephemerals(slack, "UFOREIGN", since)[0]


def test_non_approver_and_guest_are_refused(clicker, make_request, backends, slack):
    record = make_request()
    since = time.time()
    clicker.click("UBOB", "approve", record["approval_id"], record["slack"])
    clicker.click("UGUEST", "approve", record["approval_id"], record["slack"])
    assert backends.approvals.get_approval(record["approval_id"])["status"] == ap.PENDING
    assert "not an approver" in ephemerals(slack, "UBOB", since)[0]
    assert "guest accounts" in ephemerals(slack, "UGUEST", since)[0]


def test_approving_an_expired_request_is_refused_and_the_message_says_expired(clicker, make_request, backends, slack):
    record = make_request(ttl=1)
    time.sleep(1.2)
    since = time.time()
    assert clicker.click("UDANA", "approve", record["approval_id"], record["slack"]).status_code == 200
    assert backends.approvals.get_approval(record["approval_id"])["status"] == ap.EXPIRED
    assert "expired" in ephemerals(slack, "UDANA", since)[0]
    update = slack.wait_for("chat.update", lambda c: c["params"]["ts"] == record["slack"]["ts"])
    assert "Expired" in json.dumps(update["params"]["blocks"])


def test_required_two_needs_two_distinct_approvers(clicker, make_request, backends, slack):
    record = make_request(required=2, target="demo-two")
    ref = record["slack"]
    since = time.time()
    clicker.click("UDANA", "approve", record["approval_id"], ref)
    one = backends.approvals.get_approval(record["approval_id"])
    assert one["status"] == ap.PENDING and len(one["approvals"]) == 1
    partial = slack.wait_for("chat.update", lambda c: c["params"]["ts"] == ref["ts"] and c["at"] >= since)
    assert any(b["type"] == "actions" for b in partial["params"]["blocks"])  # still open for the second approver
    assert "1 of 2 approvals" in json.dumps(partial["params"]["blocks"])
    clicker.click("UDANA", "approve", record["approval_id"], ref)
    assert "already approved" in ephemerals(slack, "UDANA", since)[0]
    assert backends.approvals.get_approval(record["approval_id"])["status"] == ap.PENDING
    clicker.click("UERIN", "approve", record["approval_id"], ref)
    final = backends.approvals.get_approval(record["approval_id"])
    assert final["status"] == ap.APPROVED and {a["email"] for a in final["approvals"]} == {"dana@example.com", "erin@example.com"}


def test_notify_posts_escaped_shortened_statement_with_full_text_in_thread(astack, backends, slack, make_request):
    statement = "UPDATE orders SET status = '<b>&' WHERE " + " OR ".join(f"id = {i}" for i in range(900))
    record = make_request(statement, post=False)
    url = dict(item.split("=", 1) for item in astack.env["JITGATE_PUSH_ENDPOINTS"].split(","))["approval-requested"]
    import httpx

    headers, body = pubsub_envelope("approval-requested", record)
    since = time.time()
    assert httpx.post(url, headers=headers, content=body, timeout=15).status_code < 300
    main = slack.wait_for("chat.postMessage", lambda c: c["at"] >= since and not c["params"].get("thread_ts"))
    text = json.dumps(main["params"]["blocks"])
    assert "&lt;b&gt;&amp;" in text and "<b>" not in text
    assert "full statement is in the thread" in text
    for field in ("alice@example.com", "`demo`", "`ddl`", "s-test", "<!date^"):
        assert field in text
    actions = [b for b in main["params"]["blocks"] if b["type"] == "actions"][0]
    assert [e["action_id"] for e in actions["elements"]] == ["approve", "deny"]
    thread = slack.wait_for("chat.postMessage", lambda c: c["at"] >= since and c["params"].get("thread_ts"))
    shown = "".join(b["text"]["text"] for b in thread["params"]["blocks"]).replace("```", "")
    assert shown == statement.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    # a redelivered event does not post twice
    before = len(slack.find("chat.postMessage"))
    headers, body = pubsub_envelope("approval-requested", record)
    httpx.post(url, headers=headers, content=body, timeout=15)
    assert len(slack.find("chat.postMessage")) == before
    assert slack.errors == []


def test_expire_function_expires_and_updates_messages(astack, make_request, backends, slack):
    import httpx

    record = make_request(ttl=1)
    time.sleep(1.1)
    response = httpx.post(astack.env["JITGATE_EXPIRE_URL"], timeout=30)
    assert response.status_code == 200 and record["approval_id"] in response.json()["expired"]
    assert backends.approvals.get_approval(record["approval_id"])["status"] == ap.EXPIRED
    update = slack.wait_for("chat.update", lambda c: c["params"]["ts"] == record["slack"]["ts"])
    assert "Expired" in json.dumps(update["params"]["blocks"])


@pytest.mark.parametrize("body, signed, status", [
    ("payload=" + "%7B%7D", False, 401),                              # unsigned
    ("payload=" + "x" * (70 * 1024), True, 413),                     # oversized, even when signed
    ("payload=" + "x" * (70 * 1024), False, 413),                    # oversized and unsigned: nothing parsed
    ("payload=not-json", True, 400),
    ("payload=%5B1%2C2%5D", True, 400),                              # a JSON list
    ("payload=%7B%22type%22%3A%22block_actions%22%7D", True, 400),   # block_actions without actions
    ("a=1&b=2", True, 400),
    ("payload=%7B%22type%22%3A%22block_actions%22%2C%22actions%22%3A%5B%7B%7D%5D%2C%22user%22%3A%5B%5D%7D", True, 400),
])
def test_hostile_slack_bodies_get_a_4xx(clicker, body, signed, status):
    import httpx

    headers = sign(body) if signed else {"Content-Type": "application/x-www-form-urlencoded"}
    response = httpx.post(clicker.url, content=body, headers=headers, timeout=15)
    assert response.status_code == status, response.text
    assert "error" in response.json()


def test_non_utf8_slack_body_gets_400(clicker):
    import hashlib
    import hmac

    import httpx

    body = b"payload=\xff\xfe"
    ts = str(int(time.time()))
    digest = hmac.new(SIGNING_SECRET.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    response = httpx.post(clicker.url, content=body, timeout=15, headers={
        "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}",
        "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400, response.text  # signed, so the signature check passed first


def test_rights_come_from_the_directory_at_decision_time(clicker, make_request, backends, slack, directory):
    # frank never signed in and is in no static list: the directory says he is in dba (through oncall).
    record = make_request()
    assert clicker.click("UFRANK", "approve", record["approval_id"], record["slack"]).status_code == 200
    assert backends.approvals.get_approval(record["approval_id"])["decided_by"] == "frank@example.com"
    # erin leaves dba: her next click is refused at once, not a week later, and she is told why.
    record = make_request()
    since = time.time()
    directory.members["dba@example.com"].discard("erin@example.com")
    try:
        clicker.click("UERIN", "approve", record["approval_id"], record["slack"])
    finally:
        directory.members["dba@example.com"].add("erin@example.com")
    assert backends.approvals.get_approval(record["approval_id"])["status"] == ap.PENDING
    told = ephemerals(slack, "UERIN", since)[0]
    assert "not an approver" in told and "from the directory, checked now: none" in told


def test_directory_down_falls_back_to_a_fresh_sign_in_only_and_says_why(clicker, make_request, backends, slack, directory):
    record = make_request()
    since = time.time()
    directory.failing = True
    try:
        clicker.click("UFRANK", "approve", record["approval_id"], record["slack"])
    finally:
        directory.failing = False
    assert backends.approvals.get_approval(record["approval_id"])["status"] == ap.PENDING
    told = ephemerals(slack, "UFRANK", since)[0]
    assert "the directory did not answer" in told and "you never signed in to jitgate" in told and "jitgate login" in told
