"""The lineage step cannot stall other sessions (issue 21): long text is parsed in the SQL
worker processes, repeats are dictionary lookups, one user cannot starve the others.

No wall-clock assertions: where the work happens is shown by counters (parses on the loop,
requests a worker answered), fairness by the order in which answers come back.
"""
from __future__ import annotations

import asyncio
import os
import signal

import pytest

from broker import sql_worker
from broker.pg import lineage_step
from broker.pg.lineage_step import INLINE_CHARS, LineageStep
from jitgate.masking import lineage
from jitgate.masking.lineage import Relation
from tests.masking.test_lineage import EMAIL, RecordedCatalog

# A statement over the inline limit that reads the masked column through an expression.
LONG = "SELECT reverse(email) || " + " || ".join(["'x'"] * 120) + " FROM customers"
# The parser's slowest shapes per character found at the inline limit (SELECT 1-1-1... is the worst).
WORST_SHAPES = ["SELECT 1" + "-1" * 600, "SELECT " + "1," * 600, "SELECT 1" + "||~1" * 300, "SELECT " + "+\ufffd" * 600,
                "SELECT " + "(" * 300 + "1" + ")" * 300, "SELECT 1;" * 100, "SELECT " + "(SELECT " * 100]


@pytest.fixture(autouse=True)
def fresh_needs_cache():
    """What a text mentions is cached for the whole process: each test starts without it."""
    lineage_step._NEEDS.clear()


@pytest.fixture
def workers(monkeypatch):
    """A private worker pool for the lineage step (each test closes it inside its event loop)."""

    def make(**kwargs):
        pool = sql_worker.ClassifierPool(**kwargs)
        monkeypatch.setattr(lineage_step, "pool", lambda: pool)
        return pool

    return make


def count_parses(monkeypatch) -> list:
    parsed = []
    real = lineage.parse

    def counting(sql):
        parsed.append(sql)
        return real(sql)

    monkeypatch.setattr(lineage, "parse", counting)
    return parsed


def test_long_statement_is_parsed_in_a_worker_and_repeats_cost_no_parse(workers, monkeypatch):
    assert len(LONG) > INLINE_CHARS
    parsed = count_parses(monkeypatch)

    async def run():
        pool = workers(workers=1, time_limit=120)
        step, fetch = LineageStep("alice"), RecordedCatalog()
        try:
            [first] = await step.follow(LONG, fetch)
            assert first.unknown is None and EMAIL in first.columns[0].sources
            assert not first.columns[0].direct  # derived: masked whole
            assert parsed == [] and step.parsed_inline == 0  # nothing parsed on the event loop
            served, queries = pool.served, len(fetch.queries)
            assert served == 2  # what it mentions, then its lineage
            [again] = await step.follow(LONG, fetch)
            assert again == first
            assert (pool.served, len(fetch.queries)) == (served, queries)  # a dictionary lookup
            # Another session: the same text's needs are shared, its own catalog is asked.
            other, other_fetch = LineageStep("bob"), RecordedCatalog()
            await other.follow(LONG, other_fetch)
            assert pool.served == served + 1 and other_fetch.queries
        finally:
            await pool.aclose()

    asyncio.run(run())


def test_short_repeated_statement_is_parsed_once(monkeypatch):
    parsed = count_parses(monkeypatch)
    step, fetch = LineageStep("alice"), RecordedCatalog()

    async def run():
        for _ in range(50):
            [result] = await step.follow("SELECT upper(email) AS u FROM customers WHERE id = 7", fetch)
            assert EMAIL in result.columns[0].sources

    asyncio.run(run())
    assert len(parsed) == 2  # its needs and its lineage, once each; 49 cache hits
    assert step.lookups == 1


def test_a_view_with_a_long_definition_sends_the_follow_to_a_worker(workers, monkeypatch):
    long_view = Relation("public.lv", "v", ("e",), "SELECT reverse(email) " + "|| 'x' " * 80 + "AS e FROM customers")
    monkeypatch.setitem(__import__("tests.masking.test_lineage", fromlist=["CATALOG"]).CATALOG.relations, "lv", long_view)
    parsed = count_parses(monkeypatch)

    async def run():
        pool = workers(workers=1, time_limit=120)
        step = LineageStep("alice")
        try:
            [result] = await step.follow("SELECT e FROM lv", RecordedCatalog())
            assert EMAIL in result.columns[0].sources
            assert step.parsed_in_worker == 2 and pool.served == 2  # the definition's needs, then the follow
            assert long_view.definition not in parsed
        finally:
            await pool.aclose()

    asyncio.run(run())


