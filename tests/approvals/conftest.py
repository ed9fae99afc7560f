"""Fixtures for the approvals tests: an own local stack wired to Slack (pointed at a local
stand-in of the Slack Web API), signed Slack interaction requests, psql helpers.

The stack is separate from the shared `stack` fixture so the Slack settings (env of the
functions and the broker's push endpoint for approval-requested) do not leak into other tests.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import time
import urllib.parse
from dataclasses import dataclass

import httpx
import pytest

from jitgate.backends import open_backends
from jitgate.devstack import dev_token, start_stack
from jitgate.settings import Settings
from tests.approvals.directory_standin import DirectoryStandIn
from tests.approvals.slack_standin import SlackStandIn, posted_approval_id, slack_user

BOT_TOKEN = "xoxb-test-jitgate-bot"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHANNEL = "#db-approvals"

USERS = {
    "UDANA": slack_user("UDANA", "dana@example.com"),
    "UERIN": slack_user("UERIN", "erin@example.com"),
    "UALICE": slack_user("UALICE", "alice@example.com"),
    "UBOB": slack_user("UBOB", "bob@example.com"),
    "UGUEST": slack_user("UGUEST", "gus@example.com", is_restricted=True),
    # An account in another workspace carrying an approver's email (Slack Connect, or a look-alike workspace).
    "UFOREIGN": slack_user("UFOREIGN", "dana@example.com", team_id="T9999"),
    # The requester alice again, under another spelling of her email: still alice.
    "UALICE2": slack_user("UALICE2", " Alice@Example.COM"),
    # In the dba group per the directory only: never signed in, not in the static list.
    "UFRANK": slack_user("UFRANK", "frank@example.com"),
}
# Approver groups for Slack clicks: the static directory (dana, erin: dba). Sign-ins can refresh these.
DIRECTORY = {"dana@example.com": ["dba"], "erin@example.com": ["dba"], "bob@example.com": ["analysts"],
             "alice@example.com": ["sre", "dba"]}

EXTRA_TARGETS = """
  demo-two:
    kind: postgres
    address: 127.0.0.1:{pg_port}
    database: demo
    username: jitgate_broker
    credential: env:JITGATE_DEMO_DB_PASSWORD
    allow:
      groups: [sre]
    guardrails: {{ddl: approve}}
    approvals:
      approver_groups: [dba]
      required: 2
      slack_channel: "{channel}"
  demo-quick:
    kind: postgres
    address: 127.0.0.1:{pg_port}
    database: demo
    username: jitgate_broker
    credential: env:JITGATE_DEMO_DB_PASSWORD
    allow:
      groups: [sre]
    guardrails: {{ddl: approve}}
    approvals:
      approver_users: [dana@example.com]
      wait: 2s
      grant_window: 10m
      slack_channel: "{channel}"
  demo-jit:
    kind: postgres
    address: 127.0.0.1:{pg_port}
    database: demo
    username: jitgate_broker
    credential: env:JITGATE_DEMO_DB_PASSWORD
    allow:
      groups: [sre]
    guardrails: {{ddl: approve, dml_unbounded: approve}}
    approvals:
      approver_groups: [dba]
      session_access: 10m
      slack_channel: "{channel}"
