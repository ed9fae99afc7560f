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
from jitgate.masking import MalformedRow, detectors, fold, rows
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


def _plans(config: str, configs: dict | None = None, fields: list | None = None):
    """The plan of one config on each core (by default from CONFIGS, over FIELDS)."""
    plans = {}
    for implementation in rows.IMPLEMENTATIONS:
        saved, rows.implementation = rows.implementation, implementation
        try:
            plans[implementation] = masker(*(configs or CONFIGS)[config]).plan(fields or FIELDS, {})
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
_KIND_BITS = {kind: getattr(core, f"KIND_{kind.upper()}") for kind in ("email", "card", "ssn", "phone")}


def _c_spans(text: str | bytes, kinds) -> list:
    """The C finders' merged spans, in characters of the text (bytes: decoded with surrogateescape)."""
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    return core.detect(raw, sum(1 << _KIND_BITS[kind] for kind in kinds))[0]


def _python_spans(text: str | bytes, kinds) -> list:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    return detectors.find_all(text, frozenset(kinds), (True, True, True, True))


def _compiled_spans(text: str | bytes, kinds) -> list:
    """The spans the compiled core settles a value with: its own finders' (the spans compared),
    or, for a value with a character that folds (fold.py), the Python detectors' on the folded
    view: it hands such a value to the Python scan (test_the_c_core_knows_which_characters_fold)."""
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    if core.needs_fold(raw):
        assert fold.needs_fold(raw.decode("utf-8", "surrogateescape")), raw
        return _python_spans(raw, kinds)
    assert not fold.needs_fold(raw.decode("utf-8", "surrogateescape")), raw
    return _c_spans(raw, kinds)


@settings(max_examples=500, deadline=None)
@given(_ASCII)
def test_the_c_email_finder_is_the_python_one(text):
    assert _c_spans(text, ["email"]) == detectors.merge_overlaps(detectors.find_emails(text))


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
    ("email, fullwidth at-sign (folds to '@')", "user\uff20example.com".encode(), b"[email]"),
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
    ("card, fullwidth digits (no ASCII digit for the byte checks: they read the folded view)",
     "４１１１ １１１１ １１１１ １１１１".encode(), b"[card]"),
    ("card, digits split by NUL", b"4111\x001111\x001111\x001111", CLEAR),
    ("card, in a value with an email", b"4111 1111 1111 1111 a@b.co", b"[card] [email]"),
    ("phone, international with 8 digits (a '+' is enough)", b"call +44207946 now", b"call [phone] now"),
    ("phone, North American, 10 digits, no '+'", b"(415) 555-0100", b"[phone]"),
    ("phone, dotted", b"415.555.0100", b"[phone]"),
    ("phone, trunk 0 and 10 digits", b"020 7946 0958", b"[phone]"),
    ("phone, 9 digits and no '+': too short for every shape", b"415 555 010", CLEAR),
    ("date, 8 digits: not a phone", b"shipped 2024-03-01, fine", CLEAR),
    ("ssn, 9 digits with dashes", b"ssn 123-45-6789.", b"ssn [ssn]."),
    ("ssn, unicode hyphens", "123\u201045\u20106789".encode(), b"[ssn]"),
    # IBAN: two capitals then two digits
    ("iban, grouped", b"GB82 WEST 1234 5698 7654 32", b"[iban]"),
    ("iban, lower case: not an IBAN to the detector", b"gb82 west 1234 5698 7654 32", CLEAR),
    # secrets: a literal opening
    ("secret, AWS key id", b"key AKIAABCDEFGHIJKLMNOP", b"key [secret]"),
    ("secret, JWT", b"t=eyJhbGciOi.eyJzdWIiOi.sig", b"t=[secret]"),
    ("secret, PEM header in lower case: not a key to the detector", b"-----begin private key-----", CLEAR),
]


