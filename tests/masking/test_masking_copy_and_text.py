"""COPY TO STDOUT rows (text and CSV) and free text (errors, notices, logs)."""
from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitgate.masking import MaskingRefused
from jitgate.policy import MaskingRule

from .helpers import INT4, columns, detectors, masker

# --- COPY text format ---------------------------------------------------------------------------


def copy_text_line(values: list[str | None]) -> bytes:
    """A row as PostgreSQL's COPY TO writes it in text format."""

    def escape(value: str | None) -> str:
        if value is None:
            return "\\N"
        for raw, escaped in (("\\", "\\\\"), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")):
            value = value.replace(raw, escaped)
        return value

    return ("\t".join(escape(v) for v in values) + "\n").encode()


def parse_copy_text_line(line: bytes) -> list[str | None]:
    fields = line.decode().rstrip("\n").split("\t")
    out: list[str | None] = []
    for f in fields:
        if f == "\\N":
            out.append(None)
            continue
        out.append(f.replace("\\\\", "\x00").replace("\\n", "\n").replace("\\r", "\r").replace("\\t", "\t").replace("\x00", "\\"))
    return out


def test_copy_text_masks_named_columns_and_detections() -> None:
    plan = masker(columns("email", strategy="partial"), detectors()).plan_copy(["id", "email", "notes"], "customers")
    line = copy_text_line(["42", "bob@example.com", "call +1 415 555 0100\tor\nmail bob@example.com"])
    assert parse_copy_text_line(plan.mask_line(line)) == ["42", "***@example.com", "call [phone]\tor\nmail [email]"]


def test_copy_text_null_and_untouched_lines() -> None:
    plan = masker(columns("email", strategy="null")).plan_copy(["id", "email"], None)
    assert plan.mask_line(b"1\t\\N\n") == b"1\t\\N\n"
    assert plan.mask_line(b"1\tbob@example.com\n") == b"1\t\\N\n"
    clean = masker(detectors()).plan_copy(["a", "b"], None)
    line = b"1\tnothing to see\\there\n"
    assert clean.mask_line(line) is line  # untouched rows are forwarded as they came


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        # PostgreSQL text never holds NUL.
        st.one_of(st.none(), st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=15)),
        min_size=3,
        max_size=6,
    )
)
def test_copy_text_round_trip_of_arbitrary_fields(values: list[str | None]) -> None:
    # Column 1 is masked whole; every other field must come back exactly as it was.
    names = [f"c{i}" for i in range(len(values))]
    names[1] = "secret"
    plan = masker(columns("secret")).plan_copy(names, None)
    out = parse_copy_text_line(plan.mask_line(copy_text_line(values)))
    assert out[1] == (None if values[1] is None else "[redacted]")
    assert out[:1] + out[2:] == values[:1] + values[2:]


def test_copy_text_with_custom_delimiter_and_escaped_delimiter() -> None:
    plan = masker(columns("email")).plan_copy(["a", "email"], None, delimiter="|")
    assert plan.mask_line(b"x\\|y|bob@example.com\n") == b"x\\|y|[redacted]\n"


def test_copy_hash_uses_the_type_when_known() -> None:
    plan = masker(columns("id", strategy="hash")).plan_copy(["id"], None, type_oids=[INT4])
    assert int(plan.mask_line(b"42\n")) >= 0


# --- COPY CSV format ----------------------------------------------------------------------------


def csv_line(values: list[str | None]) -> bytes:
    """A row as PostgreSQL's COPY TO writes it in CSV: NULL unquoted empty, "" an empty string."""

    def quote(value: str | None) -> str:
        if value is None:
            return ""
        if value == "" or any(c in value for c in ',"\n\r') or value != value.strip():
            return '"' + value.replace('"', '""') + '"'
        return value

    return (",".join(quote(v) for v in values) + "\n").encode()


