"""Policy keys for shell commands and shells: ``commands`` (deny-list or allow-list) and ``shells``,
per target and per group, their validation errors, and the ``jitgate policy explain`` dry run."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from jitgate.policy import PolicyError, parse_policy

POLICY = textwrap.dedent(
    """\
    version: 1
    identity: {issuer: https://idp.example.com, audience: jitgate}
    targets:
      web-1:
        kind: ssh
        address: 10.0.0.7:22
        username: deploy
        credential: env:KEY
        host_key: ssh-ed25519 AAAA
        allow: {groups: [agents, sre]}
        commands:
          mode: allowlist
          allow: [uptime, git fetch]
          approve_others: true
        shells: approve
        overrides:
          - groups: [sre]
            commands: {mode: denylist}
            shells: allow
    """
)


def test_per_target_and_per_group_settings():
    target = parse_policy(POLICY, "p.yaml").target("web-1")
    agents, sre = frozenset({"agents"}), frozenset({"sre"})
    assert target.commands_for(agents).mode == "allowlist"
    assert target.commands_for(agents).allow == ["uptime", "git fetch"]
    assert target.commands_for(sre).mode == "denylist"
    assert target.shells_for(agents) == "approve" and target.shells_for(sre) == "allow"
    # an interactive shell: the shells setting alone decides
    assert target.decide_command({"shell"}, (), agents) == ("approve", ["shell"])
    assert target.decide_command({"shell"}, (), sre) == ("allow", [])
    # something not on the read-only list: held for agents, runs for sre
    assert target.decide_command({"command"}, ("touch is not on the read-only list",), agents) == ("approve", ["not_read_only"])
    assert target.decide_command({"command"}, ("touch is not on the read-only list",), sre) == ("allow", [])


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ("commands: {mode: allowed}", "commands.mode: got 'allowed'"),
        ("commands: {mode: allowlist, allow: ['rm -rf /; x']}", "contains ';'"),
        ("commands: {mode: allowlist, allow: ['  ']}", "an allow entry is empty"),
        ("commands: {allow: [uptime]}", "'allow' entries only apply with mode: allowlist"),
        ("commands: {mode: allowlist, aprove_others: true}", "did you mean 'approve_others'"),
        ("shells: maybe", "shells: got 'maybe'"),
        ("overrides: [{groups: [sre]}]", "an override needs 'guardrails', 'commands', 'shells' or 'max_rows_changed'"),
    ],
)
def test_validation_errors_name_the_line_and_the_fix(snippet, message):
    text = POLICY.split("    commands:\n")[0] + "    " + snippet + "\n"
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    assert message in str(info.value)
    assert "p.yaml:" in str(info.value)


def test_policy_explain_cli(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)

    def explain(groups: str, command: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "jitgate.cli", "policy", "explain", "--policy", str(path), "--target",
                               "web-1", "--user", "someone@example.com", "--groups", groups, "--command", command],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    held = explain("agents", "time -p sudo rm -rf {/,}")
    assert held["decision"] == "approve"
    assert held["classes"] == ["destructive", "privilege"]
    assert held["statements"][0]["reasons"] == ["sudo runs a command as another user", "rm -r on a broad path: /"]
    assert held["deciding_classes"] == ["destructive", "privilege", "not_read_only"]
    assert "sudo is not on the read-only list" in held["not_read_only"]
    assert explain("agents", "ls -la | grep x && uptime")["decision"] == "allow"
    assert explain("agents", "git fetch origin")["decision"] == "allow"
    assert explain("sre", "touch x")["decision"] == "allow"
    assert explain("sre", "python3 -c 'print(1)'")["decision"] == "deny"
    assert explain("agents", "")["decision"] == "approve"  # an interactive shell: shells: approve
    missing = subprocess.run([sys.executable, "-m", "jitgate.cli", "policy", "explain", "--policy", str(path), "--target",
                              "nope", "--user", "a@example.com", "--command", "ls"], capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 2 and "no target 'nope'" in missing.stderr


def test_demo_policy_ssh_example_gives_agents_the_allow_list():
    from jitgate.devstack import demo_policy

    class FakePostgres:
        port = 5432
        BROKER_ROLE = "jitgate_broker"

    text = demo_policy("https://issuer.example", FakePostgres)
    uncommented = "\n".join(line[1:] if line.startswith("#  ") else line for line in text.splitlines())
    target = parse_policy(uncommented, "demo.yaml").target("web-1")
    assert target.commands_for(frozenset({"agents"})).mode == "allowlist"
    assert target.shells_for(frozenset({"agents"})) == "approve"
    assert target.commands_for(frozenset({"sre"})).mode == "denylist"