# Inputs built to slip a card, SSN or phone number past the C detectors (or past detectors that
# differ from Python's), each with its exact output under the redact strategy. CLEAR marks what
# the Python detectors, the spec, do not match: the C core must not mask more either.
NUMERIC_ATTACKS = [
    # separators the card detector allows (single space, single dash), mixed
    ("card, mixed separators", b"4111 1111-1111 1111", b"[card]"),
    ("card after a colon", b"card:4111111111111111", b"card:[card]"),
    ("card after a plus", b"+4111111111111111", b"+[card]"),
    ("card inside a longer run of groups", b"2024 4111 1111 1111 1111", b"2024 [card]"),
    ("card followed by a group", b"4111 1111 1111 1111 2024", b"[card] 2024"),
    ("card then NUL", b"4111111111111111\x00", b"[card]\x00"),
    ("card then a byte that is not UTF-8", b"4111111111111111\xff", b"[card]\xff"),
    ("card after a byte that is not UTF-8", b"\xff4111111111111111", b"\xff[card]"),
    ("card after a cut UTF-8 sequence", b"\xe2\x804111111111111111", b"\xe2\x80[card]"),
    ("card then a combining mark (it sits on the last digit: masked with it)", "4111111111111111\u0301".encode(),
     b"[card]"),
    ("card after a byte-order mark", "\ufeff4111111111111111".encode(), "\ufeff[card]".encode()),
    ("card then a line separator", "4111111111111111\u2028".encode(), "[card]\u2028".encode()),
    ("card and phone and email in one value", b"+1 415 555 0100 or a@b.co 5555555555554444",
     b"[phone] or [email] [card]"),
    # Unicode forms: the detectors read the folded view (fold.py), the C core hands these to Python
    ("card, Arabic-Indic digits", "٤١١١١١١١١١١١١١١١".encode(), b"[card]"),
    ("card, Devanagari digits", "४१११११११११११११११".encode(), b"[card]"),
    ("card, zero-width joiners between groups", "4111\u200d1111\u200d1111\u200d1111".encode(), b"[card]"),
    ("card, zero-width space between groups", "4111\u200b1111\u200b1111\u200b1111".encode(), b"[card]"),
    ("card, zero-width joiner after the first digit", "4\u200d111111111111111".encode(), b"[card]"),
    ("card, combining mark after the first digit", "4\u0301111111111111111".encode(), b"[card]"),
    ("card, NBSP between groups", "4111\xa01111\xa01111\xa01111".encode(), b"[card]"),
    ("card, non-breaking hyphens", "4111\u20111111\u20111111\u20111111".encode(), b"[card]"),
    ("card, en dashes", "4111\u20131111\u20131111\u20131111".encode(), b"[card]"),
    ("card, ideographic spaces", "4111\u30001111\u30001111\u30001111".encode(), b"[card]"),
    # what the detectors leave alone by design, in ASCII as in any script (C agrees byte for byte)
    ("card, double spaces", b"4111  1111  1111  1111", CLEAR),
    ("card, dots", b"4111.1111.1111.1111", CLEAR),
    ("card, slashes", b"4111/1111/1111/1111", CLEAR),
    ("card, bytes that are not UTF-8 between groups", b"4111\xff1111\xff1111\xff1111", CLEAR),
    ("card glued to a letter: an identifier, as v4111... is", "é4111111111111111".encode(), CLEAR),
    ("card glued to a fullwidth digit: 17 digits from a 1, as 14111... is", "１4111111111111111".encode(), CLEAR),
    ("card then a superscript two: a footnote, not a 17th digit", "4111 1111 1111 1111\u00b2".encode(),
     "[card]\u00b2".encode()),
    ("card, three cards run together", b"4111111111111111" * 3, CLEAR),
    ("card as an amount", b"4111111111111111.50", CLEAR),
    ("card, area code in parentheses", b"(4111) 1111 1111 1111", CLEAR),
    # SSN
    ("ssn", b"ssn 078-05-1120", b"ssn [ssn]"),
    ("ssn then a period", b"123-45-6789.", b"[ssn]."),
    ("ssn then a combining mark", "123-45-6789\u0301".encode(), b"[ssn]"),
    ("ssn then a cut UTF-8 sequence", b"123-45-6789\xc3", b"[ssn]\xc3"),
    ("ssn, fullwidth digits", "１２３-４５-６７８９".encode(), b"[ssn]"),
    ("ssn, spaces", b"123 45 6789", CLEAR),
    ("ssn, zero-width joiner", "123\u200d-45-6789".encode(), b"[ssn]"),
    ("ssn glued to a letter", "é123-45-6789".encode(), CLEAR),
    ("ssn followed by a decimal", b"123-45-6789.1", CLEAR),
    # phone
    ("phone, international with parentheses", b"+1 (415) 555-0100", b"[phone]"),
    ("phone with a trunk in parentheses", b"+44 (0)20 7946 0958", b"[phone]"),
    ("phone then text", b"+1-415-555-0100 ext 12", b"[phone] ext 12"),
    ("phone after a scheme", b"tel:+14155550100", b"tel:[phone]"),
    ("phone, dotted with a 1", b"1.415.555.0100", b"[phone]"),
    ("phone then a combining mark", "+14155550100\u0301".encode(), b"[phone]"),
    ("phone then an encoded surrogate (not UTF-8)", b"+14155550100\xed\xa0\x80", b"[phone]\xed\xa0\x80"),
    ("phone glued to an email: the email wins the overlap", b"+1 415 555 0100a@b.co", b"+1 415 555 [email]"),
    ("phone, NBSP separators", "+1\xa0415\xa0555\xa00100".encode(), b"[phone]"),
    ("phone, Arabic-Indic digits", "+١ ٤١٥ ٥٥٥ ٠١٠٠".encode(), b"[phone]"),
    ("phone, zero-width joiner", "+1 415 555\u200d0100".encode(), b"[phone]"),
    ("phone, NBSP after the area code", "(415)\xa0555-0100".encode(), b"[phone]"),
    ("phone, en dashes", "415\u2013555\u20130100".encode(), b"[phone]"),
    ("phone, fullwidth trunk number", "０２０ ７９４６ ０９５８".encode(), b"[phone]"),
    ("phone, trunk with mixed separators", b"020-7946 0958", CLEAR),
    ("phone glued to a letter", "é+14155550100".encode(), CLEAR),
]


