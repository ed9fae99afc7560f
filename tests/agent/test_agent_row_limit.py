"""The measured row limit on the agent API (HTTP): the same count and hold as the wire protocol."""
from __future__ import annotations

from tests.agent.conftest import assert_problem

ROWS = 200


def _table(stack) -> None:
    stack.pg.psql("DROP TABLE IF EXISTS a_orders; CREATE TABLE a_orders (id int PRIMARY KEY, v int); "
                  f"INSERT INTO a_orders SELECT g, g FROM generate_series(1, {ROWS}) g; "
                  "ALTER TABLE a_orders OWNER TO jitgate_broker", "demo")


def _count(stack) -> int:
    return int(stack.pg.psql("SELECT count(*) FROM a_orders", "demo"))


def test_agent_tautology_is_counted_rolled_back_and_held_then_runs_once_approved(api, stack, decide):
    _table(stack)
    client = api()
    sql = "DELETE FROM a_orders WHERE id = id"
    body = assert_problem(client.post("/v1/targets/demo/query", json={"sql": sql}), 202, "approval_required")
    assert "would delete 200 rows from public.a_orders" in body["detail"] and "over the limit of 100" in body["detail"]
    assert _count(stack) == ROWS  # rolled back
    decide(body["approval_id"], "approve")
    r = client.post("/v1/targets/demo/query", json={"sql": sql, "wait_seconds": 5})
    assert r.status_code == 200, r.text
    assert r.json()["command_tag"] == f"DELETE {ROWS}"
    assert _count(stack) == 0


def test_agent_bounded_change_commits_at_once(api, stack):
    _table(stack)
    r = api().post("/v1/targets/demo/query", json={"sql": "DELETE FROM a_orders WHERE id = $1 RETURNING id", "params": [5]})
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [[5]]
    assert _count(stack) == ROWS - 1


def test_agent_failed_statement_commits_nothing(api, stack):
    _table(stack)
    body = assert_problem(api().post("/v1/targets/demo/query", json={"sql": "UPDATE a_orders SET v = 1 / (id - 7) WHERE id < 10"}),
                          422, "statement_failed")
    assert body["sqlstate"] == "22012"
    assert stack.pg.psql("SELECT sum(v) FROM a_orders", "demo") == str(ROWS * (ROWS + 1) // 2)
