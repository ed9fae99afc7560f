"""The broker's Prometheus endpoint counts what happened, without users or statements in labels."""
from __future__ import annotations

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families


def _scrape(stack) -> dict[tuple, float]:
    body = httpx.get(f"http://{stack.broker_info['metrics']}/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_count_statements_and_refusals(stack, broker_dsn):
    before = _scrape(stack)
    allowed = ("jitgate_statements_total", (("decision", "allow"), ("kind", "postgres"), ("target", "demo")))
    refused = ("jitgate_connections_refused_total", (("code", "28000"), ("kind", "postgres")))
    with psycopg.connect(broker_dsn()) as conn:
        for _ in range(3):
            conn.execute("SELECT 1").fetchone()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(broker_dsn(password="not-a-token"))
    after = _scrape(stack)
    assert after[allowed] - before.get(allowed, 0) >= 3
    assert after[refused] - before.get(refused, 0) >= 1
    assert any(name == "jitgate_statement_seconds_count" for name, _ in after)
    labels = {value for _, items in after for _, value in items}
    assert "alice@example.com" not in labels and "SELECT 1" not in labels


def test_the_statement_tally_exposes_what_a_counter_and_histogram_would():
    """broker/metrics.StatementTally replaces a prometheus Counter and Histogram on the per-statement
    path (issue 18): a scrape must read the same samples (bucket edges included) as from those."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from broker.metrics import StatementTally

    tally, registry = StatementTally(), CollectorRegistry()
    counter = Counter("jitgate_statements_total", "c", ["kind", "target", "decision"], registry=registry)
    histogram = Histogram("jitgate_statement_seconds", "h", ["kind"], buckets=StatementTally.BUCKETS, registry=registry)
    for i, seconds in enumerate([0.0, 0.0004, 0.0005, 0.00051, 0.003, 1, 1.5, 60, 61, 1e9]):
        decision = ("allow", "deny")[i % 2]
        tally.decisions("postgres", "demo", decision)[0] += 1
        counter.labels("postgres", "demo", decision).inc()
        for kind in ("postgres", "ssh"):
            StatementTally.observe(tally.seconds(kind), seconds)
            histogram.labels(kind).observe(seconds)

    def samples(families):
        return sorted((s.name, tuple(sorted(s.labels.items())), s.value) for family in families for s in family.samples
                      if not s.name.endswith("_created"))

    assert samples(tally.collect()) == samples(registry.collect())
    assert len(samples(tally.collect())) == 2 + 2 * (len(StatementTally.BUCKETS) + 3)