@pytest.mark.parametrize("label,value,decision", PREFILTER_ATTACKS + NUMERIC_ATTACKS,
                         ids=[a[0] for a in PREFILTER_ATTACKS + NUMERIC_ATTACKS])
def test_attacks_get_their_decision(row_core, label, value, decision):
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


# --- the card, SSN and phone detectors in C ---------------------------------------------------
#
# The compiled core finds emails, cards, SSNs and phone numbers itself (in characters, with
# Python's Unicode classes where they decide) and masks them with each detector's strategy;
# values with IBAN or secret candidates go to the Python scan. The Python detectors are
# the spec: these tests check the C finders span for span against detectors.find_all, whole rows
# byte for byte against the reference core, and the attacker's corpus with its exact outputs.

_NUMERIC_KINDS = ("email", "card", "ssn", "phone")
# Digits, every separator the detectors know and several they do not, boundary characters, and
# whole numbers of each shape (valid and almost valid), so random joins hit the edges.
_NUMERIC_PIECES = list("0123456789" * 3 + " -.()+,:/_@xZ") + [
    "4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "5555555555554444", "378282246310005",
    "2024 4111 1111 1111 1111", "20240115103000123", "4111111111111112", "+1 415 555 0100", "(415) 555-0100",
    "415.555.0100", "1-415-555-0100", "+44 20 7946 0958", "+14155550100", "+(12)", "(0)", "020 7946 0958",
    "01 23 45 67 89", "123-45-6789", "078-05-1120", "666-12-3456", "123-00-4567", "u@example.com", "@a.bc",
    "ORD-", "  ", "--", "..", "1 ", "0", "00", "9" * 7, "1" * 25, ".5", ",5",
]
# What an attacker puts around and between digits: other scripts' digits, Unicode dashes and
# spaces, NBSP, zero-width characters, combining marks, letters, and bytes that are not UTF-8.
_UNICODE_PIECES = ["\uff14", "\uff11", "\u0664", "\u0661", "\u096a", "\u00b2", "\u2010", "\u2011", "\u2013", "\u2212",
                   "\xa0", "\u2007", "\u202f", "\u3000", "\u200b", "\u200d", "\u2060", "\ufeff", "\u0301", "\u20dd",
                   "é", "\uff20", "\u2028", "\udcff", "\udce2\udc80", "\udced\udca0\udc80",
                   # and characters that fold to themselves, which the C finders read (as Python's classes)
                   "ж", "中", "ß", "€", "\xb7", "\u093e", "\u2800", "\u2028", "é", "é"]
