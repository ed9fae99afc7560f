"""Prometheus metrics of the broker (scraped at /metrics on JITGATE_METRICS_LISTEN).

Labels are bounded sets (protocol kind, target name from the policy, decision,
guardrail class): never a user, a statement or a session id.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry()

SESSIONS = Counter("jitgate_sessions_total", "Sessions opened, by protocol and target.", ["kind", "target"], registry=REGISTRY)
SESSIONS_ACTIVE = Gauge("jitgate_sessions_active", "Sessions open now.", registry=REGISTRY)
STATEMENTS = Counter(
    "jitgate_statements_total", "Statements and commands seen, by protocol, target and decision.",
    ["kind", "target", "decision"], registry=REGISTRY,
)
GUARDRAIL_HITS = Counter(
    "jitgate_guardrail_classes_total", "Guardrail classes of statements that were not plainly allowed.",
    ["target", "class"], registry=REGISTRY,
)
STATEMENT_SECONDS = Histogram(
    "jitgate_statement_seconds", "Time from forwarding a statement to its completion upstream.", ["kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
REFUSED_CONNECTIONS = Counter(
    "jitgate_connections_refused_total", "Connections refused before a session started, by protocol and reason code.",
    ["kind", "code"], registry=REGISTRY,
)
AUTHORIZE_CALLS = Gauge("jitgate_authorize_calls", "Calls made to functions/authorize (grant cache misses).", registry=REGISTRY)


def render() -> bytes:
    return generate_latest(REGISTRY)
