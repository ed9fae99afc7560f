"""RowPlan.mask_row: DataRows are rebuilt correctly, and masked values stay valid for their type."""
from __future__ import annotations

import json
import struct
import uuid
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.pg.codec import build_data_row, parse_data_row
from jitgate.masking import MalformedRow, MaskingRefused, apply_result_formats
from jitgate.masking.pgtypes import numeric_binary_to_text, numeric_from_digest
from jitgate.policy import MaskingRule

from .helpers import (
    BPCHAR,
    BYTEA,
    CITEXT,
    DATE,
    FLOAT8,
    INT2,
    INT4,
    INT8,
    JSON,
    JSONB,
    NUMERIC,
    OTHER_KEY,
    TEXT,
    TEXT_ARRAY,
    UUID,
    VARCHAR,
    XML,
    columns,
    detectors,
    field,
    masker,
)

values = st.one_of(st.none(), st.binary(max_size=40))
# Text without anything a detector could take for PII: letters, spaces, multi-byte characters.
clean_text = st.text(alphabet=st.sampled_from(list("abcdefghij klmnopq,;!?é漢字ß€😀\t\n\"'")), max_size=40)


def payload_of(row: list[bytes | None]) -> bytes:
    return build_data_row(row)[5:]


def masked_values(plan, row: list[bytes | None]) -> list[bytes | None]:
    message = plan.mask_row(payload_of(row))
    assert message[:1] == b"D"
    assert struct.unpack("!i", message[1:5])[0] == len(message) - 1
    return parse_data_row(message[5:])


# --- rebuilding ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), clean_text.map(str.encode)), min_size=1, max_size=30), st.data())
def test_a_plan_that_masks_nothing_returns_the_canonical_message(row, data) -> None:
    # Every column text, scanned by every detector, none of which finds anything.
    fields = [field(f"c{i}", data.draw(st.sampled_from([TEXT, VARCHAR, JSON, CITEXT]))) for i in range(len(row))]
    row = [v if v is None or f.type_oid != JSON else json.dumps(v.decode()).encode() for v, f in zip(row, fields)]
    plan = masker(detectors()).plan(fields, {})
    payload = payload_of(row)
    assert plan.mask_row(payload) == build_data_row(parse_data_row(payload))


@settings(max_examples=300, deadline=None)
@given(st.lists(values, min_size=1, max_size=25), st.data())
def test_untouched_columns_survive_byte_for_byte(row, data) -> None:
    # Arbitrary bytes (header-like ones included) around masked columns.
    masked_at = data.draw(st.sets(st.integers(0, len(row) - 1)))
    fields = [field("secret" if i in masked_at else f"c{i}", INT4 if i % 2 else TEXT) for i in range(len(row))]
    plan = masker(columns("secret", strategy="null")).plan(fields, {})
    if not masked_at:
        assert plan is None
        return
    out = masked_values(plan, row)
    assert len(out) == len(row)
    for i, (before, after) in enumerate(zip(row, out)):
        assert after == (None if i in masked_at else before)


def test_header_like_bytes_and_empty_values() -> None:
    row = [b"D\x00\x00\x00\x05", b"", b"\xff\xff\xff\xff", None, b"\x00" * 5, "漢字 é".encode()]
    plan = masker(columns("c1", strategy="redact")).plan([field(f"c{i}") for i in range(len(row))], {})
    out = masked_values(plan, row)
    assert out[1] == b"[redacted]"
    assert out[:1] + out[2:] == row[:1] + row[2:]


def test_very_wide_rows() -> None:
    width = 1500
    fields = [field(f"c{i}") for i in range(width)]
    fields[777] = field("email")
    row = [f"value {i}".encode() if i % 3 else None for i in range(width)]
    row[777] = b"bob@example.com"
    out = masked_values(masker(columns("email")).plan(fields, {}), row)
    assert out[777] == b"[redacted]"
    assert out[:777] + out[778:] == row[:777] + row[778:]