_ASCII_NUMERIC = st.lists(st.sampled_from(_NUMERIC_PIECES), max_size=30).map("".join)
_MIXED_NUMERIC = st.lists(st.sampled_from(_NUMERIC_PIECES + _UNICODE_PIECES), max_size=30).map(
    lambda pieces: "".join(pieces).encode("utf-8", "surrogateescape"))


@settings(max_examples=1500, deadline=None)
@given(st.one_of(_ASCII_NUMERIC, _MIXED_NUMERIC), st.sets(st.sampled_from(_NUMERIC_KINDS), min_size=1))
def test_the_c_detectors_find_what_the_python_ones_find(text, kinds):
    assert _compiled_spans(text, kinds) == _python_spans(text, kinds)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60).map(lambda junk: junk.translate(bytes.maketrans(b"abcdefghij", b"0123456789"))))
def test_the_c_detectors_read_any_bytes_as_python_decodes_them(raw):
    """Bytes that are not UTF-8 (cut, overlong, surrogates, past U+10FFFF) count as Python's
    surrogateescape counts them: positions in characters agree."""
    assert _compiled_spans(raw, _NUMERIC_KINDS) == _python_spans(raw, _NUMERIC_KINDS)


def test_every_character_beside_a_number_is_classed_as_python_classes_it():
    """Every code point outside ASCII (all of 0x80-0x2fff, every 17th above) before and after a
    card, an SSN, a phone number, after a card's decimal point and inside an email's local part:
    where str.isalnum, str.isdigit and the regex class \\w decide, the C finders agree. (Those
    that fold go to the Python scan: test_the_c_core_knows_which_characters_fold.)"""
    points = list(range(0x80, 0x3000)) + [c for c in range(0x3000, 0x110000, 17) if not 0xD800 <= c <= 0xDFFF]
    points = [c for c in points if not fold.needs_fold(chr(c))]
    assert len(points) > 60000
    for template in ("{c}4111111111111111{c}1 ", "{c}123-45-6789{c} ", "{c}+14155550100{c} ", "4111111111111111.{c} ",
                     "{c}{c}@b.co "):
        text = "".join(template.format(c=chr(c)) for c in points)
        assert _c_spans(text, _NUMERIC_KINDS) == _python_spans(text, _NUMERIC_KINDS), template


def test_the_c_detectors_on_seeded_dense_text(row_core):
    """Many random texts over small alphabets (where separators and boundaries meet most often),
    a different seed on each core's run."""
    import random

    rng = random.Random(f"dense-{row_core}")
    alphabets = ["0123456789 -.()+", "4111111111111111 -", "0001234566666999-----. x", "0123456789" * 4 + " -.()+,:/_a@x",
                 "0+1 (2)3.4-5", "0123456789 -+.@\uff14\u0664\xa0\u200d\u0301é\udcff"]
    found = 0
    for case in range(6000):
        if case % 2:
            text = "".join(rng.choice(_NUMERIC_PIECES) for _ in range(rng.randint(1, 20)))
        else:
            alphabet = alphabets[case // 2 % len(alphabets)]
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 48)))
        expected = _python_spans(text, _NUMERIC_KINDS)
        assert _compiled_spans(text, _NUMERIC_KINDS) == expected, text
        found += bool(expected)
    assert found > 800  # the generator reaches every detector, not only their rejections


DETECTOR_CONFIGS = {
    **{f"numeric-{s}-{k}": [MaskingRule(detectors=ALL_DETECTORS, strategy=s, keep_last=k)]
       for s, k in (("redact", 4), ("partial", 4), ("partial", 0), ("partial", 16), ("hash", 4), ("null", 4))},
    # a strategy per detector: the merged span's kind picks it
    "per-kind": [MaskingRule(detectors=["email"], strategy="hash"), MaskingRule(detectors=["card"], strategy="partial", keep_last=2),
                 MaskingRule(detectors=["ssn"], strategy="redact"), MaskingRule(detectors=["phone"], strategy="partial", keep_last=3)],
    "phone-null-only": [MaskingRule(detectors=["phone"], strategy="null"), MaskingRule(detectors=["card", "email"], strategy="hash")],
    "cards-only": [MaskingRule(detectors=["card"], strategy="partial", keep_last=4)],
    "ssn-phone-only": [MaskingRule(detectors=["ssn", "phone"], strategy="hash")],
}
DETECTOR_FIELDS = [field("id", INT4), field("notes"), field("other"), field("email")]


