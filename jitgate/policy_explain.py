"""`jitgate policy explain`: what the policy would decide for a statement, without running anything.

For policy authors and tests: the same classifier and the same ``Target.decide`` the
broker uses, printed as JSON. One function per kind of input (``explain_sql`` here;
shell commands get theirs beside it), all returning the same shape:

    {"target", "user", "groups", "kind", "input", "classes", "reasons", "statements",
     "decision": "allow" | "deny" | "approve", "deciding_classes", "notes"}
"""
from __future__ import annotations

from jitgate.policy import ALWAYS_DENIED, Policy


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
