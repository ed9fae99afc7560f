"""Every command of the shell corpus gets its expected decision, for agents (allow-list) and people."""
from __future__ import annotations

import pytest

from jitgate.guardrails.shell import MAX_COMMAND_BYTES, classify_command
from jitgate.policy import AccessRule, CommandsPolicy, Target
from jitgate.policy_explain import explain_command
from tests.guardrails.shell_corpus import ISSUE_13, MUST_STAY_ALLOWED, OWN

_COMMON = dict(kind="ssh", address="127.0.0.1:22", username="u", credential="env:KEY", host_key="ssh-ed25519 AAAA",
               allow=AccessRule(groups=["agents", "people"]))
AGENT = Target(**_COMMON, commands=CommandsPolicy(mode="allowlist", approve_others=True), shells="approve")
PERSON = Target(**_COMMON)
LETTER = {"allow": "A", "approve": "H", "deny": "D"}
GROUPS = frozenset({"agents"})


def _decide(target: Target, command: str) -> str:
    return LETTER[explain_command(target, command, GROUPS).action]


def _id(command: str) -> str:
    return repr(command)[:70]


@pytest.mark.parametrize(("command", "agent", "person"), ISSUE_13 + OWN, ids=[_id(c) for c, _, _ in ISSUE_13 + OWN])
def test_corpus_decisions(command: str, agent: str, person: str) -> None:
    got = (_decide(AGENT, command), _decide(PERSON, command))
    assert got == (agent, person), explain_command(AGENT, command, GROUPS).to_dict()


@pytest.mark.parametrize("command", MUST_STAY_ALLOWED, ids=[_id(c) for c in MUST_STAY_ALLOWED])
def test_read_only_commands_stay_allowed_for_agents(command: str) -> None:
    decision = explain_command(AGENT, command, GROUPS)
    assert decision.action == "allow", decision.to_dict()


def test_corpus_size() -> None:
    assert len(ISSUE_13) >= 30
    assert len(OWN) + len(MUST_STAY_ALLOWED) >= 150
    held_or_refused = [c for c, agent, _ in OWN if agent != "A"]
    assert len(held_or_refused) >= 150


def test_policy_allow_entries_extend_the_list() -> None:
    target = Target(**_COMMON, commands=CommandsPolicy(mode="allowlist", allow=["git fetch", "make"]))
    assert explain_command(target, "git fetch origin", GROUPS).action == "allow"
    assert explain_command(target, "make test", GROUPS).action == "allow"
    assert explain_command(target, "git push origin", GROUPS).action == "approve"
    # an allow entry never lifts a guardrail class: make into /etc is still a system write
    assert explain_command(target, "make > /etc/x", GROUPS).action == "approve"


def test_deny_others() -> None:
    target = Target(**_COMMON, commands=CommandsPolicy(mode="allowlist", approve_others=False))
    assert explain_command(target, "touch x", GROUPS).action == "deny"
    assert explain_command(target, "ls -la", GROUPS).action == "allow"


def test_size_cap_is_unclassified_with_a_clear_error() -> None:
    result = classify_command("ls;" * (MAX_COMMAND_BYTES // 3 + 1))
    assert result.classes == {"unclassified"}
    assert "bytes; the shell guardrail parses at most" in result.error


def test_work_is_bounded_by_operation_count(monkeypatch) -> None:
    """A command under the size cap but with many commands stops at the work cap, counted in operations."""
    import jitgate.guardrails.shell as shell

    spent = []
    original = shell._Context.spend

    def counting(self, amount=1):
        spent.append(amount)
        original(self, amount)

    monkeypatch.setattr(shell._Context, "spend", counting)
    result = classify_command("ls;" * 20000)
    assert result.classes == {"unclassified"} and "syntax elements" in result.error
    assert sum(spent) <= shell.MAX_WORK + 1
    spent.clear()
    brace_bomb = "echo " + "{a,b}" * 40  # 2**40 words if expanded
    assert classify_command(brace_bomb).classes == {"command"}
    assert sum(spent) < 1000


def test_nul_byte_is_refused_with_a_clear_error() -> None:
    decision = explain_command(PERSON, "ls\0 -la", GROUPS)
    assert decision.action == "deny"
    assert "NUL byte" in decision.classification.error
    assert explain_command(PERSON, ["ls", "a\0b"], GROUPS).action == "deny"
