#!/usr/bin/env python3
"""Benchmark the approval path on the local stack, Slack pointed at a local stand-in of its Web API.

    python bench/bench_approvals.py              # 20 rounds
    python bench/bench_approvals.py --rounds 50

Per round, one psycopg session (TLS, OIDC token) sends a DDL statement that the demo policy
holds for approval, and the bench measures:
  - request -> Slack post: from the client sending the statement to the stand-in receiving
    chat.postMessage (broker: classify, store the request, publish approval-requested;
    embedded bus HTTP push; functions/notify_approvers: Block Kit + chat.postMessage);
  - click -> statement ran: from sending a signed Approve click to functions/approvals (POST /slack)
    until the client has the statement's result (Bolt verification, users.info, the store
    transaction, chat.update, and the broker's store poll every 200 ms, then the statement).
Prints p50/p95 and writes bench/results/<date>-approvals.json. Everything on 127.0.0.1.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402

from jitgate.backends import open_backends  # noqa: E402
from jitgate.devstack import dev_token, start_stack  # noqa: E402
from jitgate.settings import Settings  # noqa: E402
from tests.approvals.conftest import BOT_TOKEN, CHANNEL, DIRECTORY, SIGNING_SECRET, USERS, Clicker  # noqa: E402
from tests.approvals.slack_standin import SlackStandIn, posted_approval_id  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    slack = SlackStandIn(BOT_TOKEN, USERS).start()
    home = Path(tempfile.mkdtemp(prefix="jitgate-bench-approvals-"))
    stack = start_stack(home, extra_env={
        "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET, "JITGATE_SLACK_API_URL": slack.url,
        "JITGATE_SLACK_CHANNEL": CHANNEL, "JITGATE_APPROVER_DIRECTORY": json.dumps(DIRECTORY),
        "JITGATE_SLACK_TEAM_IDS": "T0001",
    })
    backends = open_backends(Settings.from_env(stack.env))
    clicker = Clicker(stack.slack_interactions_url)
    to_post, to_run = [], []
    try:
        token = dev_token(stack.issuer.issuer, "alice@example.com", ["sre"])
        dsn = f"host=127.0.0.1 port={stack.broker_port} dbname=demo user=alice@example.com password={token} sslmode=require"
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(args.rounds + 1):  # round 0 warms up the functions
                sql = f"ALTER TABLE orders ALTER COLUMN status SET DEFAULT 'bench{i}'"
                done: dict = {}

                def run() -> None:
                    conn.execute(sql)
                    done["at"] = time.time()

                sent = time.time()
                worker = threading.Thread(target=run)
                worker.start()
                call = slack.wait_for("chat.postMessage", lambda c: c["at"] >= sent and f"bench{i}'" in json.dumps(c["params"].get("blocks")), 30)
                approval_id = posted_approval_id(call)
                deadline = time.monotonic() + 10
                ref = None
                while ref is None and time.monotonic() < deadline:
                    ref = (backends.approvals.get_approval(approval_id) or {}).get("slack")
                    time.sleep(0.01)
                clicked = time.time()
                response = clicker.click("UDANA", "approve", approval_id, ref)
                assert response.status_code == 200, response.text
                worker.join(30)
                assert "at" in done, "the statement did not run"
                if i:
                    to_post.append(call["at"] - sent)
                    to_run.append(done["at"] - clicked)
    finally:
        backends.close()
        stack.stop()
        slack.stop()
    result = {
        "rounds": len(to_post),
        "request_to_slack_post_ms": {"p50": round(pct(to_post, 50) * 1000, 1), "p95": round(pct(to_post, 95) * 1000, 1),
                                     "mean": round(statistics.mean(to_post) * 1000, 1)},
        "click_to_statement_ran_ms": {"p50": round(pct(to_run, 50) * 1000, 1), "p95": round(pct(to_run, 95) * 1000, 1),
                                      "mean": round(statistics.mean(to_run) * 1000, 1)},
        "poll_interval_ms": 200,
    }
    print(f"| measure ({result['rounds']} rounds) | p50 ms | p95 ms | mean ms |\n|---|---|---|---|")
    for name in ("request_to_slack_post_ms", "click_to_statement_ran_ms"):
        r = result[name]
        print(f"| {name[:-3].replace('_', ' ')} | {r['p50']} | {r['p95']} | {r['mean']} |")
    out = REPO / "bench" / "results" / f"{datetime.date.today()}-approvals.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
