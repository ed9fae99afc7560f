"""Done-when, through plain psql against the local stack wired to Slack (a stand-in of the Web API):
a DDL statement waits; a signed Approve click lets exactly that statement run once; a Deny click
returns the reason to psql; the recording shows the request, the decision, who made it, the statement."""
import json
import time

from jitgate import approvals as ap
from jitgate.recording.finalize import RECORDING
from jitgate.recording.seal import parse_events
from tests.approvals.conftest import run_psql, slack_ref, start_psql, view_submission, wait_posted
from tests.conftest import wait_sealed


def _finish(proc, timeout=10):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_ddl_waits_then_a_signed_approve_runs_it_exactly_once(astack, slack, backends, clicker, atoken):
    sql = "ALTER TABLE orders ADD COLUMN approved_note text"
    t0 = time.time()
    proc = start_psql(astack, atoken(), sql)
    approval_id, _ = wait_posted(slack, statement=sql, since=t0)
    time.sleep(0.5)
    assert proc.poll() is None, "the statement must wait for a decision"
    record = backends.approvals.get_approval(approval_id)
    assert record["status"] == ap.PENDING and record["sha256"] == ap.statement_sha256(sql)
    assert record["requester"] == "alice@example.com" and record["target"] == "demo"
    ref = slack_ref(backends, approval_id)

    response = clicker.click("UDANA", "approve", approval_id, ref)
    assert response.status_code == 200, response.text
    code, out, err = _finish(proc)
    assert code == 0, err  # released by the click: a hold that timed out would have failed the statement
    assert "ALTER TABLE" in out
    assert approval_id in err and "waits for group dba" in err  # the NOTICE named the request and the deciders
    record = backends.approvals.get_approval(approval_id)
    assert record["status"] == ap.APPROVED and record["uses"] == 1 and record["decided_by"] == "dana@example.com"
    # the message now shows the outcome, without buttons
    update = slack.wait_for("chat.update", lambda c: c["params"]["ts"] == ref["ts"])
    assert not any(b["type"] == "actions" for b in update["params"]["blocks"])
    assert "Approved" in json.dumps(update["params"]["blocks"]) and "dana@example.com" in json.dumps(update["params"]["blocks"])
    columns = run_psql(astack, atoken(), "SELECT count(*) FROM information_schema.columns WHERE column_name = 'approved_note'")
    assert columns.stdout.strip() == "1"

    # the recording: request, decision (who), and the statement carrying the approval id
    wait_sealed(astack, record["session_id"])
    events = parse_events(backends.recordings.get_object(record["session_id"], RECORDING))
    requested = [e for e in events if e["type"] == "approval.requested"]
    decided = [e for e in events if e["type"] == "approval.decided"]
    statements = [e for e in events if e["type"] == "statement"]
    assert requested[0]["approval_id"] == approval_id and requested[0]["classes"] == ["ddl"]
    assert decided[0]["status"] == "approved" and decided[0]["decided_by"] == "dana@example.com" and decided[0]["via"] == ["slack"]
    assert statements[-1]["sql"] == sql and statements[-1]["approval_id"] == approval_id and statements[-1]["decision"] == "allow"
    assert slack.errors == []


def test_a_deny_click_returns_the_reason_to_psql(astack, slack, backends, clicker, atoken):
    sql = "DROP TABLE IF EXISTS never_created_table"
    t0 = time.time()
    proc = start_psql(astack, atoken(), sql)
    approval_id, _ = wait_posted(slack, statement=sql, since=t0)
    ref = slack_ref(backends, approval_id)
    assert clicker.click("UERIN", "deny", approval_id, ref).status_code == 200
    modal = slack.wait_for("views.open", lambda c: approval_id in c["params"]["view"]["private_metadata"])
    response = clicker.post(view_submission("UERIN", modal["params"]["view"], "not during the freeze, use a migration"))
    assert response.status_code == 200 and not response.content.strip(b" {}"), response.text
    code, _, err = _finish(proc)
    assert code != 0
    assert "denied by erin@example.com: not during the freeze, use a migration" in err
    assert backends.approvals.get_approval(approval_id)["status"] == ap.DENIED
    update = slack.wait_for("chat.update", lambda c: c["params"]["ts"] == ref["ts"])
    assert "Denied" in json.dumps(update["params"]["blocks"])
    assert slack.errors == []


def test_time_out_says_how_to_retry_and_a_later_approval_lets_the_same_statement_pass(astack, slack, backends, atoken, tmp_path):
    import subprocess
    import sys

    sql = "ALTER TABLE orders ALTER COLUMN status SET DEFAULT 'open'"
    t0 = time.time()
    result = run_psql(astack, atoken(), sql, target="demo-quick")
    assert result.returncode != 0
    assert "still pending after 2s" in result.stderr and "run the same statement again" in result.stderr
    approval_id, _ = wait_posted(slack, statement=sql, since=t0)
    # decided later, from the CLI, by an approver who proves who she is with a token
    cli = subprocess.run([sys.executable, "-m", "jitgate.cli", "--home", str(astack.home), "approvals", "approve", approval_id,
                          "--token", atoken("dana@example.com", ("dba",))],
                         capture_output=True, text=True, timeout=60, env=astack.env)
    assert cli.returncode == 0, cli.stderr
    assert "approved by dana@example.com" in cli.stdout
    posts_before = len(slack.find("chat.postMessage"))
    again = run_psql(astack, atoken(), sql, target="demo-quick")
    assert again.returncode == 0, again.stderr
    assert len(slack.find("chat.postMessage")) == posts_before, "no second prompt within the grant window"
    record = backends.approvals.get_approval(approval_id)
    assert record["uses"] == 1 and record["approvals"][0]["via"] == "cli"

    # statement B is not unlocked by the approval of statement A
    other = "ALTER TABLE orders ALTER COLUMN status SET DEFAULT 'paid'"
    t1 = time.time()
    refused = run_psql(astack, atoken(), other, target="demo-quick")
    assert refused.returncode != 0 and "still pending" in refused.stderr
    other_id, _ = wait_posted(slack, statement=other, since=t1)
    assert other_id != approval_id


