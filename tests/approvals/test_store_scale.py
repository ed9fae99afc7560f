"""Approvals at scale, on both stores (SQLite file; Firestore emulator): the broker finds a
statement's requests by key, not by scanning history; lists page explicitly; expiry handles the
oldest overdue requests first, in bounded batches, until none is overdue."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

from jitgate import approvals as ap
from jitgate.backends.embedded import SqliteState
from jitgate.policy import ApprovalConfig


class _Bus:
    def __init__(self):
        self.published = []

    def publish(self, topic, payload):
        self.published.append((topic, payload["approval_id"]))


class _Backends:
    def __init__(self, store):
        self.approvals, self.bus = store, _Bus()


@pytest.fixture(params=["sqlite", "firestore"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return SqliteState(tmp_path / "state.sqlite3")
    backends = request.getfixturevalue("gcp_backends")
    return backends.approvals


def _request(statement: str, *, target: str, requester: str = "alice@example.com", session_id: str = "s1",
             now: float | None = None, ttl: int = 3600) -> dict:
    return ap.new_request(requester=requester, requester_groups={"sre"}, target=target, session_id=session_id,
                          statement=statement, classes={"ddl"}, config=ApprovalConfig(approver_groups=["dba"], ttl=ttl),
                          now=now)


def test_find_approvals_by_statement_and_session(store):
    target = f"t-{uuid.uuid4().hex[:8]}"
    now = time.time()
    first = _request("DROP TABLE a", target=target, now=now - 10)
    again = _request("DROP TABLE a", target=target, session_id="s2", now=now - 5)
    other = _request("DROP TABLE b", target=target, now=now - 1)
    someone_else = _request("DROP TABLE a", target=target, requester="bob@example.com", session_id="s3", now=now)
    for record in (first, again, other, someone_else):
        store.create_approval(record)
    found = store.find_approvals(target=target, requester="alice@example.com", sha256=first["sha256"])
    assert [r["approval_id"] for r in found] == [again["approval_id"], first["approval_id"]]  # newest first
    with_session = store.find_approvals(target=target, requester="alice@example.com", sha256=ap.statement_sha256("x"),
                                        session_id="s1")
    assert {r["approval_id"] for r in with_session} == {first["approval_id"], other["approval_id"]}
    assert store.find_approvals(target=target, requester="carol@example.com", sha256=first["sha256"]) == []


def test_lists_page_explicitly(store):
    target = f"t-{uuid.uuid4().hex[:8]}"
    now = time.time()
    ids = []
    for i in range(7):
        record = _request(f"DROP TABLE p{i}", target=target, now=now - 100 + i)
        store.create_approval(record)
        ids.append(record["approval_id"])
    newest_first = list(reversed(ids))
    pages = [[r["approval_id"] for r in store.list_approvals(status=ap.PENDING, target=target, limit=3, offset=o)]
             for o in (0, 3, 6)]
    assert pages == [newest_first[0:3], newest_first[3:6], newest_first[6:7]]


def test_expiry_takes_the_oldest_overdue_first_and_finishes(store):
    target = f"t-{uuid.uuid4().hex[:8]}"
    now = time.time()
    overdue = []
    for i in range(20):
        record = _request(f"DROP TABLE old{i}", target=target, now=now - 7200 - i, ttl=60)
        store.create_approval(record)
        overdue.append(record["approval_id"])
    for i in range(60):  # newer pending requests, not due: they must not starve the overdue ones
        store.create_approval(_request(f"DROP TABLE new{i}", target=target, now=now + i))
    expired = ap.expire_due(_Backends(store), now=now, batch=7)  # several bounded batches
    assert sorted(r["approval_id"] for r in expired if r["target"] == target) == sorted(overdue)
    assert all(store.get_approval(i)["status"] == ap.EXPIRED for i in overdue)
    assert store.overdue_approvals(now, 10) == [] or all(r["target"] != target for r in store.overdue_approvals(now, 10))


def test_cli_list_says_when_there_is_another_page(tmp_path):
    home = tmp_path / "home"
    store = SqliteState(home / "state.sqlite3")
    for i in range(5):
        store.create_approval(_request(f"DROP TABLE c{i}", target="demo", now=time.time() - 10 + i))
    (home / "policy.yaml").write_text("version: 1\nidentity: {issuer: 'https://idp.example', audience: a}\ntargets: {}\n")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "jitgate.cli", "--home", str(home), "approvals", "list", *args],
                              capture_output=True, text=True, timeout=60)

    first = cli("--limit", "2")
    assert first.returncode == 0, first.stderr
    assert "page 1: requests 1-2; more on the next page: --page 2" in first.stdout
    last = cli("--limit", "2", "--page", "3", "--json")
    assert json.loads(last.stdout)["more"] is False and len(json.loads(last.stdout)["requests"]) == 1