def test_null_stays_null_under_every_strategy() -> None:
    for strategy in ("redact", "partial", "hash", "null"):
        plan = masker(columns("x", strategy=strategy)).plan([field("x"), field("y", INT4)], {})
        assert masked_values(plan, [None, b"1"]) == [None, b"1"]


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\x00", "shorter"),
        (b"\x00\x03" + struct.pack("!i", 1) + b"a", "columns"),
        (b"\x00\x02" + struct.pack("!i", 5) + b"ab", "length"),
        (b"\x00\x02" + struct.pack("!i", -2) + struct.pack("!i", 1) + b"a", "length"),
        (b"\x00\x02" + struct.pack("!i", 1) + b"a" + struct.pack("!i", 1) + b"bc", "add up"),
        (b"\x00\x02" + struct.pack("!i", 1) + b"a" + b"\x00\x00", "length"),
    ],
)
def test_malformed_rows_are_refused(payload: bytes, why: str) -> None:
    plan = masker(columns("a")).plan([field("a"), field("b")], {})
    with pytest.raises(MalformedRow, match=why):
        plan.mask_row(payload)


def test_no_rules_means_inactive_and_no_plan() -> None:
    m = masker()
    assert not m.active
    assert m.plan([field("email")], {}) is None


def test_plan_is_none_when_no_column_can_need_masking() -> None:
    # Detectors never look inside integers or dates; the column rule names another table.
    assert masker(detectors()).plan([field("id", INT4), field("created", DATE)], {}) is None
    assert masker(columns("customers.email")).plan([field("email", TEXT, table_oid=7)], {7: "public.orders"}) is None


# --- matching columns ---------------------------------------------------------------------


def test_table_qualified_patterns_match_schema_qualified_names() -> None:
    m = masker(columns("customers.email"))
    fields = [field("email", table_oid=7)]
    assert m.plan(fields, {7: "public.customers"}) is not None
    assert m.plan(fields, {7: "customers"}) is not None
    assert m.plan(fields, {}) is None  # unknown table: only patterns without a table part match
    assert masker(columns("public.customers.email")).plan(fields, {7: "public.customers"}) is not None


def test_renamed_column_is_masked_when_the_broker_knows_its_source() -> None:
    m = masker(columns("email"))
    fields = [field("e", table_oid=7, attr=3)]
    assert m.plan(fields, {7: "users"}) is None
    plan = m.plan(fields, {7: "users"}, column_names={(7, 3): "email"})
    assert masked_values(plan, [b"bob@example.com"]) == [b"[redacted]"]


def test_first_matching_column_rule_wins_and_beats_detectors() -> None:
    m = masker(columns("email", strategy="partial"), columns("e*", strategy="null"), detectors())
    plan = m.plan([field("email"), field("extra")], {})
    assert masked_values(plan, [b"bob@example.com", b"x@y.org"]) == [b"***@example.com", None]


def test_detectors_scoped_to_columns() -> None:
    m = masker(MaskingRule(columns=["notes"], detectors=["email"], strategy="redact"))
    plan = m.plan([field("notes"), field("other")], {})
    assert masked_values(plan, [b"mail bob@example.com", b"mail bob@example.com"]) == [
        b"mail [email]",
        b"mail bob@example.com",
    ]


def test_unknown_result_format_is_refused() -> None:
    with pytest.raises(MaskingRefused, match="format 2"):
        masker(columns("a")).plan([field("a", fmt=2)], {})


def test_apply_result_formats() -> None:
    fields = [field("a"), field("b", INT4)]
    assert [f.format for f in apply_result_formats(fields, [])] == [0, 0]
    assert [f.format for f in apply_result_formats(fields, [1])] == [1, 1]
    assert [f.format for f in apply_result_formats(fields, [0, 1])] == [0, 1]
    with pytest.raises(MalformedRow):
        apply_result_formats(fields, [0, 1, 1])


# --- values stay valid for their type ---------------------------------------------------------

INT_RANGES = {INT2: 2, INT4: 4, INT8: 8}


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([INT2, INT4, INT8]), st.data())
def test_hashed_integers_fit_their_type_in_text_and_binary(type_oid, data) -> None:
    width = INT_RANGES[type_oid]
    value = data.draw(st.integers(-(2 ** (8 * width - 1)), 2 ** (8 * width - 1) - 1))
    m = masker(columns("n", strategy="hash"))
    text = masked_values(m.plan([field("n", type_oid)], {}), [str(value).encode()])[0]
    binary = masked_values(m.plan([field("n", type_oid, fmt=1)], {}), [value.to_bytes(width, "big", signed=True)])[0]
    as_text = int(text)
    assert 0 <= as_text < 2 ** (8 * width - 1)
    assert len(binary) == width
    assert int.from_bytes(binary, "big", signed=True) == as_text  # one value whatever the format