def test_copy_csv_masks_quoted_fields_and_keeps_csv_valid() -> None:
    plan = masker(columns("email", strategy="hash"), detectors()).plan_copy(["id", "email", "notes"], None, format="csv")
    line = csv_line(["7", "bob@example.com", 'said "call +1 415 555 0100",\nthen left'])
    row = next(csv.reader(io.StringIO(plan.mask_line(line).decode())))
    assert row[0] == "7" and row[1].startswith("h:") and row[2] == 'said "call [phone]",\nthen left'


def test_copy_csv_null_is_unquoted_empty_and_header_passes() -> None:
    plan = masker(columns("email", strategy="null")).plan_copy(["id", "email"], None, format="csv", header=True)
    assert plan.mask_line(b"id,email\n") == b"id,email\n"
    assert plan.mask_line(b'1,"bob@example.com"\n') == b"1,\n"
    assert plan.mask_line(b'2,""\n') == b"2,\n"  # an empty string is not NULL, but masks to NULL


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12), min_size=3, max_size=5))
def test_copy_csv_round_trip_of_arbitrary_fields(values: list[str]) -> None:
    names = [f"c{i}" for i in range(len(values))]
    names[0] = "secret"
    plan = masker(columns("secret")).plan_copy(names, None, format="csv")
    out = next(csv.reader(io.StringIO(plan.mask_line(csv_line(values)).decode(), newline="")))
    assert out == ["[redacted]"] + values[1:]


# --- COPY refusals ------------------------------------------------------------------------------


def test_binary_copy_is_refused_when_rules_are_active() -> None:
    with pytest.raises(MaskingRefused, match="FORMAT text or FORMAT csv"):
        masker(detectors()).plan_copy(["a"], "t", format="binary")
    assert masker().plan_copy(["a"], "t", format="binary") is None  # no rules: nothing to refuse


def test_copy_without_known_columns() -> None:
    with pytest.raises(MaskingRefused, match="list the columns"):
        masker(columns("email")).plan_copy(None, "customers")
    # A rule for another table cannot apply; detectors then scan every field.
    plan = masker(columns("users.email"), detectors()).plan_copy(None, "public.orders")
    assert plan.mask_line(b"1\tbob@example.com\n") == b"1\t[email]\n"
    with pytest.raises(MaskingRefused):
        masker(columns("users.email")).plan_copy(None, "public.users")


def test_copy_plan_is_none_when_nothing_applies() -> None:
    assert masker(columns("users.email")).plan_copy(["id", "total"], "orders") is None


# --- free text ----------------------------------------------------------------------------------


def test_unique_violation_detail_is_masked_by_the_column_rule() -> None:
    m = masker(columns("ssn_raw", strategy="hash"), columns("email"))
    detail = "Key (ssn_raw)=(123456789) already exists."
    masked = m.mask_text(detail)
    assert "123456789" not in masked and masked.startswith("Key (ssn_raw)=(h:")
    assert m.mask_text("Key (email, tenant)=(bob@example.com, 7) already exists.") == (
        "Key (email, tenant)=([redacted], 7) already exists."
    )
    assert m.mask_text("Key (email, t)=(a, b, c) already exists.") == "Key (email, t)=([redacted]) already exists."
    assert m.mask_text("Key (id)=(42) is not present in table \"users\".") == 'Key (id)=(42) is not present in table "users".'


def test_failing_row_is_hidden_when_a_column_rule_may_apply() -> None:
    text = "Failing row contains (1, bob@example.com, null)."
    assert masker(columns("email")).mask_text(text) == "Failing row contains ([redacted])."
    assert masker(columns("users.email")).mask_text(text, table="orders") == text


def test_detectors_in_free_text_and_null_redacts() -> None:
    m = masker(MaskingRule(detectors=["email", "phone"], strategy="null"))
    assert m.mask_text("user bob@example.com called from 415-555-0100") == "user [email] called from [phone]"
    assert masker().mask_text("bob@example.com") == "bob@example.com"
