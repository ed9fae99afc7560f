"""The short, deterministic fuzz run of the test suite (the long run: scripts/fuzz.sh).

For each target (tests/fuzz/targets.py): replay its seed corpus, then a fixed budget of
hypothesis examples from fixed seeds (``derandomize``), built from the corpus's own fragments
and random bytes so they reach past the first length check. Every input must end in a correct
result or one of the target's allowed error types; known findings owned by other open work
(``KNOWN_FINDINGS``) are printed, not failed.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.make_corpus import corpus
from tests.fuzz.targets import TARGETS, is_known, run_one

# A few seconds per target on a quiet machine; the budget is a count, never a clock.
EXAMPLES = 300


def _check(name: str, data: bytes, known: set) -> None:
    finding = run_one(name, data)
    if finding is None:
        return
    if is_known(name, finding):
        known.add(finding)
        return
    raise AssertionError(f"fuzz target {name}: {finding[0]} at {finding[1]}:{finding[2]} for input {data[:200]!r}")


def _report(name: str, known: set) -> None:
    for kind, where, line in sorted(known):
        print(f"known finding (issue 21, owned elsewhere) in {name}: {kind} at {where}:{line}")


@pytest.mark.parametrize("name", list(TARGETS))
def test_seed_corpus(name):
    seeds = corpus(name)
    assert len(seeds) >= 5, f"tests/fuzz/corpus/{name} is missing its seeds (python3 -m tests.fuzz.make_corpus)"
    known: set = set()
    for _, data in seeds:
        _check(name, data, known)
    _report(name, known)


def _inputs(name: str):
    """Mutations built from the corpus: spliced fragments of seeds and random bytes."""
    seeds = [data for _, data in corpus(name)]
    fragments = st.sampled_from(seeds).flatmap(
        lambda seed: st.tuples(st.integers(0, len(seed)), st.integers(0, 64)).map(lambda ab: seed[ab[0]: ab[0] + ab[1]]))
    piece = st.one_of(st.binary(max_size=32), fragments, st.sampled_from(seeds))
    return st.one_of(
        st.binary(max_size=512),
        st.lists(piece, max_size=8).map(b"".join),
        st.tuples(st.sampled_from(seeds), st.integers(0, 4096), st.binary(max_size=8)).map(
            lambda t: t[0][: t[1] % (len(t[0]) + 1)] + t[2] + t[0][t[1] % (len(t[0]) + 1) + len(t[2]):]),
    )


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz_short_run(name):
    known: set = set()

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(_inputs(name))
    def run(data: bytes) -> None:
        _check(name, data, known)

    run()
    _report(name, known)