def _detector_plans(config: str):
    return _plans(config, DETECTOR_CONFIGS, DETECTOR_FIELDS)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(DETECTOR_CONFIGS)), st.lists(st.one_of(st.none(), _MIXED_NUMERIC,
                                                                      _ASCII_NUMERIC.map(str.encode)),
                                                            min_size=3, max_size=3))
def test_both_cores_mask_numbers_alike(config, values):
    plans = _detector_plans(config)
    payload = build_data_row([b"7", *values])[5:]
    outcomes = {name: _outcome(plan, payload) for name, plan in plans.items()}
    assert outcomes["compiled"] == outcomes["python"]
    assert plans["compiled"].changed == plans["python"].changed


def test_both_cores_mask_numbers_alike_seeded(row_core):
    """The same as above with many more cases: random ASCII and Unicode texts, every config."""
    import random

    rng = random.Random(f"rows-{row_core}")
    plans = {config: _detector_plans(config) for config in sorted(DETECTOR_CONFIGS)}
    pieces = _NUMERIC_PIECES + _UNICODE_PIECES
    changed = 0
    for case in range(2500):
        config = sorted(DETECTOR_CONFIGS)[case % len(DETECTOR_CONFIGS)]
        values = ["".join(rng.choice(pieces if case % 3 == 0 else _NUMERIC_PIECES) for _ in range(rng.randint(0, 24)))
                  .encode("utf-8", "surrogateescape") for _ in range(3)]
        payload = build_data_row([b"7", *values])[5:]
        compiled, python = (_outcome(plans[config][name], payload) for name in ("compiled", "python"))
        assert compiled == python, (config, values)
        changed += compiled != build_data_row([b"7", *values])
    assert changed > 1000


def test_numbers_are_masked_without_python(monkeypatch):
    """The speed of the path: a value with cards, SSNs, phone numbers and emails, ASCII or
    accented, never reaches the Python scan; one with an IBAN or secret candidate does, so does a
    partial phone span that took in a non-ASCII email (its '*'s count characters), and so does a
    value with a character that folds (full-width digits, NBSP: the detectors read its folded view)."""
    from jitgate.masking.columns import detector_masker
    from jitgate.masking.scanner import DetectorStrategy, Scanner
    from jitgate.masking.strategies import Hasher

    monkeypatch.setattr(rows, "implementation", "compiled")  # on both of the fixture's runs
    calls = []

    def counting_plan(strategy: str):
        scanner = Scanner({kind: DetectorStrategy(strategy, 4) for kind in ALL_DETECTORS}, Hasher(b"k" * 16))
        column_masker = detector_masker(TEXT, -1, False, scanner)
        label, _, scan = column_masker.compiled

        def counting_scan(raw, families):
            calls.append(raw)
            return scan(raw, families)

        column_masker.compiled = (label, scanner, counting_scan)
        plan = rows.RowPlan(1, [(0, column_masker)])
        assert plan._core is not None
        return plan

    def same(plan, value):
        payload = build_data_row([value])[5:]
        assert plan.mask_row(payload) == plan.mask_row_reference(payload)

    redact, partial = counting_plan("redact"), counting_plan("partial")
    phone_into_accented_email = "+1 415 555 0100.é@b.co".encode()  # one span, named phone
    for value in [b"call +1 415 555 0100 or mail u1@example.org", b"card 4111-1111-1111-1111, ssn 123-45-6789",
                  b"(415) 555-0100 / 020 7946 0958 / +44 20 7946 0958", b"order ORD-1 shipped 2024-03-01, no issues",
                  "café +1 415 555 0100, jöhn@example.com".encode(), "Zürich 4111 1111 1111 1111 ж中".encode(),
                  b"\xff4111111111111111\xff"]:
        same(redact, value)
        same(partial, value)
    same(redact, phone_into_accented_email)
    assert calls == []
    for value in [b"DE89370400440532013000 4111111111111111", b"AKIAABCDEFGHIJKLMNOP +14155550100"]:
        same(redact, value)
    assert len(calls) == 2
    same(partial, phone_into_accented_email)
    assert len(calls) == 3
    for value in ["４１１１ 4111 1111 1111 1111\xa0".encode(), "no number, only a non-breaking\xa0space".encode()]:
        same(redact, value)
    assert len(calls) == 5