def test_hash_is_stable_and_depends_on_the_key() -> None:
    fields = [field("n", INT8)]
    first = masked_values(masker(columns("n", strategy="hash")).plan(fields, {}), [b"42"])
    again = masked_values(masker(columns("n", strategy="hash")).plan(fields, {}), [b"42"])
    other_key = masked_values(masker(columns("n", strategy="hash"), key=OTHER_KEY).plan(fields, {}), [b"42"])
    other_value = masked_values(masker(columns("n", strategy="hash")).plan(fields, {}), [b"43"])
    assert first == again
    assert first != other_key and first != other_value and first != [b"42"]


@settings(max_examples=100, deadline=None)
@given(st.uuids())
def test_hashed_uuids_are_uuids_in_both_formats(value: uuid.UUID) -> None:
    m = masker(columns("u", strategy="hash"))
    text = masked_values(m.plan([field("u", UUID)], {}), [str(value).encode()])[0]
    binary = masked_values(m.plan([field("u", UUID, fmt=1)], {}), [value.bytes])[0]
    assert uuid.UUID(text.decode()) == uuid.UUID(bytes=binary)
    assert uuid.UUID(text.decode()) != value


def pg_numeric_binary(value: Decimal, dscale: int) -> bytes:
    """numeric's binary send format, built the way PostgreSQL builds it: base-10000 digit
    groups around the decimal point, the weight of the first group, sign and display scale."""
    sign = 0x4000 if value < 0 else 0
    integer, _, fraction = f"{value.copy_abs():.{dscale}f}".partition(".")  # abs() would round to 28 digits
    integer = integer.lstrip("0")
    integer_groups = [int(integer[max(0, i - 4) : i]) for i in range(len(integer), 0, -4)][::-1]
    fraction_groups = [int(fraction[i : i + 4].ljust(4, "0")) for i in range(0, len(fraction), 4)]
    groups = integer_groups + fraction_groups
    weight = len(integer_groups) - 1
    while groups and groups[0] == 0:  # leading zero groups are not sent
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:  # nor trailing ones
        groups.pop()
    if not groups:
        weight = 0
    return struct.pack("!hhHh", len(groups), weight, sign, dscale) + struct.pack(f"!{len(groups)}h", *groups)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 30), st.data())
def test_hashed_numerics_fit_precision_and_scale(precision: int, data) -> None:
    scale = data.draw(st.integers(0, precision))
    typmod = ((precision << 16) | scale) + 4
    bound = Decimal(10) ** (precision - scale) - 1
    value = data.draw(st.decimals(allow_nan=False, allow_infinity=False, places=scale, max_value=bound, min_value=-bound))
    value = abs(value) if value == 0 else value  # PostgreSQL never prints -0
    m = masker(columns("amount", strategy="hash"))
    text = masked_values(m.plan([field("amount", NUMERIC, typmod=typmod)], {}), [f"{value:.{scale}f}".encode()])[0]
    masked = Decimal(text.decode())
    assert masked >= 0 and masked == masked.to_integral_value()
    assert len(str(int(masked)).lstrip("0")) <= precision - scale
    assert -masked.as_tuple().exponent == scale
    binary_plan = m.plan([field("amount", NUMERIC, typmod=typmod, fmt=1)], {})
    binary = masked_values(binary_plan, [pg_numeric_binary(value, scale)])[0]
    assert numeric_binary_to_text(binary) == text  # one value whatever the format


@settings(max_examples=200, deadline=None)
@given(st.decimals(allow_nan=False, allow_infinity=False, max_value=10**12, min_value=-(10**12), places=4))
def test_numeric_binary_decoding_matches_postgres_text(value: Decimal) -> None:
    value = abs(value) if value == 0 else value
    assert numeric_binary_to_text(pg_numeric_binary(value, 4)).decode() == f"{value:.4f}"


def test_numeric_without_typmod_and_special_values() -> None:
    assert numeric_binary_to_text(struct.pack("!hhHh", 0, 0, 0xC000, 0)) == b"NaN"
    text = numeric_from_digest(b"\xff" * 8, -1, binary=False)
    assert len(text) <= 15 and Decimal(text.decode()) >= 0


