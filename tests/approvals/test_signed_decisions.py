"""Only a decision signed by the approvals service releases a held statement.

Attacks, on both backend sets (the shared `stack` fixture runs embedded, then gcp):
- write "approved" (with a made-up approver and grant) straight into the store: raw SQL on the
  SQLite file, a raw document write on the Firestore emulator;
- the same with a decision signed by another Ed25519 key;
- copy a genuine signed decision from another request onto this one.
Each leaves the statement held (the broker says so in its log and the recording), and the table
unchanged; a real decision through the service then releases it.
"""
from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from jitgate import approvals as ap
from jitgate.backends import open_backends
from jitgate.keys import LocalSigner
from jitgate.settings import Settings
from tests.approval_helpers import decide_via_service, run_held, wait_pending


def _backends(stack):
    return open_backends(Settings.from_env(stack.env))


def _forge(record: dict, *, signer=None, decision=None) -> dict:
    now = time.time()
    forged = dict(record, status=ap.APPROVED, decided_by="mallory@example.com", decided_at=now, grant_until=now + 900,
                  approvals=[{"email": "mallory@example.com", "groups": ["dba"], "via": "cli", "display": "", "at": now}])
    if signer is not None:
        forged = ap.sign_decision(forged, signer)
    if decision is not None:
        forged["decision"] = decision
    return forged


def _write_raw(stack, forged: dict) -> None:
    """Write the record the way a process with store access would: not through jitgate's code."""
    if stack.env.get("JITGATE_BACKENDS") == "gcp":
        from google.cloud import firestore

        db = firestore.Client(project=stack.env["GOOGLE_CLOUD_PROJECT"])
        db.collection("approvals").document(forged["approval_id"]).update(
            {"status": forged["status"], "record": json.dumps(forged)})
    else:
        with sqlite3.connect(stack.home / "state.sqlite3") as db:
            db.execute("UPDATE approvals SET status=?, record=? WHERE approval_id=?",
                       (forged["status"], json.dumps(forged), forged["approval_id"]))


def _broker_noticed(stack, approval_id: str, timeout: float = 30) -> None:
    log = stack.home / "logs" / "broker.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "approval without a valid signed decision ignored" in text and approval_id in text:
            return
        time.sleep(0.1)
    raise AssertionError(f"the broker did not report the forged approval of {approval_id}")


def _column_exists(stack, column: str) -> bool:
    return stack.pg.psql(f"SELECT count(*) FROM information_schema.columns WHERE column_name = '{column}'", "demo") == "1"


@pytest.mark.parametrize("attack", ["unsigned", "other_key", "copied_decision"])
def test_store_write_does_not_release_a_held_statement(stack, broker_dsn, attack, tmp_path):
    backends = _backends(stack)
    column = f"forged_{attack}_{uuid.uuid4().hex[:6]}"
    out: dict = {}
    thread = run_held(broker_dsn("demo"), f"ALTER TABLE orders ADD COLUMN {column} int", out)
    record = wait_pending(backends, "demo", lambda r: column in r.get("statement", ""), what=column)
    if attack == "unsigned":
        forged = _forge(record)
    elif attack == "other_key":
        forged = _forge(record, signer=LocalSigner(tmp_path / "attacker.pem"))
    else:
        # A genuine decision for another request, signed by the service, pasted onto this one.
        other_column = f"donor_{uuid.uuid4().hex[:6]}"
        donor_out: dict = {}
        donor_thread = run_held(broker_dsn("demo"), f"ALTER TABLE orders ADD COLUMN {other_column} int", donor_out)
        donor = wait_pending(backends, "demo", lambda r: other_column in r.get("statement", ""), what=other_column)
        decide_via_service(stack, donor["approval_id"])
        donor_thread.join(30)
        assert donor_out.get("ok"), donor_out
        signed = backends.approvals.get_approval(donor["approval_id"])
        forged = _forge(record, decision=signed["decision"])
    _write_raw(stack, forged)
    _broker_noticed(stack, record["approval_id"])
    assert thread.is_alive(), out  # still held
    assert not _column_exists(stack, column)
    # A decision made and signed by the approvals service still releases it (the forged
    # "approved" does not block the real decision either).
    decide_via_service(stack, record["approval_id"])
    thread.join(30)
    assert out.get("ok"), out
    assert _column_exists(stack, column)
    assert backends.approvals.get_approval(record["approval_id"])["decided_by"] == "dana@example.com"


def test_tampered_grant_fields_are_ignored(stack, tmp_path):
    """trusted_view: the signed claims win over edited stored fields; a forged entry does not count."""
    signer = LocalSigner(tmp_path / "svc.pem")
    keys = {signer.key_id: __import__("jitgate.keys", fromlist=["load_public_key"]).load_public_key(signer.public_key_pem())}
    from jitgate.policy import ApprovalConfig

    record = ap.new_request(requester="alice@example.com", requester_groups={"sre"}, target="demo", session_id="s1",
                            statement="DELETE FROM orders", classes={"dml_unbounded"},
                            config=ApprovalConfig(approver_groups=["dba"], grant_window=0), now=1000.0)
    approved = ap.decide(record, ap.Approver("dana@example.com", frozenset({"dba"})), "approve", now=1001.0)
    signed = ap.sign_decision(approved, signer)
    assert ap.trusted_view(signed, keys)["grant_until"] == 1001.0
    edited = dict(signed, grant_until=10**10, grant_window=900, sha256=ap.statement_sha256("DROP TABLE orders"))
    assert ap.trusted_view(edited, keys) is None  # another statement than the one signed
    widened = dict(signed, grant_until=10**10, grant_window=900)
    assert ap.trusted_view(widened, keys)["grant_until"] == 1001.0 and ap.trusted_view(widened, keys)["grant_window"] == 0
    # An approver entry written into the store without the service's signature is not counted.
    two = ap.new_request(requester="alice@example.com", requester_groups={"sre"}, target="demo", session_id="s1",
                         statement="DELETE FROM orders", classes={"dml_unbounded"},
                         config=ApprovalConfig(approver_groups=["dba"], required=2), now=1000.0)
    two["approvals"] = [{"email": "mallory@example.com", "groups": ["dba"], "via": "cli", "display": "", "at": 1000.5}]
    assert ap.verified_entries(two, keys) == []


