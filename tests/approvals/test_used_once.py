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
