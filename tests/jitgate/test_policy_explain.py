"""`jitgate policy explain --sql`: the broker's classifier and decision, as JSON, without running anything."""
from __future__ import annotations

import json

import pytest

from jitgate.cli import main
from jitgate.policy import PolicyError, parse_policy
from tests.jitgate.test_policy import BASE


@pytest.fixture()
def policy_file(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(BASE)
    return path


def _explain(capsys, policy_file, *args) -> tuple[int, dict | str]:
    code = main(["policy", "explain", "--policy", str(policy_file), *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else err)


@pytest.mark.parametrize(("sql", "groups", "decision", "classes"), [
    ("SELECT * FROM orders WHERE id = 7", "sre", "allow", ["read"]),
    ("DROP TABLE orders", "sre", "deny", ["ddl"]),  # ddl: deny on prod-db
    ("DROP TABLE orders", "sre,dba", "allow", ["ddl"]),  # the dba override
    ("DELETE FROM orders", "sre", "approve", ["dml_unbounded"]),
    ("explain (analyze false, analyze true) delete from orders", "sre", "approve", ["dml_unbounded", "read"]),
    ("SET standard_conforming_strings = off", "sre,dba", "deny", ["pinned_setting"]),
    ("SELECT set_config('search_path', 'evil', false)", "sre", "allow", ["read", "session"]),
    ("SELEC 1", "sre", "deny", ["unclassified"]),
])
def test_explain_prints_classes_reasons_and_decision(capsys, policy_file, sql, groups, decision, classes):
    code, answer = _explain(capsys, policy_file, "--target", "prod-db", "--user", "alice@example.com",
                            "--groups", groups, "--sql", sql)
    assert code == 0
    assert answer["decision"] == decision and answer["classes"] == classes
    assert answer["reasons"] and answer["statements"] and answer["kind"] == "sql" and answer["input"] == sql


def test_a_caller_outside_the_target_is_denied_with_a_note(capsys, policy_file):
    code, answer = _explain(capsys, policy_file, "--target", "prod-db", "--user", "eve@example.com",
                            "--groups", "guests", "--sql", "SELECT 1")
    assert code == 0 and answer["decision"] == "deny"
    assert any("may not connect" in n for n in answer["notes"])


def test_unknown_target_and_missing_input_are_clear_errors(capsys, policy_file):
    code, err = _explain(capsys, policy_file, "--target", "nope", "--user", "a", "--sql", "SELECT 1")
    assert code == 2 and "no target 'nope'" in err and "prod-db" in err
    with pytest.raises(SystemExit):
        main(["policy", "explain", "--policy", str(policy_file), "--target", "prod-db", "--user", "a"])


def test_pinned_setting_cannot_be_opened_by_a_policy():
    with pytest.raises(PolicyError) as err:
        parse_policy(BASE.replace("ddl: deny", "pinned_setting: allow", 1))
    assert "cannot be set to 'allow'" in str(err.value) and "lexing settings" in str(err.value)