ONCE_TARGET = """
  demo-once:
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
      wait: 60s  # released as soon as decided; a loaded machine can take seconds to decide
      grant_window: 0
"""


def test_a_consumed_one_time_approval_put_back_in_the_store_releases_nothing(stack, broker_dsn):
    """A store writer restores a consumed one-time approval as it was before (approved, genuine
    signed decision, no uses): the broker remembers the use, on its disk too, and refuses the statement."""
    stack.add_targets(ONCE_TARGET)
    backends = _backends(stack)
    column = f"once_{uuid.uuid4().hex[:6]}"
    statement = f"ALTER TABLE orders ADD COLUMN IF NOT EXISTS {column} int"
    out: dict = {}
    thread = run_held(broker_dsn("demo-once"), statement, out)
    record = wait_pending(backends, "demo-once", lambda r: column in r.get("statement", ""), what=column)
    decide_via_service(stack, record["approval_id"])
    thread.join(30)
    assert out.get("ok"), out
    used = backends.approvals.get_approval(record["approval_id"])
    assert used["status"] == ap.CONSUMED and used["uses"] == 1, used
    remembered = (stack.home / "spool-used-approvals.jsonl")
    if stack.env.get("JITGATE_SPOOL_DIR"):
        spool = Path(stack.env["JITGATE_SPOOL_DIR"])
        remembered = spool.parent / f"{spool.name}-used-approvals.jsonl"
    assert record["approval_id"] in remembered.read_text(), "the use was not kept on the broker's disk"

    approved = dict(used, status=ap.APPROVED, uses=0)
    approved.pop("last_used_at", None)
    _write_raw(stack, approved)
    with psycopg.connect(broker_dsn("demo-once"), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as held:
            conn.execute(statement)
    assert f"approval {record['approval_id']} no longer covers this statement" in str(held.value), str(held.value)
    assert backends.approvals.get_approval(record["approval_id"]).get("uses") == 0  # not used again


def test_a_consumed_one_time_approval_put_back_stays_used_on_a_new_broker_vm(stack, broker_dsn, tmp_path):
    """Attack: after a one-time approval was used, get the broker VM recreated (its disk, and the
    used-approvals file on it, gone) and put the record back in the store as it was before
    (approved, genuine signed decision, no uses). Decision: the new broker refuses the statement,
    because the store kept a create-only use record of the first use."""
    from jitgate.devstack import start_broker

    stack.add_targets(ONCE_TARGET)
    backends = _backends(stack)
    column = f"vm_{uuid.uuid4().hex[:6]}"
    statement = f"ALTER TABLE orders ADD COLUMN IF NOT EXISTS {column} int"
    out: dict = {}
    thread = run_held(broker_dsn("demo-once"), statement, out)
    record = wait_pending(backends, "demo-once", lambda r: column in r.get("statement", ""), what=column)
    decide_via_service(stack, record["approval_id"])
    thread.join(30)
    assert out.get("ok"), out
    used = backends.approvals.get_approval(record["approval_id"])
    assert used["status"] == ap.CONSUMED and used["uses"] == 1, used
    approved = dict(used, status=ap.APPROVED, uses=0)
    approved.pop("last_used_at", None)
    _write_raw(stack, approved)
    # The same deployment (keys, store, policy) on a fresh disk: no used-approvals file.
    spool = tmp_path / "spool"
    env = dict(stack.env, JITGATE_PG_LISTEN="127.0.0.1:0", JITGATE_SSH_LISTEN="", JITGATE_HTTP_LISTEN="",
               JITGATE_K8S_LISTEN="", JITGATE_SPOOL_DIR=str(spool), JITGATE_BROKER_ID="broker-new-vm")
    proc, info = start_broker(stack.home, env, stack.home / "logs", name="broker-new-vm")
    try:
        port = int(info["pg"].rpartition(":")[2])
        dsn = broker_dsn("demo-once").replace(f"port={stack.broker_port}", f"port={port}")
        with psycopg.connect(dsn, autocommit=True) as conn:
            with pytest.raises(psycopg.Error) as held:
                conn.execute(statement)
    finally:
        proc.stop()
    assert f"approval {record['approval_id']} no longer covers this statement" in str(held.value), str(held.value)
    remembered = spool.parent / f"{spool.name}-used-approvals.jsonl"
    assert not remembered.exists() or record["approval_id"] not in remembered.read_text()  # the new disk did not know
    assert backends.approvals.get_approval(record["approval_id"]).get("uses") == 0  # not used again
    log = (stack.home / "logs" / "broker-new-vm.log").read_text(errors="replace")
    assert "consumed one-time approval found approved again in the store" in log and "use record" in log, log[-2000:]
