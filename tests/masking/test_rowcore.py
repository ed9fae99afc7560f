"""The compiled row core (jitgate/masking/_rowcore.c) against the pure-Python reference (rows.py).

The rest of tests/masking runs on both cores (conftest.py); here: identical bytes on random
rows, the C email finder and prefilter against the Python detectors, and the attacker's
corpus for the prefilter (inputs built to slip past it) with the decision each must get.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.pg.codec import build_data_row
from jitgate.masking import MalformedRow, detectors, rows
from jitgate.masking.columns import MAX_SCANNED_VALUE
from jitgate.policy import MaskingRule
from tests.masking.helpers import ALL_DETECTORS, INT4, JSON, TEXT, VARCHAR, columns, field, masker

core = rows._rowcore

FIELDS = [field("id", INT4), field("email"), field("city", VARCHAR, typmod=4 + 8), field("notes"), field("doc", JSON)]
CONFIGS = {
    "hash-email": [columns("email", strategy="hash")],
    "partial-email": [columns("email", strategy="partial")],
    "null-email": [columns("email", strategy="null")],
    "hash-id": [columns("id", strategy="hash")],
    **{f"detectors-{s}": [MaskingRule(detectors=ALL_DETECTORS, strategy=s, keep_last=4)]
       for s in ("redact", "partial", "hash", "null")},
    "email-detector-only": [MaskingRule(detectors=["email"], strategy="hash")],
    "no-email-detector": [MaskingRule(detectors=["card", "phone", "ssn", "iban", "secret"], strategy="redact")],
    "mixed": [columns("email", strategy="hash"), MaskingRule(detectors=ALL_DETECTORS, strategy="partial")],
}

# Pieces that reach every branch of the prefilter and the email finder, plus what an attacker
# would try: other scripts' digits and at-signs, NUL, case, non-ASCII, separators.
_PIECES = st.sampled_from(
    list("0123456789 -.()+@abcxyzABDEGKISJ_%:/\"\\\n\x00") + [
        "4111", "DE89", "GB82", "AKIA", "eyJ", "@ex.com", "@a.b.cc", ".org", "xoxb-", "é", "\uff20", "\uff14",
        "-----BEGIN ", "private_key", "+1 415 555 ", "0100", "123-45-6789", "user", "@example.com", "a-", "-b",
        "\udcff", "1" * 9, "." * 3,
    ])
_TEXT = st.lists(_PIECES, max_size=40).map("".join).map(lambda t: t.encode("utf-8", "surrogateescape"))


def _plans(config: str):
    plans = {}
    for implementation in rows.IMPLEMENTATIONS:
        saved, rows.implementation = rows.implementation, implementation
        try:
            plans[implementation] = masker(*CONFIGS[config]).plan(FIELDS, {})
        finally:
            rows.implementation = saved
    return plans


ROOT = Path(__file__).resolve().parents[2]


def _outcome(plan, payload: bytes):
    try:
        return plan.mask_row(payload)
    except MalformedRow as exc:
        return ("MalformedRow", str(exc))


def test_the_compiled_core_is_built_and_chosen_by_default():
    assert core is not None, rows.core_status()
    assert _plans("hash-email")["compiled"]._core is not None
    assert _plans("hash-email")["python"]._core is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(CONFIGS)), st.lists(st.one_of(st.none(), _TEXT), min_size=5, max_size=5),
       st.integers(0, 2**31 - 1))
def test_both_cores_give_identical_bytes_on_random_rows(config, values, number):
    plans = _plans(config)
    values[0] = None if values[0] is None else str(number).encode()
    payload = build_data_row(values)[5:]
    outcomes = {name: _outcome(plan, payload) for name, plan in plans.items()}
    assert outcomes["compiled"] == outcomes["python"]
    assert plans["compiled"].changed == plans["python"].changed


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(CONFIGS)), st.binary(max_size=80))
def test_both_cores_refuse_malformed_rows_alike(config, payload):
    plans = _plans(config)
    assert _outcome(plans["compiled"], payload) == _outcome(plans["python"], payload)


_ASCII = st.lists(st.sampled_from(list("abcXYZ019_.%+-@ ,;\x00") + ["@ex.com", ".co", "a" * 63, "-a", "b-", "."]),
                  max_size=50).map("".join)


@settings(max_examples=500, deadline=None)
@given(_ASCII)
def test_the_c_email_finder_is_the_python_one(text):
    assert core.find_emails(text.encode()) == detectors.merge_overlaps(detectors.find_emails(text))


@settings(max_examples=500, deadline=None)
@given(_TEXT)
def test_the_c_prefilter_never_hides_a_detection(raw):
    text = raw.decode("utf-8", "surrogateescape")
    everything = detectors.find_all(text, ALL_DETECTORS, (True, True, True, True))
    all_families = core.FAMILY_EMAIL | core.FAMILY_NUMERIC | core.FAMILY_IBAN | core.FAMILY_SECRET
    found = core.families(raw, all_families)
    kinds = {kind for _, _, kind in everything}
    assert ("email" in kinds) <= bool(found & core.FAMILY_EMAIL)
    assert bool(kinds & {"card", "ssn", "phone"}) <= bool(found & core.FAMILY_NUMERIC)
    assert ("iban" in kinds) <= bool(found & core.FAMILY_IBAN)
    assert ("secret" in kinds) <= bool(found & core.FAMILY_SECRET)


def test_hmac_matches_the_python_hasher():
    from jitgate.masking.strategies import Hasher

    for key in (b"k" * 16, b"a-64-byte-key-" * 5, bytes(range(200))):
        hasher = Hasher(key)
        compiled = hasher.compiled(core)
        for data in (b"", b"x", b"a" * 55, b"a" * 56, b"a" * 64, b"a" * 1000, bytes(range(256))):
            assert compiled.digest(data) == hasher.digest(data)
            assert compiled.token(data) == hasher.token(data).encode()


# --- the attacker's view of the prefilter ---------------------------------------------------
#
# A prefilter rejects a value without running the detectors, so each entry is an input built
# to slip past it: the decision it must get (the masked value, or CLEAR when the detectors
# themselves do not match it, a documented limit of the detector and not of the prefilter),
# checked on both cores and against the detectors run with no prefilter at all.
CLEAR = None
PREFILTER_ATTACKS = [
    # email: the prefilter needs a '@'; the C path handles ASCII only
    ("email, upper case", b"USER@EXAMPLE.COM", b"[email]"),
    ("email, non-ASCII local part (C hands it to Python)", "jöhn@example.com".encode(), b"[email]"),
    ("email, fullwidth at-sign: not an address to the detector", "user\uff20example.com".encode(), CLEAR),
    ("email, NUL before the at-sign: no local part", b"user\x00@example.com", CLEAR),
    ("email, NUL after the domain", b"user@example.com\x00", b"[email]\x00"),
    ("email, split across two values: half in this one", b"user@", CLEAR),
    ("email, 100-character local part: the last 64 go", b"a" * 100 + b"@example.com", b"a" * 36 + b"[email]"),
    ("email, domain past the 256-character window", b"u@" + b"a" * 300 + b".com", CLEAR),
    ("email, two addresses sharing characters", b"a@b.cc.x@d.ee", b"[email]"),
    ("email, glued to a phone number: one span, named after the longer", b"+14155550100u@example.com", b"[email]"),
    ("email, tld cut by a digit", b"user@example.c0m", CLEAR),
    ("email, hyphen ending the tld", b"user@example.com-", CLEAR),
    ("email, dotted tld fallback", b"user@a.bc.1x", b"[email].1x"),
    # card, SSN, phone: the prefilter counts digits per numeric cluster
    ("card, dashes", b"pay 4111-1111-1111-1111 now", b"pay [card] now"),
    ("card, fullwidth digits: not ASCII digits to the detector", "４１１１ １１１１ １１１１ １１１１".encode(), CLEAR),
    ("card, digits split by NUL", b"4111\x001111\x001111\x001111", CLEAR),
    ("card, in a value with an email (C hands it to Python)", b"4111 1111 1111 1111 a@b.co", b"[card] [email]"),
    ("phone, international with 8 digits (a '+' is enough)", b"call +44207946 now", b"call [phone] now"),
    ("phone, North American, 10 digits, no '+'", b"(415) 555-0100", b"[phone]"),
    ("phone, dotted", b"415.555.0100", b"[phone]"),
    ("phone, trunk 0 and 10 digits", b"020 7946 0958", b"[phone]"),
    ("phone, 9 digits and no '+': too short for every shape", b"415 555 010", CLEAR),
    ("date, 8 digits: not a phone", b"shipped 2024-03-01, fine", CLEAR),
    ("ssn, 9 digits with dashes", b"ssn 123-45-6789.", b"ssn [ssn]."),
    ("ssn, unicode hyphens", "123\u201045\u20106789".encode(), CLEAR),
    # IBAN: two capitals then two digits
    ("iban, grouped", b"GB82 WEST 1234 5698 7654 32", b"[iban]"),
    ("iban, lower case: not an IBAN to the detector", b"gb82 west 1234 5698 7654 32", CLEAR),
    # secrets: a literal opening
    ("secret, AWS key id", b"key AKIAABCDEFGHIJKLMNOP", b"key [secret]"),
    ("secret, JWT", b"t=eyJhbGciOi.eyJzdWIiOi.sig", b"t=[secret]"),
    ("secret, PEM header in lower case: not a key to the detector", b"-----begin private key-----", CLEAR),
]


@pytest.mark.parametrize("label,value,decision", PREFILTER_ATTACKS, ids=[a[0] for a in PREFILTER_ATTACKS])
def test_prefilter_attacks_get_their_decision(row_core, label, value, decision):
    plan = masker(MaskingRule(detectors=ALL_DETECTORS, strategy="redact")).plan([field("notes")], {})
    assert plan._core is not None if row_core == "compiled" else plan._core is None
    out = plan.mask_row(build_data_row([value])[5:])
    masked = out[11:]
    assert masked == (value if decision is CLEAR else decision), label
    # and the same as the detectors without any prefilter
    text = value.decode("utf-8", "surrogateescape")
    spans = detectors.find_all(text, ALL_DETECTORS, (True, True, True, True))
    assert (masked != value) == bool(spans), label


@pytest.mark.parametrize("size", [MAX_SCANNED_VALUE - 16, MAX_SCANNED_VALUE, MAX_SCANNED_VALUE + 1])
def test_values_near_the_scan_cap(row_core, size):
    """At the cap an email at the very end is still found; past it the whole value is redacted."""
    value = b"x" * (size - len(b" a@example.com")) + b" a@example.com"
    plan = masker(MaskingRule(detectors=ALL_DETECTORS, strategy="redact")).plan([field("notes")], {})
    masked = plan.mask_row(build_data_row([value])[5:])[11:]
    assert b"a@example.com" not in masked
    assert masked == (value[: -len(b"a@example.com")] + b"[email]" if size <= MAX_SCANNED_VALUE else b"[redacted]")


def test_the_broker_logs_which_core_serves(monkeypatch):
    monkeypatch.setattr(rows, "implementation", "python")
    monkeypatch.setattr(rows, "_rowcore", None)
    monkeypatch.setattr(rows, "_ROWCORE_MISSING", "it is not built (No module named 'jitgate.masking._rowcore')")
    assert "not built" in rows.core_status() and "pip install" in rows.core_status()
    monkeypatch.setattr(rows, "_ROWCORE_MISSING", "its build is older than _rowcore.c")
    assert "older than _rowcore.c" in rows.core_status() and "pip install -e ." in rows.core_status()


def test_a_build_older_than_its_source_is_not_used(tmp_path):
    """A checkout updated after its build: the old module would be called with new arguments, so
    it is refused (the reference serves) and the reason names the rebuild."""
    from jitgate.native import load_compiled

    source = tmp_path / "_rowcore.c"
    source.write_bytes((ROOT / "jitgate/masking/_rowcore.c").read_bytes() + b"\n/* changed after the build */\n")
    module, why = load_compiled("jitgate.masking._rowcore", source)
    assert module is None and "older than _rowcore.c" in why
    module, why = load_compiled("jitgate.masking._rowcore", ROOT / "jitgate/masking/_rowcore.c")
    assert module is not None and why == ""
    module, why = load_compiled("jitgate.masking._no_such_core", source)
    assert module is None and "not built" in why


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(CONFIGS)), st.lists(st.lists(st.one_of(st.none(), _TEXT), min_size=5, max_size=5),
                                                   max_size=6), st.binary(max_size=6))
def test_runs_of_rows_are_masked_as_row_by_row(config, table, junk):
    """mask_rows over a run of DataRows (and a run with a foreign or cut message) on both cores."""
    plans = _plans(config)
    messages = [build_data_row([None if v is None else str(i).encode() if c == 0 else v for c, v in enumerate(r)])
                for i, r in enumerate(table)]
    data = b"xx" + b"".join(messages) + junk
    stop = len(data) - len(junk)
    for name, plan in plans.items():
        try:
            expected = (b"".join(plan.mask_row(m[5:]) for m in messages), len(messages))
        except MalformedRow as exc:  # a row the plan refuses (e.g. a JSON value that is not JSON)
            expected = str(exc)
        try:
            got = plan.mask_rows(data, 2, stop)
        except MalformedRow as exc:
            got = str(exc)
        assert got == expected, name
    broken = {}
    for name, plan in plans.items():
        try:
            broken[name] = plan.mask_rows(data, 2, len(data))
        except MalformedRow as exc:
            broken[name] = str(exc)
    assert broken["compiled"] == broken["python"]


def test_the_relay_entry_point_masks_a_run_on_and_off_the_loop(row_core):
    """broker/pg/masking_step.mask_rows: small runs inline, large runs on a worker thread, and
    plans that only know mask_row (the relay's fail-closed one) row by row; the same bytes."""
    import asyncio

    from broker.pg import masking_step

    plan = masker(columns("email", strategy="hash"), MaskingRule(detectors=ALL_DETECTORS)).plan(FIELDS, {})
    rows_ = [build_data_row([str(i).encode(), f"u{i}@example.com".encode(), b"Oslo", b"call +1 415 555 0100", None])
             for i in range(3000)]
    data = b"".join(rows_)
    expected = b"".join(plan.mask_row(r[5:]) for r in rows_)
    small = len(rows_[0]) * 10
    assert asyncio.run(masking_step.mask_rows(plan, data, 0, small)) == (expected[: len(plan.mask_row(rows_[0][5:])) * 10], 10)
    assert len(data) > masking_step.OFF_LOOP_ROW_BYTES
    assert asyncio.run(masking_step.mask_rows(plan, data, 0, len(data))) == (expected, 3000)

    class RowByRow:
        def mask_row(self, payload):
            return plan.mask_row(payload)

    assert asyncio.run(masking_step.mask_rows(RowByRow(), data, 0, len(data))) == (expected, 3000)
    assert b"@example.com" not in expected and b"415 555" not in expected