def test_cached_results_follow_taint_and_catalog_changes():
    """A cached result is never served after something it depends on changed."""
    step, fetch = LineageStep("alice"), RecordedCatalog()

    async def run():
        [plain] = await step.follow("SELECT notes FROM customers", fetch)
        assert plain.columns[0].direct and EMAIL not in plain.columns[0].sources
        await step.follow("UPDATE customers SET notes = reverse(email)", fetch)
        [tainted] = await step.follow("SELECT notes FROM customers", fetch)
        assert EMAIL in tainted.columns[0].sources and not tainted.columns[0].direct
        asked = len(fetch.queries)
        await step.follow("SET search_path = elsewhere, public", fetch)
        await step.follow("SELECT notes FROM customers", fetch)
        assert len(fetch.queries) > asked  # the catalog is asked again after a setting changed

    asyncio.run(run())


def test_cache_is_per_session_so_one_session_cannot_poison_another():
    """Same text, different catalogs (another user's search path or grants): different answers."""

    class NoCustomers(RecordedCatalog):
        async def __call__(self, sql):
            rows = await super().__call__(sql)
            return [r for r in rows if r[0] != "customers"]

    async def run():
        alice, bob = LineageStep("alice"), LineageStep("bob")
        [seen] = await alice.follow("SELECT reverse(email) FROM customers", RecordedCatalog())
        assert EMAIL in seen.columns[0].sources
        [unseen] = await bob.follow("SELECT reverse(email) FROM customers", NoCustomers())
        assert unseen.unknown and "not visible" in unseen.unknown  # fails closed, not alice's answer

    asyncio.run(run())


def test_caches_are_bounded():
    cache = sql_worker.BoundedCache(max_entries=8, max_chars=100)
    for i in range(1000):
        cache.put(f"statement {i}", i)
        assert len(cache) <= 8 and cache.chars <= 100
    cache.put("x" * 101, "too big")
    assert "x" * 101 not in cache and cache.chars <= 100

    step, fetch = LineageStep("alice"), RecordedCatalog()

    async def run():
        for i in range(400):
            await step.follow(f"SELECT id + {i} FROM orders", fetch)

    asyncio.run(run())
    assert len(step._results) <= step._results.max_entries < 400
    assert len(lineage_step._NEEDS) <= lineage_step._NEEDS.max_entries


def test_worst_shapes_under_the_inline_limit_are_bounded_by_their_length():
    """What the loop may parse is at most INLINE_CHARS, and the parse tree of the slowest
    shapes found is linear in it (the analyzer's work is per node)."""
    for shape in WORST_SHAPES:
        text = shape[:INLINE_CHARS]
        try:
            statements = lineage.parse(text)
        except lineage.LineageUnknown:
            continue  # cut mid-token: refused by the parser at once
        nodes = sum(1 for stmt in statements for _ in lineage._walk(stmt))
        assert nodes <= 4 * len(text), (shape[:20], nodes)  # 1-1: an expression, a constant, an operator name


def test_overrun_and_killed_worker_make_the_lineage_unknown(workers):
    slow = "SELECT 1" + "-1" * 100_000  # about a second or more to parse

    async def run():
        pool = workers(workers=1, time_limit=0.05)
        step = LineageStep("alice")
        try:
            [result] = await step.follow(slow, RecordedCatalog())
            assert result.unknown and "took longer than 0.05 s" in result.unknown
            assert pool.killed == 1
            pool.time_limit = 600
            task = asyncio.ensure_future(LineageStep("bob").follow(slow + "-2", RecordedCatalog()))
            for _ in range(6000):  # until the request is in a worker (generous: a loaded machine)
                if pool.busy:
                    break
                await asyncio.sleep(0.01)
            [busy] = pool.busy
            os.kill(busy.process.pid, signal.SIGKILL)
            [killed] = await task
            assert killed.unknown and "worker process failed" in killed.unknown
            # The pool recovers: a fresh worker answers the next long statement.
            [after] = await LineageStep("carol").follow(LONG, RecordedCatalog())
            assert EMAIL in after.columns[0].sources
        finally:
            await pool.aclose()

    asyncio.run(run())