def test_hashed_bytea_in_both_formats() -> None:
    m = masker(columns("blob", strategy="hash"))
    binary = masked_values(m.plan([field("blob", BYTEA, fmt=1)], {}), [b"\x00\x01secret"])[0]
    hex_text = masked_values(m.plan([field("blob", BYTEA)], {}), [b"\\x" + b"\x00\x01secret".hex().encode()])[0]
    escaped = masked_values(m.plan([field("blob", BYTEA)], {}), [b"\\000\\001secret"])[0]
    assert len(binary) == 32
    assert hex_text == escaped == b"\\x" + binary.hex().encode()


@pytest.mark.parametrize("strategy", ["redact", "partial", "null"])
@pytest.mark.parametrize("type_oid", [INT4, UUID, NUMERIC, BYTEA, DATE, FLOAT8, TEXT_ARRAY])
def test_non_text_types_without_a_valid_replacement_become_null(type_oid: int, strategy: str) -> None:
    plan = masker(columns("x", strategy=strategy)).plan([field("x", type_oid)], {})
    assert masked_values(plan, [b"anything"]) == [None]


@pytest.mark.parametrize("type_oid", [DATE, FLOAT8, TEXT_ARRAY])
def test_hash_of_other_types_is_null(type_oid: int) -> None:
    plan = masker(columns("x", strategy="hash")).plan([field("x", type_oid)], {})
    assert masked_values(plan, [b"2024-01-15"]) == [None]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40), st.data())
def test_bpchar_keeps_its_length(width: int, text: str, data) -> None:
    strategy = data.draw(st.sampled_from(["redact", "partial", "hash"]))
    value = text[:width].ljust(width)
    plan = masker(columns("code", strategy=strategy)).plan([field("code", BPCHAR, typmod=width + 4)], {})
    out = masked_values(plan, [value.encode()])[0].decode()
    assert len(out) == width


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.text(max_size=60), st.data())
def test_varchar_limit_is_respected(limit: int, text: str, data) -> None:
    strategy = data.draw(st.sampled_from(["redact", "partial", "hash"]))
    plan = masker(columns("v", strategy=strategy), detectors()).plan([field("v", VARCHAR, typmod=limit + 4)], {})
    out = masked_values(plan, [text[:limit].encode("utf-8", "surrogatepass")])[0]
    assert len(out.decode("utf-8", "surrogateescape")) <= limit


def test_whole_text_strategies() -> None:
    fields = [field("email"), field("card"), field("note")]
    rules = lambda s: masker(columns("email", "card", "note", strategy=s))  # noqa: E731
    row = [b"bob@example.com", b"4111111111111111", "héllo wörld".encode()]
    assert masked_values(rules("redact").plan(fields, {}), row) == [b"[redacted]"] * 3
    partial = masked_values(rules("partial").plan(fields, {}), row)
    assert partial[:2] == [b"***@example.com", b"************1111"]
    assert partial[2].decode() == "*******örld"  # 11 characters, the last 4 kept
    hashed = masked_values(rules("hash").plan(fields, {}), row)
    assert all(h.startswith(b"h:") and len(h) == 18 for h in hashed) and len(set(hashed)) == 3


def test_bpchar_hash_ignores_padding() -> None:
    plan = masker(columns("c", strategy="hash")).plan([field("c", BPCHAR, typmod=24)], {})
    short = masked_values(plan, [b"ab".ljust(20)])[0]
    text_plan = masker(columns("c", strategy="hash")).plan([field("c", TEXT)], {})
    assert short.rstrip() == masked_values(text_plan, [b"ab"])[0]


# --- JSON, XML, arrays, user-defined types -----------------------------------------------------

DOCUMENT = {
    "name": "Bob",
    "email": "bob@example.com",
    "notes": ["call +1 415 555 0100", "no PII here", 3.14159265358979, 12345678901234567890],
    "card": 4111111111111111,
    "nested": {"iban": "DE89 3704 0044 0532 0130 00", "ok": True, "none": None},
    "escaped": "mail\u00a0bob\u0040example.com\nnext line",
}


