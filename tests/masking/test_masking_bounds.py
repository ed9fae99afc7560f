"""Hostile values cost linear work and fail with the project's own errors (issue 21).

Complexity is checked, not speed: each adversarial input is masked at n and at 8n
bytes (8n is 1 MiB), and the CPU time of the larger must stay under 24x the best of
three runs of the smaller (linear gives about 8x, quadratic 64x), so a noisy neighbour
cannot make a linear function look quadratic.
"""
from __future__ import annotations

import struct
import time

import pytest

from jitgate.masking import MalformedRow
from jitgate.masking import masker as masker_module
from jitgate.masking.detectors import find_all
from tests.masking.helpers import (
    BYTEA, JSON, JSONB, NUMERIC, TEXT, UUID, columns, detectors, field, masker,
)

MIB = 1 << 20


def _cpu(fn, arg, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.process_time()
        fn(arg)
        best = min(best, time.process_time() - started)
    return max(best, 1e-4)


def _assert_linear(fn, make):
    small, large = make(MIB // 8), make(MIB)
    assert len(large) >= MIB - 64
    ratio = _cpu(fn, large, 1) / _cpu(fn, small, 3)
    # Linear: about 8x; quadratic: about 64x.
    assert ratio < 24, f"8x the input took {ratio:.1f}x the CPU time: not linear"


def _repeat(unit: str):
    return lambda size: unit * (size // len(unit))


FREE_TEXT = masker(columns("email"), detectors())


@pytest.mark.parametrize("unit", ["Key (a)=(", "Failing row contains (", "-----BEGIN RSA PRIVATE KEY-----\n",
                                  "Key (email)=(a@b.co) already exists. "])
def test_constraint_error_masking_is_linear(unit, monkeypatch):
    # mask_text cuts free text at MAX_FREE_TEXT; lift the cap to see the scan itself.
    monkeypatch.setattr(masker_module, "MAX_FREE_TEXT", 4 * MIB)
    _assert_linear(FREE_TEXT.mask_text, _repeat(unit))


@pytest.mark.parametrize("unit", ["-----BEGIN RSA PRIVATE KEY-----\n", "+1 (415) 555-0100 ", "4111 1111 ", "eyJ",
                                  "a@", "private_key\": \"", "GB82 WEST ", "123-45-6789-"])
def test_detectors_are_linear(unit):
    _assert_linear(lambda text: find_all(text, ["email", "card", "iban", "ssn", "phone", "secret"]), _repeat(unit))


# Text that folds (jitgate/masking/fold.py): a megabyte of combining marks, of format characters,
# of mixed scripts' digits, of the longest compatibility forms, of detections in disguise (one
# span per unit to map back), and of right-to-left overrides (read in both directions).
FOLDING_UNITS = ["\u0301", "\u200b", "4\u200b", "\u0664" + "1\xa0", "\u2460\u00b2\u2083", "\ufdfa", "\u2474",
                 "\u202e4111 ", "\uff20\uff41\uff0e", "\u0661\u0662\u0663-\u0664\u0665-\u0666\u0667\u0668\u0669-",
                 "a\u200b@\u200b"]


@pytest.mark.parametrize("unit", FOLDING_UNITS)
def test_folded_masking_is_linear(unit):
    from jitgate.masking.scanner import DetectorStrategy, Scanner
    from jitgate.masking.strategies import Hasher

    scanner = Scanner({k: DetectorStrategy("partial", 4) for k in ["email", "card", "iban", "ssn", "phone", "secret"]},
                      Hasher(b"k" * 16))
    _assert_linear(_uncached(scanner.mask), _repeat(unit))


@pytest.mark.parametrize("unit", ["\u0301", "4\ufe0f\u20e3", "\u202e4111 ", "\u0664\u200b111 1111 1111 1111 "])
def test_a_folding_megabyte_in_a_row_is_linear(row_core, unit):
    """Through a DataRow (the compiled core hands these values to the Python scan)."""
    plan = masker(detectors()).plan([field("notes")], {})

    def mask(body: bytes):
        return plan.mask_row(struct.pack("!hi", 1, len(body)) + body)

    _assert_linear(_uncached(mask), lambda size: unit.encode() * (size // len(unit.encode())))


def _uncached(fn):
    """fold.fold remembers its last text (the prefilter folds a value a moment before the
    detectors do): forget it, or the repeated small run is free and the ratio meaningless."""
    from jitgate.masking import fold

    def fresh(arg):
        fold._last = ("", None)
        return fn(arg)

    return fresh


def test_json_column_masking_is_linear_and_rejects_broken_strings():
    plan = masker(detectors()).plan([field("doc", JSON)], {})

    def mask(text: str):
        body = ('{"k": "' + text + '"}').encode()
        return plan.mask_row(struct.pack("!hi", 1, len(body)) + body)

    _assert_linear(mask, _repeat("a@b.co \\n "))
    hostile = ('"\\' * (MIB // 4) + "a@b.co").encode()  # under the scan cap; the "@" wakes the detectors
    started = time.process_time()
    with pytest.raises(MalformedRow, match="unterminated"):
        plan.mask_row(struct.pack("!hi", 1, len(hostile)) + hostile)
    assert time.process_time() - started < 5  # one pass, not 69 s (generous for a shared machine)
    bad_escape = b'{"k": "x\\q a@b.co"}'
    with pytest.raises(MalformedRow, match="invalid string"):
        plan.mask_row(struct.pack("!hi", 1, len(bad_escape)) + bad_escape)


def _row(value: bytes) -> bytes:
    return struct.pack("!hi", 1, len(value)) + value


@pytest.mark.parametrize("type_oid, fmt, value, why", [
    (NUMERIC, 1, b"\x00\x01", "shorter than its 8-byte header"),
    (NUMERIC, 1, struct.pack("!hhHh", -1, 0, 0, 0), "digit groups"),
    (NUMERIC, 1, struct.pack("!hhHh", 2, 0, 0, 0) + b"\x00\x01", "digit groups"),
    (NUMERIC, 1, struct.pack("!hhHh", 1, 0, 0, 0) + struct.pack("!h", 12000), "outside 0..9999"),
    (NUMERIC, 1, struct.pack("!hhHh", 1, 0, 0x1234, 0) + b"\x00\x01", "unknown sign"),
    (UUID, 1, b"\x01" * 15, "uuid of 15 bytes"),
    (BYTEA, 0, b"\\xzz", "not hex digits"),
    (BYTEA, 0, b"\\x\xc3\xa9", "non-ASCII"),
    (BYTEA, 0, b"ab\\109", "three octal digits"),
    (BYTEA, 0, b"ab\xff", "non-ASCII"),
])
def test_hostile_values_raise_malformed_row(type_oid, fmt, value, why):
    plan = masker(columns("v", strategy="hash")).plan([field("v", type_oid, fmt=fmt)], {})
    with pytest.raises(MalformedRow, match=why):
        plan.mask_row(_row(value))


def test_numeric_with_more_than_4300_digits_is_hashed_not_refused():
    # 1200 groups of 9999: 4800 digits, past Python's int/str conversion limit.
    groups = 1200
    value = struct.pack("!hhHh", groups, groups - 1, 0, 0) + struct.pack(f"!{groups}h", *([9999] * groups))
    text_plan = masker(columns("v", strategy="hash")).plan([field("v", NUMERIC, fmt=0)], {})
    binary_plan = masker(columns("v", strategy="hash")).plan([field("v", NUMERIC, fmt=1)], {})
    from jitgate.masking.pgtypes import numeric_binary_to_text

    assert numeric_binary_to_text(value) == b"9" * 4800
    text_hash = text_plan.mask_row(_row(b"9" * 4800))
    binary_hash = binary_plan.mask_row(_row(value))
    assert len(text_hash) < 100 and len(binary_hash) < 100  # both masked to a short token


def test_jsonb_binary_bad_escape_is_malformed():
    plan = masker(detectors()).plan([field("doc", JSONB, fmt=1)], {})
    with pytest.raises(MalformedRow):
        plan.mask_row(_row(b'\x01{"a": "\\u12"}'))


def test_free_text_is_cut_at_the_cap():
    from jitgate.masking.masker import MAX_FREE_TEXT, TRUNCATED_MARKER

    text = "x" * (MAX_FREE_TEXT + 10) + " bob@example.com"
    masked = FREE_TEXT.mask_text(text)
    assert masked.endswith(TRUNCATED_MARKER) and "bob@example.com" not in masked
    assert FREE_TEXT.mask_text("Key (email)=(a@b.co) already exists.") == "Key (email)=([redacted]) already exists."
    assert TEXT  # the text type is the default of field()


def test_values_over_the_scan_cap_are_redacted_whole():
    from jitgate.masking.columns import MAX_SCANNED_VALUE

    plan = masker(detectors()).plan([field("notes"), field("doc", JSON)], {})
    big = b"x" * MAX_SCANNED_VALUE + b" bob@example.com"
    doc = b'{"a": "' + big + b'"}'
    row = struct.pack("!h", 2) + struct.pack("!i", len(big)) + big + struct.pack("!i", len(doc)) + doc
    masked = plan.mask_row(row)
    assert b"bob@example.com" not in masked and b"[redacted]" in masked and b'"[redacted]"' in masked
