"""`jitgate policy explain`: what the policy would decide for a statement, without running anything.

For policy authors and tests: the same classifier and the same ``Target.decide`` the
broker uses, printed as JSON. One function per kind of input (``explain_sql``,
``explain_shell``), all returning the same shape:

    {"target", "user", "groups", "kind", "input", "classes", "reasons", "statements",
     "decision": "allow" | "deny" | "approve", "deciding_classes", "notes"}
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from jitgate.guardrails.shell import ShellClassification, classify_command
from jitgate.policy import ALWAYS_DENIED, Policy, Target


class ExplainError(ValueError):
    """The question cannot be answered (unknown target, wrong kind); the text says what to change."""


def _target(policy: Policy, target_name: str, kind: str):
    target = policy.target(target_name)
    if target is None:
        known = ", ".join(sorted(policy.targets)) or "none"
        raise ExplainError(f"no target {target_name!r} in {policy.source or 'the policy'}; targets: {known}")
    if target.kind != kind:
        raise ExplainError(f"target {target_name!r} is of kind {target.kind!r}, not {kind!r}")
    return target


def _decision(target, user: str, groups: frozenset[str], classes: frozenset[str]) -> dict:
    """The decision exactly as the broker takes it, plus whether the caller may connect at all."""
    action, deciding = target.decide(classes, groups)
    notes = [f"{klass}: {ALWAYS_DENIED[klass]}" for klass in sorted(classes) if klass in ALWAYS_DENIED]
    if not target.allow.admits(user, groups):
        notes.append(f"{user} (groups: {', '.join(sorted(groups)) or 'none'}) may not connect to this target at all")
        action, deciding = "deny", []
    return {"decision": action, "deciding_classes": list(deciding), "notes": notes}


def explain_sql(policy: Policy, target_name: str, user: str, groups: frozenset[str], sql: str) -> dict:
    """Classes, reasons and decision for one SQL text (a simple Query or a Parse) on a postgres target."""
    from jitgate.guardrails.sql import classify_sql_in_session, unmeasured_reason  # noqa: PLC0415 - pglast only when asked

    target = _target(policy, target_name, "postgres")
    result = classify_sql_in_session(sql, {})
    reasons = [r for s in result.statements for r in s.reasons]
    if result.error and result.error not in reasons:
        reasons.append(result.error)
    decision = _decision(target, user, groups, result.classes)
    limit = target.row_limit(groups)
    unmeasured = unmeasured_reason(result.writes_rows, result.unmeasurable)
    if decision["decision"] == "allow" and unmeasured:
        decision.update(decision="approve", deciding_classes=[])
        decision["notes"].append(f"needs approval: {unmeasured}")
    elif decision["decision"] == "allow" and result.writes_rows:
        decision["notes"].append(f"measured when it runs: over {limit} changed rows it is rolled back and held for approval")
    return {
        "target": target_name,
        "user": user,
        "groups": sorted(groups),
        "kind": "sql",
        "input": sql,
        "classes": sorted(result.classes),
        "reasons": reasons,
        "statements": [{"text": s.text, "classes": sorted(s.classes), "reasons": list(s.reasons)}
                       for s in result.statements],
        "writes_rows": result.writes_rows,
        "max_rows_changed": limit,
        **decision,
    }


# --- shell commands (SSH exec and shells, kubectl exec, the agent exec tool) -------------

NUL_REFUSAL = "it contains a NUL byte, which no shell command can hold; remove it and send the command again"


@dataclass(frozen=True)
class CommandDecision:
    """The broker's decision for one shell command (``Session.decide_command`` uses it as is)."""

    action: str  # allow | approve | deny
    why: tuple[str, ...]  # the classes (or "shell", "not_read_only") that decided it
    classification: ShellClassification
    mode: str  # commands.mode for this caller
    shells: str  # the shells setting for this caller

    @property
    def reasons(self) -> tuple[str, ...]:
        result = self.classification
        reasons = tuple(r for s in result.statements for r in s.reasons)
        if result.error and result.error not in reasons:
            reasons += (result.error,)
        if "not_read_only" in self.why:
            reasons += tuple(f"not read-only: {u}" for u in result.unlisted)
        return reasons


def explain_command(target: Target, command: str | Sequence[str], groups: frozenset[str]) -> CommandDecision:
    """Classify a shell command line (or exec argv) and decide it for a caller in ``groups``."""
    commands = target.commands_for(groups)
    shells = target.shells_for(groups)
    parts = [command] if isinstance(command, str) else list(command)
    if any("\0" in part for part in parts):
        result = classify_command(command)  # unclassified, with the NUL error
        return CommandDecision("deny", ("unclassified",), result, commands.mode, shells)
    result = classify_command(command, tuple(commands.allow))
    action, why = target.decide_command(result.classes, result.unlisted, groups)
    return CommandDecision(action, tuple(why), result, commands.mode, shells)


def explain_shell(policy: Policy, target_name: str, user: str, groups: frozenset[str], command: str) -> dict:
    """Commands, classes, reasons and decision for one shell command line on an ssh or kubernetes target."""
    target = policy.target(target_name)
    if target is None:
        known = ", ".join(sorted(policy.targets)) or "none"
        raise ExplainError(f"no target {target_name!r} in {policy.source or 'the policy'}; targets: {known}")
    if target.kind not in ("ssh", "kubernetes"):
        raise ExplainError(f"target {target_name!r} is of kind {target.kind!r}; --command applies to ssh and "
                           "kubernetes targets")
    decision = explain_command(target, command, groups)
    result = decision.classification
    answer = {"decision": decision.action, "deciding_classes": list(decision.why), "notes": []}
    if not target.allow.admits(user, groups):
        answer["notes"].append(f"{user} (groups: {', '.join(sorted(groups)) or 'none'}) may not connect to this "
                               "target at all")
        answer.update(decision="deny", deciding_classes=[])
    return {
        "target": target_name,
        "user": user,
        "groups": sorted(groups),
        "kind": "command",
        "input": command,
        "classes": sorted(result.classes),
        "reasons": list(decision.reasons),
        "statements": [{"text": s.text, "classes": sorted(s.classes), "reasons": list(s.reasons)}
                       for s in result.statements],
        "commands_mode": decision.mode,
        "shells": decision.shells,
        "not_read_only": list(result.unlisted),
        "error": result.error,
        **answer,
    }