@pytest.mark.parametrize("strategy", ["redact", "partial", "hash"])
@pytest.mark.parametrize(("type_oid", "fmt"), [(JSON, 0), (JSONB, 0), (JSONB, 1)])
def test_json_stays_valid_json_with_pii_masked(type_oid: int, fmt: int, strategy: str) -> None:
    for text in (json.dumps(DOCUMENT), json.dumps(DOCUMENT, ensure_ascii=False), json.dumps(DOCUMENT, indent=2)):
        raw = text.encode()
        if fmt == 1:
            raw = b"\x01" + raw
        plan = masker(detectors(strategy)).plan([field("doc", type_oid, fmt=fmt)], {})
        out = masked_values(plan, [raw])[0]
        if fmt == 1:
            assert out[:1] == b"\x01"
            out = out[1:]
        masked = json.loads(out)
        assert list(masked) == list(DOCUMENT)  # same keys, same order
        assert masked["name"] == "Bob" and masked["nested"]["ok"] is True and masked["nested"]["none"] is None
        assert masked["notes"][1:3] == ["no PII here", 3.14159265358979]
        assert masked["notes"][3] == 12345678901234567890  # numbers keep their precision
        flat = json.dumps(masked)
        for secret in ("bob@example.com", "415 555 0100", "4111111111111111", "DE89 3704", "bob@example"):
            assert secret not in flat


def test_json_whole_column_masks_are_json() -> None:
    for strategy in ("redact", "partial", "hash"):
        for type_oid, fmt, raw in ((JSON, 0, b'{"a": 1}'), (JSONB, 1, b'\x01{"a": 1}')):
            out = masked_values(masker(columns("doc", strategy=strategy)).plan([field("doc", type_oid, fmt=fmt)], {}), [raw])[0]
            assert isinstance(json.loads(out[1:] if fmt else out), str)


def test_unknown_jsonb_version_fails_closed() -> None:
    plan = masker(detectors()).plan([field("doc", JSONB, fmt=1)], {})
    assert masked_values(plan, [b"\x02{}"]) == [None]


def test_service_account_key_json() -> None:
    key = {
        "type": "service_account",
        "project_id": "demo",
        "private_key_id": "4f2a9c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39",
        "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n",
        "client_email": "svc@demo.iam.gserviceaccount.com",
    }
    plan = masker(detectors()).plan([field("doc", JSONB)], {})
    masked = json.loads(masked_values(plan, [json.dumps(key).encode()])[0])
    assert masked["private_key_id"] == "[secret]" and masked["private_key"] == "[secret]"
    assert masked["client_email"] == "[email]" and masked["project_id"] == "demo"


def test_detector_null_strategy_nulls_json_and_text() -> None:
    plan = masker(detectors("null")).plan([field("doc", JSON), field("t")], {})
    assert masked_values(plan, [b'{"a": "bob@example.com"}', b"call 415-555-0100"]) == [None, None]
    assert masked_values(plan, [b'{"a": "clean"}', b"clean"]) == [b'{"a": "clean"}', b"clean"]


def test_text_arrays_and_citext_in_text_format() -> None:
    plan = masker(detectors()).plan([field("tags", TEXT_ARRAY), field("ci", CITEXT), field("x", XML)], {})
    out = masked_values(plan, [b'{"bob@example.com",plain,"call +1 415 555 0100"}', b"Bob@Example.com", b"<a>bob@example.com</a>"])
    assert out == [b'{"[email]",plain,"call [phone]"}', b"[email]", b"<a>[email]</a>"]


def test_binary_arrays_and_user_types_with_pii_become_null() -> None:
    plan = masker(detectors()).plan([field("tags", TEXT_ARRAY, fmt=1), field("ci", CITEXT, fmt=1)], {})
    element = b"bob@example.com"
    array = struct.pack("!iiIii", 1, 0, 25, 1, 1) + struct.pack("!i", len(element)) + element
    assert masked_values(plan, [array, b"bob@example.com"]) == [None, None]
    assert masked_values(plan, [b"\x00\x00\x00\x01clean", b"clean"]) == [b"\x00\x00\x00\x01clean", b"clean"]


def test_invalid_utf8_survives_around_a_mask() -> None:
    plan = masker(detectors()).plan([field("t")], {})
    assert masked_values(plan, [b"\xff\xfe mail bob@example.com \xc3"]) == [b"\xff\xfe mail [email] \xc3"]


def test_hash_tokens_join_across_columns_and_free_text() -> None:
    # The same address hashed as a whole column and found inside notes gives one token,
    # so an agent can still relate the two without seeing the address.
    plan = masker(columns("email", strategy="hash"), detectors("hash")).plan([field("email"), field("notes")], {})
    email, notes = masked_values(plan, [b"bob@example.com", b"write to bob@example.com"])
    assert email.startswith(b"h:") and notes == b"write to " + email
