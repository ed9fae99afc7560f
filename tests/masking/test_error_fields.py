"""What PostgreSQL writes into an error or notice of a statement that reads masked columns is data
(Masker.error_fields). Each case: the statement, the fields PostgreSQL sent (as it sends them, from
a real run on the demo data: an error raised by a value carries no position), what must not reach
the client, and what must stay."""
from __future__ import annotations

from dataclasses import replace

import pytest

from jitgate.masking.lineage import StatementLineage
from jitgate.masking.masker import ERROR_TEXT_WITHHELD
from tests.masking.helpers import columns, masker
from tests.masking.test_lineage import one

MASKER = masker(columns("email", "ssn"))

ERROR_CASES = [
    # (statement, fields, must not appear, must appear)
    ("SELECT reverse(email)::int FROM customers",
     {"C": "22P02", "M": 'invalid input syntax for type integer: "moc.elpmaxe@ada"'},
     ["moc.elpmaxe"], ['invalid input syntax for type integer: "[redacted]"']),
    ("SELECT translate(email, '@.', '#,')::regclass FROM customers",  # class 42, raised at run time
     {"C": "42P01", "M": 'relation "katherine#example,com" does not exist'},
     ["katherine"], ['relation "[redacted]" does not exist']),
    ("SELECT translate(email, '@.', '#,')::regproc FROM customers",
     {"C": "42883", "M": 'function "ada#example,com" does not exist'},
     ["ada#"], ['function "[redacted]" does not exist']),
    ("SELECT make_date(ascii(substr(email, 2, 1)), 13, 1) FROM customers WHERE id = 1",  # a character a call
     {"C": "22008", "M": "date field value out of range: 100-13-01"},
     ["100"], ['date field value out of range: "[redacted]"']),
    ("SELECT translate(email, '@.', '#,')::jsonb FROM customers WHERE id = 3",
     {"C": "22P02", "M": "invalid input syntax for type json", "D": 'Token "alan#example,com" is invalid.',
      "W": "JSON data, line 1: alan..."},
     ["alan"], ["invalid input syntax for type json", ERROR_TEXT_WITHHELD]),
    ("UPDATE customers SET email = lower(email) WHERE id = 2",
     {"C": "23505", "M": 'duplicate key value violates unique constraint "customers_email_key"',
      "D": "Key (email)=(ada@example.com) already exists."},
     ["ada@", "customers_email_key"], ["duplicate key value violates unique constraint"]),
    ("SELECT chr(ascii(email) * 1000000) FROM customers",  # a number before any colon
     {"C": "54000", "M": "requested character too large for encoding 97000000"},
     ["97000000"], ["requested character too large for encoding [redacted]"]),
    # A statement that lists every candidate does not make the value "its own" (no oracle).
    ("SELECT substr(translate(email, '@.', '#,'), 2, 1)::regclass FROM customers WHERE id = 1 "
     "AND 'a' NOT IN ('a', 'b', 'c', 'd', 'e')",
     {"C": "42P01", "M": 'relation "d" does not exist'}, ['"d"'], ['relation "[redacted]" does not exist']),
    ("SELECT translate(email, '@.', '#,')::regoper FROM customers",  # class 42, unquoted after a colon
     {"C": "42883", "M": "operator does not exist: ada#example,com"}, ["ada#"], ["operator does not exist"]),
    ("SELECT (repeat('1', ascii(substr(email, 2, 1))))::bit(3) FROM customers /* 100 */",
     {"C": "22026", "M": "bit string length 100 does not match type bit(3)"}, ["100"],
     ["bit string length [redacted] does not match type bit([redacted])"]),
]

# Errors about what the caller wrote keep it: the agent can fix its SQL.
KEPT_CASES = [
    ("SELECT nosuch FROM customers WHERE email = 'x'",
     {"C": "42703", "M": 'column "nosuch" does not exist', "P": "8"}),
    ("SELECT email FROM customers WHERE email = 'x' LIMIT 5 LIMIT 6",
     {"C": "42601", "M": 'syntax error at or near "LIMIT"', "P": "55"}),
    ("SELECT id FROM customers WHERE email = 1",
     {"C": "42883", "M": "operator does not exist: text = integer", "P": "38",
      "H": "No operator matches the given name and argument types. You might need to add explicit type casts."}),
    ("SELECT id FROM customers WHERE email = 'x'", {"C": "57014", "M": "canceling statement due to user request"}),
]


@pytest.mark.parametrize("sql, fields, hidden, shown", ERROR_CASES)
def test_what_an_error_may_carry_from_the_data_is_withheld(sql, fields, hidden, shown):
    out = MASKER.error_fields(fields, sql, one(sql))
    text = " ".join(out.values())
    assert out["C"] == fields["C"]  # the SQLSTATE stays
    for value in hidden:
        assert value not in text, (value, out)
    for value in shown:
        assert value in text, (value, out)


@pytest.mark.parametrize("sql, fields", KEPT_CASES)
def test_an_error_about_the_callers_own_text_is_kept(sql, fields):
    assert MASKER.error_fields(fields, sql, one(sql)) == fields


def test_code_the_gateway_cannot_see_gets_its_message_withheld_whatever_its_sqlstate():
    """RAISE in a function that is not built in can write any text under any SQLSTATE, 42 too."""
    lineage = replace(one("SELECT email FROM customers"), runs_user_code=True)
    for code in ("42P01", "P0001", "00000"):
        out = MASKER.error_fields({"C": code, "M": "ada#example,com", "D": "x", "P": "8"},
                                  "SELECT f(email) FROM customers", lineage)
        assert out == {"C": code, "M": ERROR_TEXT_WITHHELD, "D": ERROR_TEXT_WITHHELD, "P": "8"}, out


def test_a_quoted_name_stays_only_where_the_position_points():
    sql = "SELECT id FROM customers WHERE email = 'x' AND nosuch = 1"
    fields = {"C": "42703", "M": 'column "nosuch" does not exist', "H": 'Perhaps you meant "email".', "P": "48"}
    out = MASKER.error_fields(fields, sql, one("SELECT id FROM customers WHERE email = 'x'"))
    assert out["M"] == 'column "nosuch" does not exist' and out["H"] == 'Perhaps you meant "[redacted]".', out


def test_a_statement_that_reads_no_masked_column_keeps_its_error():
    fields = {"C": "22008", "M": "date field value out of range: 100-13-01", "D": "x"}
    sql = "SELECT upper(full_name) FROM customers WHERE id = 100"
    assert MASKER.error_fields(fields, sql, one(sql)) == fields
    unknown = StatementLineage(unknown="the gateway could not read the target's catalog")
    assert MASKER.error_fields(fields, sql, unknown)["M"] == 'date field value out of range: "[redacted]"'
