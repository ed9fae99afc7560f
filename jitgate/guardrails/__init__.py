"""Guardrails: pure classifiers that turn a statement or command into risk classes.

The classifiers never touch the network or the disk and never decide anything
themselves: they name what a statement does (``ddl``, ``dml_unbounded``,
``destructive`` ...) and the policy (``jitgate.policy``) says whether each class
is allowed, refused or waits for a human. Both fail closed: text they cannot
read with confidence is ``unclassified``.

- ``classify_sql`` (``jitgate.guardrails.sql``): PostgreSQL statements, parsed
  by PostgreSQL's own grammar (pglast).
- ``classify_command`` (``jitgate.guardrails.shell``): shell command lines and
  argv lists for SSH and kubectl exec.
"""
from jitgate.guardrails.shell import classify_command
from jitgate.guardrails.sql import (
    Classification,
    StatementVerdict,
    classify_function_call_oid,
    classify_sql,
)

__all__ = [
    "Classification",
    "StatementVerdict",
    "classify_command",
    "classify_function_call_oid",
    "classify_sql",
]