@pytest.mark.parametrize("strategy,keep_last,value,expected", [
    ("partial", 4, b"4111-1111-1111-1111", b"****-****-****-1111"),
    ("partial", 4, b"+1 (415) 555-0100", b"+* (***) ***-0100"),
    ("partial", 0, b"ssn 078-05-1120", b"ssn ***-**-****"),
    ("partial", 16, b"123-45-6789", b"***-**-6789"),  # never more than half (9 // 2)
    ("partial", 4, b"+1 415 555 0100a@b.co", b"+1 415 555 ***@b.co"),
    ("hash", 4, b"4111 1111 1111 1111 and 4111-1111-1111-1111", None),  # one token for both spellings
    ("null", 4, b"call 415.555.0100", None),
])
def test_numeric_strategies(row_core, strategy, keep_last, value, expected):
    plan = masker(MaskingRule(detectors=ALL_DETECTORS, strategy=strategy, keep_last=keep_last)).plan([field("notes")], {})
    out = plan.mask_row(build_data_row([value])[5:])
    if strategy == "null":
        assert out[7:11] == b"\xff\xff\xff\xff"
    elif strategy == "hash":
        first, _, second = out[11:].partition(b" and ")
        assert first == second and first.startswith(b"h:") and len(first) == 18
    else:
        assert out[11:] == expected


# Values of 1 MB of digits and separators: the C finders' step counts grow linearly (a regex
# engine's backtracking over nested quantifiers must not become a rescan per position here).
_MEGABYTE_UNITS = ["1 ", "1-1-", "4111-", "+1 ", "+1(1)", "0 00 ", "(415) 555-0100 ", "123-45-6789-", "+1 1 1 1 1 1 1 1 1x",
                   "+12345678901234567890", "0.00.00.00.", "1.2.3.4", "9", "+1.(12)", "4111 1111 1111 1111 ", "a@b.cc",
                   "\u0664 1 ", "é4111111111111111 ", "1\xa01 ", "\udcff1-1", "é" * 70 + "@b.co ",
                   # characters that fold to themselves, which the C finders read (those that fold
                   # go to the Python scan: tests/masking/test_masking_bounds.py bounds it)
                   "ж4111 1111 1111 1111ж ", "\xb71\xb71 ", "中+1 415 555 0100中"]


@pytest.mark.parametrize("unit", _MEGABYTE_UNITS)
def test_a_megabyte_of_digits_costs_linear_steps(unit):
    size = 1 << 20
    big = (unit * (size // len(unit) + 1))[:size]
    half = big[: size // 2]
    _, steps = core.detect(big.encode("utf-8", "surrogateescape"), sum(1 << bit for bit in _KIND_BITS.values()))
    _, half_steps = core.detect(half.encode("utf-8", "surrogateescape"), sum(1 << bit for bit in _KIND_BITS.values()))
    assert steps <= 48 * size, steps / size
    assert steps <= 2.05 * half_steps + 1000
    small = big[:20000]  # the spec on a part of it (the Python regexes are slow on megabytes)
    assert _compiled_spans(small, _NUMERIC_KINDS) == _python_spans(small, _NUMERIC_KINDS)


def test_a_megabyte_row_is_masked_by_both_cores_alike():
    value = ("call +1 415 555 0100, card 4111-1111-1111-1111, ssn 078-05-1120; " * 16000).encode()[: MAX_SCANNED_VALUE]
    plans = _detector_plans("numeric-partial-4")
    payload = build_data_row([b"1", value, None, None])[5:]
    compiled = plans["compiled"].mask_row(payload)
    assert compiled == plans["python"].mask_row(payload)
    assert b"0100" in compiled and b"415 555" not in compiled
