"""The agent HTTP API against the running broker: auth, targets, masked queries, limits, approvals."""
from __future__ import annotations

import time

from tests.agent.conftest import assert_problem, unique_ddl


def test_openapi_document(api):
    doc = api(None).get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert {"/v1/targets", "/v1/targets/{target}/query", "/v1/targets/{target}/exec", "/v1/approvals/{approval_id}"} <= set(doc["paths"])


def test_list_targets_says_what_needs_approval(api):
    body = api().get("/v1/targets").json()
    assert body["user"] == "alice@example.com"
    targets = {t["name"]: t for t in body["targets"]}
    assert "demo" in targets and "demo-private" not in targets
    demo = targets["demo"]
    assert demo["kind"] == "postgres" and demo["tool"] == "query"
    assert "ddl" in demo["needs_approval"] and "dml_unbounded" in demo["needs_approval"]
    assert "drop_database" in demo["denied"]
    assert demo["masked"] is True


def test_query_returns_masked_rows(api):
    r = api().post("/v1/targets/demo/query", json={"sql": "SELECT id, email FROM customers WHERE id <= $1 ORDER BY id", "params": [3]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["name"] for c in body["columns"]] == ["id", "email"]
    assert body["row_count"] == 3 and body["returned_rows"] == 3 and not body["truncated"]
    assert body["session_id"]
    assert [row[0] for row in body["rows"]] == [1, 2, 3]
    for _, email in body["rows"]:
        assert email.startswith("*") and "@" in email, email  # partial: ***@domain
    assert "email" in body["masked_columns"]


def test_forged_and_missing_token(api, token):
    forged = token()[:-6] + "AAAAAA"
    body = assert_problem(api(forged).get("/v1/targets"), 401, "unauthenticated")
    assert "Bearer" in body["next"]
    assert_problem(api(forged).post("/v1/targets/demo/query", json={"sql": "SELECT 1"}), 401, "unauthenticated")
    r = api(None).get("/v1/targets")
    assert_problem(r, 401, "unauthenticated")
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_target_the_caller_may_not_reach(api):
    body = assert_problem(api().post("/v1/targets/demo-private/query", json={"sql": "SELECT 1"}), 403, "forbidden")
    assert "dba" in body["detail"]
    assert_problem(api().post("/v1/targets/no-such-target/query", json={"sql": "SELECT 1"}), 404, "unknown_target")


def test_oversized_result_is_truncated(api):
    client = api()
    r = client.post("/v1/targets/demo/query", json={"sql": "SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g", "max_rows": 50})
    body = r.json()
    assert r.status_code == 200 and body["truncated"] and body["returned_rows"] == 50, body["truncation"]
    assert "max_rows" in body["truncation"] and body["row_count"] is None
    r = client.post("/v1/targets/demo/query", json={"sql": "SELECT g, repeat('x', 1000) FROM generate_series(1, 200) g", "max_bytes": 10000})
    body = r.json()
    assert body["truncated"] and 0 < body["returned_rows"] < 200 and "byte" in body["truncation"]


def test_errors_tell_the_agent_what_to_do(api):
    client = api()
    body = assert_problem(client.post("/v1/targets/demo/query", json={"sql": "SELECT * FROM no_such_table"}), 422, "statement_failed")
    assert body["sqlstate"] == "42P01"
    assert_problem(client.post("/v1/targets/demo/query", json={"sql": "DROP DATABASE demo"}), 403, "refused")
    assert_problem(client.post("/v1/targets/demo/query", content=b"{not json", headers={"content-type": "application/json"}), 400, "invalid_json")
    assert_problem(client.post("/v1/targets/demo/query", json={"sql": "SELECT 1", "bogus": 1}), 422, "invalid_argument")
    assert_problem(client.post("/v1/targets/demo/exec", json={"command": "id"}), 422, "wrong_target_kind")
    assert_problem(client.get("/v1/nowhere"), 404, "not_found")
    body = assert_problem(client.post("/v1/targets/demo/query", json={"sql": "SELECT count(*) FROM generate_series(1, 500000000)", "timeout_seconds": 0.5}), 504, "timeout")


def test_approval_required_then_approved_then_runs(api, decide, token):
    client = api()
    column, ddl = unique_ddl()
    r = client.post("/v1/targets/demo/query", json={"sql": ddl})
    body = assert_problem(r, 202, "approval_required")
    approval_id = body["approval_id"]
    assert approval_id.startswith("apr_") and int(r.headers["retry-after"]) > 0
    assert r.headers["location"] == f"/v1/approvals/{approval_id}"
    status = client.get(f"/v1/approvals/{approval_id}").json()
    assert status["status"] == "pending" and status["statement"] == ddl
    # a second identical request joins the same approval instead of asking twice
    assert client.post("/v1/targets/demo/query", json={"sql": ddl}).json()["approval_id"] == approval_id
    # another user may not look at it
    assert_problem(api(token("bob@example.com", ["sre"])).get(f"/v1/approvals/{approval_id}"), 404, "unknown_approval")
    decide(approval_id, "approve")
    assert client.get(f"/v1/approvals/{approval_id}").json()["ready_to_run"] is True
    r = client.post("/v1/targets/demo/query", json={"sql": ddl, "wait_seconds": 5})
    assert r.status_code == 200, r.text
    assert r.json()["approval_id"] == approval_id and r.json()["command_tag"] == "ALTER TABLE"
    r = client.post("/v1/targets/demo/query", json={"sql": f"SELECT {column} FROM orders LIMIT 1"})
    assert r.status_code == 200, r.text


def test_wait_blocks_until_decided(api, decide, backends):
    import threading

    client = api()
    _, ddl = unique_ddl()

    def approve_when_filed():
        deadline = time.time() + 10
        while time.time() < deadline:
            for record in backends.approvals.list_approvals(status="pending", target="demo"):
                if record["statement"] == ddl:
                    decide(record["approval_id"], "approve")
                    return
            time.sleep(0.2)

    approver = threading.Thread(target=approve_when_filed)
    approver.start()
    r = client.post("/v1/targets/demo/query", json={"sql": ddl, "wait_seconds": 20})
    approver.join()
    assert r.status_code == 200, r.text
    assert r.json()["approval_id"]


def test_denied_approval(api, decide):
    client = api()
    _, ddl = unique_ddl()
    approval_id = client.post("/v1/targets/demo/query", json={"sql": ddl}).json()["approval_id"]
    decide(approval_id, "deny", reason="not today")
    status = client.get(f"/v1/approvals/{approval_id}").json()
    assert status["status"] == "denied" and "not today" in status["decision"] and "do not retry" in status["next"].lower()


def test_approval_that_times_out(api, token, short_target):
    client = api(token("tess@example.com", ["agent-testers"]))
    _, ddl = unique_ddl()
    started = time.monotonic()
    r = client.post(f"/v1/targets/{short_target}/query", json={"sql": ddl})
    body = assert_problem(r, 202, "approval_required")
    approval_id = body["approval_id"]
    # waiting longer than the target's hold (2s): the gateway stops holding and says so
    r = client.post(f"/v1/targets/{short_target}/query", json={"sql": ddl, "wait_seconds": 10})
    body = assert_problem(r, 403, "refused")
    assert body["approval_id"] == approval_id and "still pending" in body["detail"]
    assert time.monotonic() - started < 10
    time.sleep(max(0.0, 4.5 - (time.monotonic() - started)))
    status = client.get(f"/v1/approvals/{approval_id}").json()
    assert status["status"] == "expired" and "ask again" in status["next"]


def test_a_lone_surrogate_in_the_statement_gets_a_clear_answer(api):
    """JSON can carry "\\ud800", which is not UTF-8: a clear 4xx, and the broker keeps serving."""
    r = api().post("/v1/targets/demo/query", content=b'{"sql": "SELECT \'\\ud800\' AS x"}',
                   headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert r.json().get("detail"), r.text
    ok = api().post("/v1/targets/demo/query", json={"sql": "SELECT 1 AS one"})
    assert ok.status_code == 200, ok.text
