"""The pure approval state machine (jitgate.approvals): no store, no Slack."""
import pytest

from jitgate import approvals as ap
from jitgate.policy import ApprovalConfig

DANA = ap.Approver("dana@example.com", frozenset({"dba"}), via="slack")
ERIN = ap.Approver("erin@example.com", frozenset({"dba"}), via="slack")
BOB = ap.Approver("bob@example.com", frozenset({"analysts"}), via="slack")
ALICE_DBA = ap.Approver("Alice@Example.com", frozenset({"dba"}), via="cli")


def request(statement="ALTER TABLE orders ADD COLUMN x int", now=1000.0, **config):
    cfg = ApprovalConfig(**{"approver_groups": ["dba"], **config})
    return ap.new_request(requester="alice@example.com", requester_groups={"sre"}, target="demo", session_id="s1",
                          statement=statement, classes={"ddl"}, config=cfg, now=now)


def test_transition_table_is_the_documented_machine():
    assert ap.TRANSITIONS[ap.PENDING] == {ap.APPROVED, ap.DENIED, ap.EXPIRED, ap.CANCELLED, ap.WITHDRAWN}
    assert ap.TRANSITIONS[ap.APPROVED] == {ap.CONSUMED}
    assert ap.TERMINAL == {ap.DENIED, ap.EXPIRED, ap.CANCELLED, ap.CONSUMED, ap.WITHDRAWN}


def test_one_session_leaving_withdraws_only_when_nobody_else_waits():
    r = request()
    r = ap.join_waiter(r, "s2")
    assert r["waiters"] == ["s1", "s2"]
    assert ap.join_waiter(r, "s2") is None  # already waiting
    one_left = ap.leave_waiter(r, "s1", "the client cancelled the statement")
    assert one_left["status"] == ap.PENDING and one_left["waiters"] == ["s2"]
    gone = ap.leave_waiter(one_left, "s2", "the client disconnected", now=1002)
    assert gone["status"] == ap.WITHDRAWN and gone["reason"] == "the client disconnected"
    with pytest.raises(ap.DecisionError) as late:
        ap.decide(gone, DANA, "approve", now=1003)
    assert late.value.code == "already_decided" and "withdrawn" in str(late.value)


def test_agents_approvals_release_one_execution_unless_the_policy_sets_a_window():
    agent = ap.new_request(requester="alice@example.com", requester_groups={"sre"}, target="demo", session_id="s1",
                           statement="DELETE FROM orders", classes={"dml_unbounded"}, kind="agent",
                           config=ApprovalConfig(approver_groups=["dba"]), now=1000.0)
    assert agent["grant_window"] == 0 and "once" in ap.coverage(agent)
    windowed = ap.new_request(requester="alice@example.com", requester_groups={"sre"}, target="demo", session_id="s1",
                              statement="DELETE FROM orders", classes={"dml_unbounded"}, kind="agent",
                              config=ApprovalConfig(approver_groups=["dba"], grant_window="10m"), now=1000.0)
    assert windowed["grant_window"] == 600 and "for 10 min after approval" in ap.coverage(windowed)
    psql = ap.new_request(requester="alice@example.com", requester_groups={"sre"}, target="demo", session_id="s1",
                          statement="DELETE FROM orders", classes={"dml_unbounded"},
                          config=ApprovalConfig(approver_groups=["dba"]), now=1000.0)
    assert psql["grant_window"] == 900 and "expires at" in ap.coverage(psql)
    once = ap.use(ap.decide(agent, DANA, "approve", now=1001.0), now=1001.5)
    assert once["status"] == ap.CONSUMED


def test_request_is_bound_to_requester_target_session_and_hash():
    r = request()
    assert r["status"] == ap.PENDING and r["requester"] == "alice@example.com" and r["target"] == "demo"
    assert r["session_id"] == "s1" and r["sha256"] == ap.statement_sha256("ALTER TABLE orders ADD COLUMN x int")
    assert r["expires_at"] == 1000.0 + 3600


def test_self_approval_is_refused_even_for_an_approver_group_member():
    with pytest.raises(ap.DecisionError) as exc:
        ap.decide(request(), ALICE_DBA, "approve", now=1001)
    assert exc.value.code == "self_approval"


def test_non_approver_is_refused_and_approver_users_need_no_group():
    with pytest.raises(ap.DecisionError) as exc:
        ap.decide(request(), BOB, "approve", now=1001)
    assert exc.value.code == "not_approver"
    r = request(approver_groups=[], approver_users=["Bob@example.com"])
    assert ap.decide(r, BOB, "approve", now=1001)["status"] == ap.APPROVED


def test_first_decision_wins_and_a_later_one_is_answered():
    approved = ap.decide(request(), DANA, "approve", now=1001)
    assert approved["status"] == ap.APPROVED and approved["decided_by"] == "dana@example.com"
    with pytest.raises(ap.DecisionError) as exc:
        ap.decide(approved, ERIN, "deny", reason="no", now=1002)
    assert exc.value.code == "already_decided" and "dana@example.com" in str(exc.value)


