"""Prometheus metrics of the broker (scraped at /metrics on JITGATE_METRICS_LISTEN).

Labels are bounded sets (protocol kind, target name from the policy, decision,
guardrail class): never a user, a statement or a session id.
"""
from __future__ import annotations

import bisect
import itertools

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

REGISTRY = CollectorRegistry()

SESSIONS = Counter("jitgate_sessions_total", "Sessions opened, by protocol and target.", ["kind", "target"], registry=REGISTRY)
SESSIONS_ACTIVE = Gauge("jitgate_sessions_active", "Sessions open now.", registry=REGISTRY)
GUARDRAIL_HITS = Counter(
    "jitgate_guardrail_classes_total", "Guardrail classes of statements that were not plainly allowed.",
    ["target", "class"], registry=REGISTRY,
)
REFUSED_CONNECTIONS = Counter(
    "jitgate_connections_refused_total", "Connections refused before a session started, by protocol and reason code.",
    ["kind", "code"], registry=REGISTRY,
)
AUTHORIZE_CALLS = Gauge("jitgate_authorize_calls", "Calls made to functions/authorize (grant cache misses).", registry=REGISTRY)


class StatementTally(Collector):
    """``jitgate_statements_total`` and ``jitgate_statement_seconds`` as plain numbers that the
    sessions add to on the event loop and a scrape reads: a Counter.inc and a Histogram.observe
    (a lock each, a loop over the buckets) cost more than the rest of recording a statement's
    result (issue 18). Same names, labels and buckets as the Counter and Histogram they replace."""

    BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

    def __init__(self):
        self._decisions: dict[tuple[str, str, str], list[int]] = {}
        self._seconds: dict[str, list[float]] = {}

    def decisions(self, kind: str, target: str, decision: str) -> list[int]:
        """The one-element count of (kind, target, decision): ``tally[0] += 1``."""
        return self._decisions.setdefault((kind, target, decision), [0])

    def seconds(self, kind: str) -> list[float]:
        """Per-bucket counts (the last one +Inf) and then the sum, for ``observe(tally, seconds)``."""
        return self._seconds.setdefault(kind, [0] * (len(self.BUCKETS) + 1) + [0.0])

    @classmethod
    def observe(cls, tally: list[float], seconds: float) -> None:
        tally[bisect.bisect_left(cls.BUCKETS, seconds)] += 1  # the first bucket with seconds <= le
        tally[-1] += seconds

    def collect(self):
        statements = CounterMetricFamily("jitgate_statements", "Statements and commands seen, by protocol, target "
                                         "and decision.", labels=["kind", "target", "decision"])
        for labels, count in list(self._decisions.items()):
            statements.add_metric(labels, count[0])
        yield statements
        seconds = HistogramMetricFamily("jitgate_statement_seconds", "Time from forwarding a statement to its "
                                        "completion upstream.", labels=["kind"])
        for kind, tally in list(self._seconds.items()):
            cumulative = list(itertools.accumulate(tally[:-1]))
            bounds = [floatToGoString(b) for b in self.BUCKETS] + ["+Inf"]
            seconds.add_metric([kind], list(zip(bounds, cumulative)), tally[-1])
        yield seconds


STATEMENTS = StatementTally()
REGISTRY.register(STATEMENTS)


def render() -> bytes:
    return generate_latest(REGISTRY)
