"""What one seal costs in Cloud Storage requests (fake-gcs-server): a one-statement session read
its chunks twice, listed them once per chunk and checked twice for objects it had just created
(21 requests, about 0.5 s a seal in the test stack); nothing of it may grow with the ledger. And
concurrent finalizers still take consecutive entries, chained exactly."""
from __future__ import annotations

import collections
import threading

import pytest
import requests

from jitgate.backends import open_backends
from jitgate.recording import ledger
from jitgate.recording.audit import audit, verify_session
from jitgate.recording.finalize import finalize_session
from jitgate.settings import Settings
from tests.recording.helpers import store_and_close


@pytest.fixture()
def http_requests(monkeypatch):
    """Every HTTP request this process sends (the Cloud Storage client's), as 'METHOD path-kind'."""
    seen: collections.Counter = collections.Counter()
    lock = threading.Lock()
    original = requests.Session.request

    def request(session, method, url, *args, **kwargs):
        with lock:
            seen[method] += 1
        return original(session, method, url, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", request)
    return seen


@pytest.fixture(params=["embedded", "gcp"])
def any_backends(request, tmp_path):
    if request.param == "gcp":
        yield request.getfixturevalue("gcp_backends")
        return
    settings = Settings.from_env({"JITGATE_HOME": str(tmp_path), "JITGATE_POLICY": str(tmp_path / "p.yaml")})
    backends = open_backends(settings)
    yield backends
    backends.close()


def test_a_seal_costs_the_same_few_requests_whatever_the_ledger_size(gcp_backends, http_requests):
    b = gcp_backends
    closings = {sid: store_and_close(b, sid) for sid in [f"k{i:02d}" for i in range(24)]}
    costs = []
    for sid, closing in closings.items():
        http_requests.clear()
        assert finalize_session(b, closing).status == "sealed"
        costs.append(sum(http_requests.values()))
    # is it sealed? (1) + chunks listed once, each read once (3) + recording, manifest (2)
    # + ledger: the remembered entry (1), the new entry and its checkpoint (2) + marker (1)
    assert costs[3] <= 10 and costs[-1] == costs[3], costs
    assert costs[0] <= costs[3] + 1, costs  # the first lists the ledger instead of re-reading a remembered entry
    report = audit(b)
    assert report.ok and report.ledger_entries == 24 and report.verified_size == 24, report.problems
    assert all(verify_session(b, sid).ok for sid in ("k00", "k23"))


def test_a_recording_larger_than_the_in_memory_bound_is_streamed_and_verifies(gcp_backends, monkeypatch):
    from jitgate.recording import finalize

    monkeypatch.setattr(finalize, "SEAL_IN_MEMORY", 100)  # the four events are ~300 sealed bytes
    streamed = []
    original = gcp_backends.recordings.put_object_stream
    gcp_backends.recordings.put_object_stream = lambda *a: streamed.append(a[:2]) or original(*a)
    assert finalize_session(gcp_backends, store_and_close(gcp_backends, "big1")).status == "sealed"
    assert streamed == [("big1", finalize.RECORDING)]
    assert verify_session(gcp_backends, "big1").ok


def test_concurrent_finalizers_take_consecutive_entries_chained_exactly(any_backends):
    b = any_backends
    names = [f"c{i:02d}" for i in range(12)]
    closings = {sid: store_and_close(b, sid) for sid in names}
    start = threading.Barrier(4)
    results, errors = {}, []

    def finalizer(mine):
        try:
            start.wait(30)
            for sid in mine:
                results[sid] = finalize_session(b, closings[sid])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=finalizer, args=(names[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert {sid: r.status for sid, r in results.items()} == {sid: "sealed" for sid in names}
    walk = ledger.walk(b.recordings, b.trust)
    assert sorted(walk.entries) == list(range(12)) and not walk.problems, walk.problems
    assert sorted(walk.by_session) == names and all(len(v) == 1 for v in walk.by_session.values())
    assert walk.verified_size == 12
    assert {sid: results[sid].entry["ledger_entry"] for sid in names} == {sid: walk.by_session[sid][0] for sid in names}
    assert all(verify_session(b, sid).ok for sid in names)


def test_a_finalizer_that_missed_others_appends_catches_up_in_one_listing(any_backends):
    """Another instance sealed five sessions since this one's last: its next number is taken, and it
    jumps to the newest entry (one listing), not one collision per missed entry."""
    b = any_backends
    assert finalize_session(b, store_and_close(b, "x0")).status == "sealed"
    with ledger._lock:
        behind = dict(ledger._last)
    for i in range(1, 6):
        assert finalize_session(b, store_and_close(b, f"x{i}")).status == "sealed"
    with ledger._lock:
        ledger._last.clear()
        ledger._last.update(behind)  # as the instance that sealed x0 remembers the ledger
    closing = store_and_close(b, "x6")
    puts = []
    original = b.recordings.put_ledger
    b.recordings.put_ledger = lambda name, data: puts.append(name) or original(name, data)
    assert finalize_session(b, closing).entry["ledger_entry"] == 6
    assert puts == [ledger.entry_name(1), ledger.entry_name(6), ledger.checkpoint_name(7)], puts
    walk = ledger.walk(b.recordings, b.trust)
    assert not walk.problems and walk.verified_size == 7 and walk.by_session["x6"] == [6]


def test_a_new_finalizer_finds_the_newest_entry_without_listing_the_whole_ledger(any_backends, monkeypatch):
    """A finalize instance that just started knows no entry: it used to list every name in the ledger
    (a page of 1000 per request, one name per seal ever made). It now reads one page and then
    listings of one name, doubling and halving, and a removed entry does not mislead it."""
    b = any_backends
    monkeypatch.setattr(ledger, "SEARCH_PAGE", 4)
    for i in range(37):
        ledger.append(b.recordings, b.signer, session_id=f"g{i}", manifest_sha256=f"{i:064x}")
    listings = []
    original = b.recordings.list_ledger

    def listed(folder, start_after="", limit=None):
        names = original(folder, start_after, limit=limit)
        listings.append((limit, len(names)))
        return names

    b.recordings.list_ledger = listed
    with ledger._lock:
        ledger._last.clear()  # a new instance
    assert ledger.append(b.recordings, b.signer, session_id="g37", manifest_sha256="f" * 64) == 37
    assert listings and all(limit is not None and count <= 4 for limit, count in listings), listings
    assert len(listings) <= 12, listings
    b.recordings.list_ledger = original
    walk = ledger.walk(b.recordings, b.trust)
    assert sorted(walk.entries) == list(range(38)) and not walk.problems and walk.verified_size == 38
    if hasattr(b.recordings, "ledger_dir"):  # a removed entry (possible on a local disk) is no place to append
        (b.recordings.ledger_dir / ledger.entry_name(30)).unlink()
        with ledger._lock:
            ledger._last.clear()
        assert ledger.append(b.recordings, b.signer, session_id="g38", manifest_sha256="e" * 64) == 38
