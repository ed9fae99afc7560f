"""Policy loading: valid files load; typos are named with file, line and a hint."""
from __future__ import annotations

import textwrap

import pytest

from jitgate.policy import PolicyError, PolicyHolder, column_matches, parse_duration, parse_policy

BASE = textwrap.dedent(
    """\
    version: 1
    identity:
      issuer: https://idp.example.com
      audience: jitgate
    targets:
      prod-db:
        kind: postgres
        address: 10.0.0.5:5432
        database: app
        username: jitgate
        credential: gcp-secret:projects/p/secrets/prod-db/versions/latest
        allow:
          groups: [sre]
          users: [bob@example.com]
        guardrails:
          ddl: deny
        overrides:
          - groups: [dba]
            guardrails: {ddl: allow}
    """
)


def test_valid_policy_and_decisions():
    policy = parse_policy(BASE, "p.yaml")
    target = policy.target("prod-db")
    assert target.allow.admits("BOB@example.com", frozenset())
    assert not target.allow.admits("eve@example.com", frozenset({"dev"}))
    assert target.decide({"read"}, frozenset({"sre"})) == ("allow", [])
    assert target.decide({"ddl", "read"}, frozenset({"sre"})) == ("deny", ["ddl"])
    assert target.decide({"ddl"}, frozenset({"sre", "dba"})) == ("allow", [])
    assert target.decide({"dml_unbounded"}, frozenset({"sre"})) == ("approve", ["dml_unbounded"])
    assert target.decide({"unclassified"}, frozenset({"dba"})) == ("deny", ["unclassified"])
    assert len(policy.digest) == 16


@pytest.mark.parametrize(
    "old, new, line, message",
    [
        ("      groups: [sre]\n", "      gruops: [sre]\n", 13, "unknown field (did you mean 'groups'?)"),
        ("      ddl: deny", "      dll: deny", 15, "unknown guardrail class 'dll' (did you mean 'ddl'?)"),
        ("      ddl: deny", "      ddl: maybe", 16, "input should be 'allow', 'deny' or 'approve'"),
        ("    address: 10.0.0.5:5432", "    address: 10.0.0.5", 8, "is not host:port"),
        ("    kind: postgres", "    kind: mongodb", 7, "got 'mongodb'"),
        ("    credential: gcp-secret:projects/p/secrets/prod-db/versions/latest", "    credential: hunter2", 6,
         "must be a reference, not a secret"),
        ("    database: app\n", "", 6, "a postgres target needs database"),
    ],
)
def test_typos_are_reported_with_line(old, new, line, message):
    text = BASE.replace(old, new)
    assert text != BASE
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "policy.yaml")
    rendered = str(err.value)
    assert message in rendered, rendered
    assert any(p.line == line for p in err.value.problems) or f"policy.yaml:{line}:" in rendered, rendered


def test_yaml_syntax_error_and_duplicate_keys():
    with pytest.raises(PolicyError, match=r"policy.yaml:3: YAML syntax: found character '\\t'"):
        parse_policy("version: 1\nidentity:\n\tissuer: x\n", "policy.yaml")
    with pytest.raises(PolicyError, match="duplicate key 'prod-db'"):
        parse_policy(BASE + "  prod-db:\n    kind: ssh\n", "policy.yaml")


def test_holder_keeps_last_good_policy(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(BASE)
    errors = []
    holder = PolicyHolder(path, on_error=errors.append)
    assert "prod-db" in holder.policy.targets
    path.write_text(BASE.replace("prod-db", "prod_DB!"))
    assert "prod-db" in holder.policy.targets and errors
    path.write_text(BASE.replace("prod-db", "staging-db"))
    assert "staging-db" in holder.policy.targets


def test_durations_and_column_patterns():
    assert parse_duration("15m") == 900 and parse_duration("1h") == 3600 and parse_duration(30) == 30
    with pytest.raises(ValueError):
        parse_duration("soon")
    assert column_matches("*email*", "customers", "backup_email")
    assert column_matches("customers.card_number", "customers", "CARD_NUMBER")
    assert not column_matches("customers.card_number", "orders", "card_number")
    assert not column_matches("customers.card_number", None, "card_number")