def test_session_access_unlocks_the_session_for_a_while(astack, slack, backends, clicker, atoken):
    import psycopg

    dsn = (f"host=127.0.0.1 port={astack.broker_port} dbname=demo-jit user=alice@example.com "
           f"password={atoken()} sslmode=require")
    with psycopg.connect(dsn, autocommit=True) as conn:
        import threading

        result = {}
        t0 = time.time()
        worker = threading.Thread(target=lambda: result.setdefault("r", conn.execute("CREATE TABLE jit_a (id int)")))
        worker.start()
        approval_id, _ = wait_posted(slack, statement="CREATE TABLE jit_a", since=t0)
        assert clicker.click("UDANA", "approve", approval_id, slack_ref(backends, approval_id)).status_code == 200
        worker.join(10)
        assert "r" in result
        posts = len(slack.find("chat.postMessage"))
        conn.execute("CREATE TABLE jit_b (id int)")  # another DDL in the same session: no new prompt
        conn.execute("DROP TABLE jit_a")
        assert len(slack.find("chat.postMessage")) == posts


def test_review_console_decides_for_a_signed_in_approver(astack, slack, backends, atoken):
    """The review console (jitgate.review) decides through the same path: a signed-in approver's
    click releases the statement and updates the Slack message; others are refused."""
    from tests.review.signin import client_sign_in, csrf_of

    sql = "ALTER TABLE customers ADD COLUMN console_note text"
    t0 = time.time()
    proc = start_psql(astack, atoken(), sql)
    approval_id, _ = wait_posted(slack, statement=sql, since=t0)
    url = f"{astack.console_url}/approvals/{approval_id}/decide"
    bob, landing = client_sign_in(astack.console_url, "bob@example.com", ("analysts",))
    try:
        assert landing.status_code == 403 and "Access refused" in landing.text  # neither reviewer nor approver
        assert bob.post(url, data={"action": "approve", "csrf": "forged"}).status_code == 403
    finally:
        bob.close()
    erin, landing = client_sign_in(astack.console_url, "erin@example.com", ("dba",))
    try:
        assert landing.status_code == 200 and approval_id in landing.text
        good = erin.post(url, data={"action": "approve", "csrf": csrf_of(landing.text)})
        assert good.status_code == 200 and f"{approval_id}: approved by erin@example.com" in good.text
    finally:
        erin.close()
    code, _, err = _finish(proc)
    assert code == 0, err
    ref = slack_ref(backends, approval_id)
    update = slack.wait_for("chat.update", lambda c: c["params"]["ts"] == ref["ts"])
    assert "via console" in json.dumps(update["params"]["blocks"])


def test_killed_client_withdraws_the_request_and_the_slack_message_says_so(astack, slack, backends, clicker, atoken):
    import httpx

    sql = "ALTER TABLE orders ADD COLUMN withdrawn_note text"
    t0 = time.time()
    proc = start_psql(astack, atoken(), sql)
    approval_id, _ = wait_posted(slack, statement=sql, since=t0)
    ref = slack_ref(backends, approval_id)
    proc.kill()  # psql vanishes while its ALTER TABLE waits
    proc.wait(10)
    deadline = time.monotonic() + 30
    while backends.approvals.get_approval(approval_id)["status"] != ap.WITHDRAWN:
        assert time.monotonic() < deadline, backends.approvals.get_approval(approval_id)
        time.sleep(0.1)
    # A later click does nothing; the clicker hears why.
    since = time.time()
    assert clicker.click("UDANA", "approve", approval_id, ref).status_code == 200
    assert backends.approvals.get_approval(approval_id)["status"] == ap.WITHDRAWN
    told = [c["params"]["text"] for c in slack.find("chat.postEphemeral", lambda c: c["params"]["user"] == "UDANA" and c["at"] >= since)]
    assert told and "withdrawn" in told[0]
    # The message is brought up to date (by the click's refresh, or at the latest by the expiry sweep).
    httpx.post(astack.env["JITGATE_EXPIRE_URL"], timeout=30)
    update = slack.wait_for("chat.update", lambda c: c["params"]["ts"] == ref["ts"] and "Withdrawn" in json.dumps(c["params"]["blocks"]))
    assert "nothing will run" in json.dumps(update["params"]["blocks"])
    assert "withdrawn_note" not in astack.pg.psql("SELECT string_agg(column_name, ',') FROM information_schema.columns "
                                                  "WHERE table_name = 'orders'", "demo")