def test_required_two_needs_two_distinct_approvers():
    r = request(required=2)
    one = ap.decide(r, DANA, "approve", now=1001)
    assert one["status"] == ap.PENDING and len(one["approvals"]) == 1
    with pytest.raises(ap.DecisionError) as exc:
        ap.decide(one, DANA, "approve", now=1002)
    assert exc.value.code == "duplicate_approver"
    two = ap.decide(one, ERIN, "approve", now=1003)
    assert two["status"] == ap.APPROVED and [a["email"] for a in two["approvals"]] == ["dana@example.com", "erin@example.com"]


def test_a_deny_by_one_approver_ends_a_two_approver_request():
    one = ap.decide(request(required=2), DANA, "approve", now=1001)
    denied = ap.decide(one, ERIN, "deny", reason="not now", now=1002)
    assert denied["status"] == ap.DENIED and denied["reason"] == "not now"


def test_expired_request_cannot_be_approved():
    r = request(ttl=60)
    with pytest.raises(ap.DecisionError) as exc:
        ap.decide(r, DANA, "approve", now=1061)
    assert exc.value.code == "expired"
    assert ap.expire_if_due(r, 1059) is None
    assert ap.expire_if_due(r, 1060)["status"] == ap.EXPIRED


def test_grant_covers_only_the_same_statement_requester_and_target():
    approved = ap.decide(request(grant_window=900), DANA, "approve", now=1001)
    same = dict(requester="alice@example.com", target="demo", sha256=approved["sha256"], session_id="other", now=1100)
    assert ap.grant_covers(approved, **same)
    assert not ap.grant_covers(approved, **{**same, "sha256": ap.statement_sha256("DROP TABLE orders")})
    assert not ap.grant_covers(approved, **{**same, "requester": "mallory@example.com"})
    assert not ap.grant_covers(approved, **{**same, "target": "prod"})
    assert not ap.grant_covers(approved, **{**same, "now": 1001 + 900})


def test_one_time_grant_is_consumed_by_its_one_use():
    approved = ap.decide(request(grant_window=1), DANA, "approve", now=1001)
    assert ap.use(approved, now=1001.5)["status"] == ap.APPROVED  # a window keeps it reusable
    once = ap.decide(request(grant_window=60), DANA, "approve", now=1001)
    once["grant_window"] = 0
    used = ap.use(once, now=1002)
    assert used["status"] == ap.CONSUMED and used["uses"] == 1
    with pytest.raises(ap.DecisionError):
        ap.use(used)


def test_session_scope_covers_any_statement_of_that_session_only():
    approved = ap.decide(request(session_access=600), DANA, "approve", now=1001)
    assert approved["scope"] == ap.SCOPE_SESSION and approved["grant_until"] == 1601
    kw = dict(requester="alice@example.com", target="demo", sha256="anything", now=1100)
    assert ap.grant_covers(approved, session_id="s1", **kw)
    assert not ap.grant_covers(approved, session_id="s2", **kw)


def test_cancel_only_from_pending():
    r = request()
    assert ap.cancel(r, "client went away", now=1001)["status"] == ap.CANCELLED
    assert ap.cancel(ap.decide(r, DANA, "approve", now=1001), "x") is None


def test_one_time_approval_that_arrives_after_the_hold_can_still_run_once():
    r = request(grant_window=0)
    approved = ap.decide(r, DANA, "approve", now=1500)  # long after the broker stopped holding
    cover = dict(requester="alice@example.com", target="demo", sha256=r["sha256"], session_id="s2", now=2000)
    assert ap.grant_covers(approved, **cover)  # redeemable until the request's expiry...
    used = ap.use(approved, now=2000)
    assert used["status"] == ap.CONSUMED and not ap.grant_covers(used, **cover)  # ...exactly once
    assert not ap.grant_covers(approved, **{**cover, "now": r["expires_at"] + 1})


def test_no_identifier_of_the_requester_may_approve():
    cfg = ApprovalConfig(approver_groups=["dba"])
    r = ap.new_request(requester="alice", requester_groups={"sre"}, target="demo", session_id="s1",
                       statement="DROP TABLE t", classes={"ddl"}, config=cfg, now=1000.0,
                       requester_ids=("alice", "alice@example.com"))
    with pytest.raises(ap.DecisionError) as exc:
        ap.decide(r, ap.Approver("alice@example.com", frozenset({"dba"}), via="slack"), "approve", now=1001)
    assert exc.value.code == "self_approval"


def test_approvers_see_the_masked_statement_but_the_hash_binds_the_real_one():
    cfg = ApprovalConfig(approver_groups=["dba"])
    raw = "UPDATE customers SET note = 'x' WHERE email = 'ada@example.com'"
    r = ap.new_request(requester="alice@example.com", requester_groups={"sre"}, target="demo", session_id="s1",
                       statement=raw, classes={"dml_bounded"}, config=cfg, now=1000.0,
                       shown_statement="UPDATE customers SET note = 'x' WHERE email = '[email]'")
    assert "ada@example.com" not in r["statement"] and r["sha256"] == ap.statement_sha256(raw)