"""


@pytest.fixture(scope="session")
def slack():
    standin = SlackStandIn(BOT_TOKEN, USERS).start()
    yield standin
    standin.stop()


# The directory (Cloud Identity Groups stand-in): what the approvals service asks at decision time.
# dba contains the oncall group, which contains frank (transitive membership).
DIRECTORY_GROUPS = {"dba@example.com": {"dana@example.com", "erin@example.com", "alice@example.com", "oncall@example.com"},
                    "oncall@example.com": {"frank@example.com"},
                    "analysts@example.com": {"bob@example.com"}, "sre@example.com": {"alice@example.com"}}


@pytest.fixture(scope="session")
def directory():
    standin = DirectoryStandIn(DIRECTORY_GROUPS).start()
    yield standin
    standin.stop()


@pytest.fixture(scope="session")
def astack(tmp_path_factory, slack, directory):
    home = tmp_path_factory.mktemp("approvals-stack")
    s = start_stack(home, extra_env={
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "JITGATE_SLACK_API_URL": slack.url,
        "JITGATE_SLACK_CHANNEL": CHANNEL,
        "JITGATE_APPROVER_DIRECTORY": json.dumps(DIRECTORY),
        "JITGATE_SLACK_TEAM_IDS": "T0001",
        "JITGATE_DIRECTORY": "cloud-identity",
        "JITGATE_DIRECTORY_URL": directory.url,
        "JITGATE_DIRECTORY_GROUP_DOMAIN": "example.com",
    })
    s.add_targets(EXTRA_TARGETS, channel=CHANNEL)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def backends(astack):
    b = open_backends(Settings.from_env(astack.env))
    yield b
    b.close()


@pytest.fixture(scope="session")
def atoken(astack):
    def make(user: str = "alice@example.com", groups=("sre",), **kw) -> str:
        return dev_token(astack.issuer.issuer, user, list(groups), **kw)

    return make


# -- Slack interaction requests, signed like Slack signs them -------------------------------------


def sign(body: str, timestamp: int | None = None, secret: str = SIGNING_SECRET) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}",
            "Content-Type": "application/x-www-form-urlencoded"}


def block_action(user: str, action: str, approval_id: str, *, channel: str = "CDB-APPROVA", ts: str = "1.0",
                 team: str = "T0001") -> dict:
    return {
        "type": "block_actions", "user": {"id": user, "username": user.lower()}, "api_app_id": "A1", "token": "legacy",
        "team": {"id": team}, "trigger_id": f"trig.{user}.{time.monotonic_ns()}",
        "container": {"type": "message", "message_ts": ts, "channel_id": channel},
        "channel": {"id": channel}, "message": {"ts": ts, "type": "message"},
        "actions": [{"type": "button", "action_id": action, "block_id": "decision", "value": approval_id,
                     "action_ts": str(time.time())}],
    }


def view_submission(user: str, view: dict, reason: str) -> dict:
    return {
        "type": "view_submission", "user": {"id": user}, "api_app_id": "A1", "team": {"id": "T0001"},
        "trigger_id": "trig.view",
        "view": {**view, "id": "V123", "state": {"values": {"reason": {"reason_input": {"type": "plain_text_input", "value": reason}}}}},
    }


@dataclass
class Clicker:
    url: str

    def post(self, payload: dict, *, timestamp: int | None = None, secret: str = SIGNING_SECRET,
             headers: dict | None = None) -> httpx.Response:
        body = "payload=" + urllib.parse.quote(json.dumps(payload))
        return httpx.post(self.url, content=body, headers=headers or sign(body, timestamp, secret), timeout=15)

    def click(self, user: str, action: str, approval_id: str, slack_msg: dict | None = None) -> httpx.Response:
        kw = {}
        if slack_msg:
            kw = {"channel": slack_msg["channel"], "ts": slack_msg["ts"]}
        return self.post(block_action(user, action, approval_id, **kw))


@pytest.fixture(scope="session")
def clicker(astack):
    assert astack.slack_interactions_url, "the stack did not start slack_interactions"
    return Clicker(astack.slack_interactions_url)


# -- psql against the broker -------------------------------------------------------------------------


def psql_args(stack, target: str = "demo", user: str = "alice@example.com") -> list[str]:
    return ["psql", "-X", "-v", "ON_ERROR_STOP=1",
            f"host=127.0.0.1 port={stack.broker_port} dbname={target} user={user} sslmode=require connect_timeout=10"]


def start_psql(stack, token: str, sql: str, target: str = "demo", user: str = "alice@example.com") -> subprocess.Popen:
    env = {**os.environ, "PGPASSWORD": token}
    return subprocess.Popen(psql_args(stack, target, user) + ["-c", sql], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_psql(stack, token: str, sql: str, target: str = "demo", timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PGPASSWORD": token}
    return subprocess.run(psql_args(stack, target, **kw) + ["-A", "-t", "-c", sql], env=env, capture_output=True,
                          text=True, timeout=timeout)


def wait_posted(slack: SlackStandIn, *, statement: str | None = None, since: float = 0, timeout: float = 15) -> tuple[str, dict]:
    """The approval message notify_approvers posted: (approval id, {channel, ts})."""
    def match(c):
        if c["at"] < since or not c["ok"] or c["params"].get("thread_ts"):
            return False
        if statement is None:
            return True
        return any(statement.replace("<", "&lt;") in json.dumps(b, ensure_ascii=False) or statement in json.dumps(b)
                   for b in c["params"].get("blocks") or [])

    call = slack.wait_for("chat.postMessage", match, timeout=timeout)
    approval_id = posted_approval_id(call)
    # chat.postMessage answered with the channel id and ts the record keeps
    return approval_id, {"channel": None, "ts": None, "call": call}


def slack_ref(backends, approval_id: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = backends.approvals.get_approval(approval_id)
        if record and record.get("slack"):
            return record["slack"]
        time.sleep(0.05)
    raise AssertionError(f"{approval_id} has no Slack message reference")
