"""The broker's own record of the one-time approvals it consumed (broker.approvals.UsedOnce):
it outlives the broker process, forgets what can no longer be used, and skips lines it cannot read."""
from __future__ import annotations

import json
import time

from broker.approvals import UsedOnce


def test_a_use_is_remembered_by_the_next_broker_process(tmp_path):
    path = tmp_path / "used.jsonl"
    first = UsedOnce(path)
    first.add("apr_live", time.time() + 600)
    assert "apr_live" in first
    assert "apr_live" in UsedOnce(path)  # what a restarted broker reads
    assert "apr_other" not in UsedOnce(path)


def test_expired_uses_are_forgotten_and_the_file_compacted(tmp_path):
    path = tmp_path / "used.jsonl"
    used = UsedOnce(path)
    used.add("apr_gone", time.time() - 1)
    used.add("apr_live", time.time() + 600)
    again = UsedOnce(path)
    assert "apr_live" in again and "apr_gone" not in again
    assert [json.loads(line)["approval_id"] for line in path.read_text().splitlines()] == ["apr_live"]


def test_unreadable_lines_are_skipped_and_the_rest_kept(tmp_path):
    path = tmp_path / "used.jsonl"
    path.write_text('not json\n{"approval_id": "apr_x"}\n' + json.dumps({"approval_id": "apr_live", "until": time.time() + 600}) + "\n")
    used = UsedOnce(path)
    assert "apr_live" in used and "apr_x" not in used


def test_without_a_file_uses_are_kept_in_memory(tmp_path):
    used = UsedOnce(None)
    used.add("apr_mem", time.time() + 600)
    assert "apr_mem" in used
    unwritable = UsedOnce(tmp_path / "missing-dir" / "used.jsonl")
    unwritable.add("apr_mem", time.time() + 600)  # logged, still remembered for this process
    assert "apr_mem" in unwritable


# --- the store's create-only use record (update_approval(once=True)) -------------------------------

import threading  # noqa: E402

import pytest  # noqa: E402

from jitgate import approvals as ap  # noqa: E402
from jitgate.policy import ApprovalConfig  # noqa: E402


def _approved(store) -> dict:
    record = ap.new_request(requester="alice@example.com", requester_groups={"sre"}, target="demo", session_id="s1",
                            statement="ALTER TABLE orders ADD COLUMN x int", classes={"ddl"},
                            config=ApprovalConfig(approver_groups=["dba"], grant_window=0), now=time.time())
    store.create_approval(record)
    return store.update_approval(record["approval_id"], lambda r: {**r, "status": ap.APPROVED})


def _consume(record: dict) -> dict:
    return ap.use(dict(record, status=ap.APPROVED))


def _rewind(backends, record: dict) -> None:
    """A process with write access to the store puts the consumed record back as approved."""
    rewound = dict(record, status=ap.APPROVED, uses=0)
    if backends.name == "gcp":
        backends.approvals.approvals.document(record["approval_id"]).update(
            {"status": ap.APPROVED, "record": json.dumps(rewound)})
    else:
        with backends.approvals._conn() as db:
            db.execute("UPDATE approvals SET status=?, record=? WHERE approval_id=?",
                       (ap.APPROVED, json.dumps(rewound), record["approval_id"]))


@pytest.fixture(params=["embedded", "gcp"])
def store_backends(request, tmp_path):
    if request.param == "gcp":
        return request.getfixturevalue("gcp_backends")
    from jitgate.backends import open_backends
    from jitgate.settings import Settings

    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\n")
    return open_backends(Settings.from_env({"JITGATE_HOME": str(tmp_path), "JITGATE_POLICY": str(policy)}))


def test_a_consumed_approval_rewound_in_the_store_is_not_consumed_again(store_backends):
    """Attack: after a one-time approval was used, a store writer puts its record back as approved;
    a broker with no memory of the use (a new VM, another broker of the group) reads it.
    Decision: the store's create-only use record refuses the second use; nothing changes."""
    store = store_backends.approvals
    record = _approved(store)
    used = store.update_approval(record["approval_id"], _consume, once=True)
    assert used["status"] == ap.CONSUMED and used["uses"] == 1
    _rewind(store_backends, used)
    assert store.get_approval(record["approval_id"])["status"] == ap.APPROVED  # the rewind took
    assert store.update_approval(record["approval_id"], _consume, once=True) is None
    assert store.get_approval(record["approval_id"])["uses"] == 0  # left as the writer put it: not used again
    # Without once (windowed grants, decisions) the store behaves as before.
    assert store.update_approval(record["approval_id"], lambda r: dict(r, note="x"))["note"] == "x"


def test_two_brokers_consuming_at_once_use_it_once(store_backends):
    """Race: the same rewound approval consumed by two brokers at the same moment. Decision: one use."""
    store = store_backends.approvals
    record = _approved(store)
    results: list = []
    start = threading.Barrier(4)

    def consume():
        start.wait()
        results.append(store.update_approval(record["approval_id"], _consume, once=True))

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results) == 4 and sum(r is not None for r in results) == 1, results


def test_store_unreachable_at_the_use_refuses_the_statement(gcp_env, tmp_path, monkeypatch):
    """Fail closed: when the use cannot be written to the store (Firestore unreachable), the
    statement does not run, and the refusal says why and what to do."""
    import asyncio

    from broker.approvals import ApprovalStep
    from broker.session import Verdict
    from jitgate.backends import open_backends
    from jitgate.devstack import free_port
    from jitgate.settings import Settings
    from tests.broker.test_session_decisions import _session

    dead = dict(gcp_env, FIRESTORE_EMULATOR_HOST=f"127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", dead["FIRESTORE_EMULATOR_HOST"])
    backends = open_backends(Settings.from_env(dead))
    step = ApprovalStep(backends, used_once_path=tmp_path / "used.jsonl")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        import tests.broker.test_session_decisions as decisions

        decisions._LOOP = loop
        session = _session(tmp_path / "session")
        record = {"approval_id": "apr_unreachable"}
        verdict = loop.run_until_complete(step._run_under(session, record, "ALTER TABLE orders ADD COLUMN x int",
                                                          Verdict("approve", ("ddl",)), reused=False))
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    assert verdict.action == "deny"
    assert "could not be marked as used in the approvals store" in verdict.message and "did not run" in verdict.message
    assert "apr_unreachable" not in step._used_once
