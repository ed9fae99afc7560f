"""Hostile policy files: every one is a PolicyError with a line and a reason (never a TypeError,
AttributeError or RecursionError), it takes bounded time, and a reload keeps the last good policy."""
from __future__ import annotations

import logging

import pytest

from jitgate.policy import MAX_YAML_DEPTH, MAX_YAML_VALUES, PolicyError, PolicyHolder, parse_policy
from tests.jitgate.test_policy import BASE


def _laughs(levels: int) -> str:
    lines = ["  a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "x:\n" + "\n".join(lines) + f"\nidentity: {{issuer: *a{levels - 1}}}\ntargets: {{t: {{kind: *a{levels - 1}}}}}\n"


HOSTILE = {
    "a list as a key": ("? [a, b]\n: 1\n", 1, "a key must be a plain name"),
    "a mapping as a key": ("targets:\n  {? {a: 1} : 2}\n", 2, "a key must be a plain name"),
    "a set as a key": ("? !!set {a}\n: 1\n", 1, "a key must be a plain name"),
    "a bad timestamp": ("version: !!timestamp 2001-12-p4\n", 1, "'2001-12-p4' is not a valid timestamp"),
    "an integer of 5000 digits": ("version: " + "1" * 5000 + "\n", 1, "is not a valid int"),
    "4000 nested flow lists": ("[" * 4000 + "]" * 4000, 1, f"nested more than {MAX_YAML_DEPTH} levels deep"),
    "5000 nested flow maps": ("a: " + "{a: " * 5000 + "1" + "}" * 5000, 1, f"nested more than {MAX_YAML_DEPTH} levels"),
    "3000 nested block maps": ("".join(" " * i + "a:\n" for i in range(3000)), MAX_YAML_DEPTH, "nested more than"),
    "an alias inside itself": ("a: &a [*a]\n", 1, "an alias refers to a value that contains it"),
    "a billion laughs": (_laughs(9), 7, f"aliases expand this to more than {MAX_YAML_VALUES} values"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_yaml_is_a_policy_error_with_line(case):
    text, line, message = HOSTILE[case]
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "policy.yaml")
    assert message in str(err.value), str(err.value)
    assert err.value.problems[0].line == line, str(err.value)


def test_aliases_within_the_limits_still_load():
    text = BASE.replace("      groups: [sre]\n", "      groups: &people [sre]\n").replace(
        "  - groups: [dba]", "  - groups: *people")
    assert text.count("*people") == 1
    policy = parse_policy(text)
    assert policy.targets["prod-db"].overrides[0].groups == ["sre"]


@pytest.mark.parametrize("case", list(HOSTILE))
def test_reload_of_hostile_file_keeps_last_good_policy_and_logs_why(case, tmp_path, caplog):
    path = tmp_path / "policy.yaml"
    path.write_text(BASE)
    holder = PolicyHolder(path)
    assert "prod-db" in holder.policy.targets
    path.write_text(HOSTILE[case][0])
    with caplog.at_level(logging.ERROR, logger="jitgate.policy"):
        assert "prod-db" in holder.policy.targets
    assert "policy reload refused; the last good policy stays in force" in caplog.text
    assert HOSTILE[case][2] in caplog.text