def test_one_user_with_many_long_statements_does_not_starve_another(workers):
    texts = [f"SELECT {i} + " + " + ".join(["1"] * 200) for i in range(6)]

    async def run():
        pool = workers(workers=1, time_limit=600)
        order = []

        async def ask(owner, text):
            await pool.run("needs", text, owner=owner)
            order.append(owner)

        try:
            attacker = [asyncio.ensure_future(ask("mallory", t)) for t in texts[:5]]
            await asyncio.sleep(0)
            victim = asyncio.ensure_future(ask("alice", texts[5]))
            await asyncio.gather(*attacker, victim)
        finally:
            await pool.aclose()
        # mallory's five were queued first; alice's comes back second, not sixth.
        assert order.index("alice") == 1, order

    asyncio.run(run())


def _session_masker():
    from broker.masking import SessionMasker
    from jitgate.masking import Masker
    from jitgate.policy import MaskingConfig
    from tests.masking.helpers import KEY

    config = MaskingConfig.model_validate({"rules": [{"columns": ["email"]}, {"detectors": ["email", "card"]}]})
    return SessionMasker(Masker(config, KEY), None, None, owner="alice")


def test_long_free_text_is_masked_in_a_worker_like_on_the_loop(monkeypatch):
    from broker import masking

    masker = _session_masker()
    text = "bob@example.com " + "@" * 70_000 + " 4111 1111 1111 1111"
    assert len(text) > masking.FREE_TEXT_INLINE

    async def run():
        pool = sql_worker.ClassifierPool(workers=1, time_limit=600)
        monkeypatch.setattr(sql_worker, "pool", lambda: pool)
        try:
            masked = await masker.mask_text_off_loop(text)
            assert pool.served == 1  # masked in the worker...
            assert masked == masker.mask_text(text)  # ...exactly as on the loop (truncation included)
            assert "bob@example.com" not in masked
            short = await masker.mask_text_off_loop("mail bob@example.com")
            assert pool.served == 1 and "bob@example.com" not in short  # short text stays on the loop
        finally:
            await pool.aclose()

    asyncio.run(run())


def test_free_text_that_cannot_be_masked_in_time_is_withheld(monkeypatch):
    from broker import masking

    masker = _session_masker()

    async def run():
        pool = sql_worker.ClassifierPool(workers=1, time_limit=0.001)
        monkeypatch.setattr(sql_worker, "pool", lambda: pool)
        try:
            masked = await masker.mask_text_off_loop("bob@example.com " + "@" * 70_000)
            assert masked == masking.WITHHELD and pool.killed == 1
        finally:
            await pool.aclose()

    asyncio.run(run())


def test_a_worker_op_that_raises_answers_a_failure_and_the_worker_stays_up():
    async def run():
        pool = sql_worker.ClassifierPool(workers=1, time_limit=600)
        try:
            with pytest.raises(sql_worker.WorkerFailed, match="ValueError"):
                await pool.run("no such op", "text")
            assert await pool.run("copy_statements", "COPY t TO STDOUT; SELECT 1") != []
            assert pool.killed == 0 and pool.served == 2 and len(pool._idle) == 1  # the same worker answered
        finally:
            await pool.aclose()

    asyncio.run(run())


def test_cached_catalog_answers_are_read_again_after_ddl_on_the_database_or_after_the_ttl(monkeypatch):
    """Another session's DDL through this broker moves the database's epoch: every session's step
    reads the catalog again before it follows anything. What the broker does not see (another
    broker, a DBA) is bounded by the TTL. Another database's DDL changes nothing here."""
    clock = [1000.0]
    monkeypatch.setattr(lineage_step.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(lineage_step, "CATALOG_TTL_SECONDS", 1.0)
    here, elsewhere = ("127.0.0.1:5432", "demo"), ("127.0.0.1:5432", "other")
    step, fetch = LineageStep("alice", here), RecordedCatalog()
    sql = "SELECT upper(email) AS u FROM customers WHERE id = 7"

    def follow() -> int:
        [result] = asyncio.run(step.follow(sql, fetch))
        assert EMAIL in result.columns[0].sources
        return step.lookups

    assert follow() == 1 and follow() == 1  # cached
    lineage_step.catalog_may_change(elsewhere)
    assert follow() == 1
    lineage_step.catalog_may_change(here)  # e.g. CREATE OR REPLACE VIEW from another session
    assert follow() == 2 and follow() == 2
    clock[0] += 0.9
    assert follow() == 2
    clock[0] += 0.2  # 1.1 s after the answers were read
    assert follow() == 3
