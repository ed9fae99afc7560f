"""Values derived from columns that detectors scan are masked whole (attack corpus).

A detector sees a value's shape. ``translate(notes, '0123456789', '０１２３４５６７８９')`` keeps
the phone number in ``notes`` and changes its shape, so the detector that would have found it
in ``notes`` finds nothing in the result: the same class as the first wave's
``replace(email, ...)`` against column rules. The fix follows the data instead: a result column
computed from a column a detector rule scans (any type that may hold text) is masked whole, like
one computed from a column under a column rule; a predicate on such a column is a
``sensitive_predicate``. Values computed only from numbers, dates and booleans (their types come
from the catalog) are scanned as before, and a column read as it is stays scanned, not hidden.
"""
from __future__ import annotations

import pytest

from jitgate.masking import Masker
from jitgate.masking.lineage import Catalog, Relation, follow
from jitgate.policy import MaskingConfig
from tests.masking.helpers import INT4, KEY, NUMERIC, TEXT, field

INT4_OID, TEXT_OID, NUMERIC_OID, TIMESTAMPTZ_OID, JSONB_OID = 23, 25, 1700, 1184, 3802
CUSTOMERS = Relation("public.customers", "r", ("id", "full_name", "email", "card_number", "notes", "created_at"),
                     types=(INT4_OID, TEXT_OID, TEXT_OID, TEXT_OID, TEXT_OID, TIMESTAMPTZ_OID))
ORDERS = Relation("public.orders", "r", ("id", "customer_id", "amount", "status"),
                  types=(INT4_OID, INT4_OID, NUMERIC_OID, TEXT_OID))
CATALOG = Catalog(
    relations={
        "customers": CUSTOMERS,
        "orders": ORDERS,
        "shadow": Relation("public.shadow", "v", ("n",),
                           "SELECT translate(notes, '0123456789', 'abcdefghij') AS n FROM customers"),
        # The same table seen by a lookup that did not give the columns' types: every column may hold text.
        "untyped": Relation("public.untyped", "r", ("id", "notes")),
    },
    functions={name: True for name in ("translate", "regexp_replace", "upper", "length", "ascii", "substr",
                                       "string_agg", "to_jsonb", "coalesce", "md5", "max", "count", "format",
                                       "convert_to", "encode", "lower", "now")} | {"myfn": False},
    operators={op: True for op in ("+", "*", "||", "~~", "=", "<", ">")},
)
DEMO_RULES = [
    {"columns": ["email"], "strategy": "partial"},
    {"columns": ["card_number"], "strategy": "partial", "keep_last": 4},
    {"detectors": ["email", "card", "iban", "ssn", "phone", "secret"], "strategy": "redact"},
]
PHONE = "+1 415 555 0199"
FULL_WIDTH = PHONE.translate(str.maketrans("0123456789", "０１２３４５６７８９"))


def masker(rules=DEMO_RULES) -> Masker:
    return Masker(MaskingConfig.model_validate({"rules": rules}), KEY)


def one(sql: str, catalog: Catalog = CATALOG):
    [statement] = follow(sql, catalog)
    assert statement.unknown is None, statement.unknown
    return statement


def row(*values: bytes) -> bytes:
    return len(values).to_bytes(2, "big") + b"".join(len(v).to_bytes(4, "big") + v for v in values)


def masked_value(rules, sql: str, type_oid: int, value: bytes) -> bytes:
    """What the one-column result of ``sql`` shows for ``value`` under ``rules``."""
    plan = masker(rules).plan([field("x", type_oid)], {}, None, one(sql))
    if plan is None:
        return value
    out = plan.mask_row(row(value))  # a whole DataRow message: type, length, count, field length
    return out[11:]


# (statement, result type, what the server computed, decision): "whole" = masked whole whatever
# the value; "clear" = passed as it is; "scanned" = detectors ran on it (the phone is masked).
CORPUS = [
    # Shape-changing transformations of a scanned column: the detector would see nothing.
    ("SELECT translate(notes, '0123456789', '０１２３４５６７８９') FROM customers", TEXT, FULL_WIDTH.encode(), "whole"),
    ("SELECT translate(notes, '0123456789', 'abcdefghij') FROM customers", TEXT, b"+b ebf fff bjjj", "whole"),
    ("SELECT regexp_replace(notes, '([0-9])', '\\1\u200d', 'g') FROM customers", TEXT,
     "\u200d".join(PHONE).encode(), "whole"),
    ("SELECT upper(full_name) FROM customers", TEXT, b"ADA LOVELACE", "whole"),
    ("SELECT coalesce(notes, '') FROM customers", TEXT, PHONE.encode(), "whole"),
    ("SELECT encode(convert_to(notes, 'UTF8'), 'base64') FROM customers", TEXT, b"KzEgNDE1IDU1NSAwMTk5", "whole"),
    ("SELECT string_agg(notes, ',') FROM customers", TEXT, PHONE.encode(), "whole"),
    ("SELECT to_jsonb(c) FROM customers c", JSONB_OID, b'{"notes": "x"}', "whole"),
    ("SELECT c::text FROM customers c", TEXT, b"(1,Ada,x,y,z,2024)", "whole"),
    ("SELECT format('%s', notes) FROM customers", TEXT, PHONE.encode(), "whole"),
    # A number or a truth value computed from text leaks it a character or a bit at a time.
    ("SELECT length(notes) FROM customers", INT4, b"15", "whole"),
    ("SELECT ascii(substr(notes, 3, 1)) FROM customers", INT4, b"52", "whole"),
    ("SELECT (notes ~~ '%555%')::int FROM customers", INT4, b"1", "whole"),
    ("SELECT count(notes) FROM customers", INT4, b"5", "whole"),
    # Indirection: a view, a subquery, a CTE, a join, a set operation.
    ("SELECT n FROM shadow", TEXT, b"+b ebf fff bjjj", "whole"),
    ("SELECT t.x FROM (SELECT lower(notes) AS x FROM customers) t", TEXT, b"abc", "whole"),
    ("WITH t AS (SELECT notes || '' AS x FROM customers) SELECT x FROM t", TEXT, b"abc", "whole"),
    ("SELECT o.id + length(c.full_name) FROM orders o JOIN customers c ON c.id = o.customer_id", INT4, b"12", "whole"),
    ("SELECT md5(status) FROM orders UNION SELECT 'x'", TEXT, b"0cc175b9", "whole"),
    # A column read as it is stays scanned (a phone in it is found), not hidden.
    ("SELECT notes FROM customers", TEXT, f"call {PHONE}".encode(), "scanned"),
    ("SELECT n.notes FROM (SELECT notes FROM customers) n", TEXT, f"call {PHONE}".encode(), "scanned"),
    # Values computed only from numbers and dates hold no text: scanned like any result, not hidden.
    ("SELECT id + 1 FROM customers", INT4, b"2", "clear"),
    ("SELECT amount * 2 FROM orders", NUMERIC, b"20.50", "clear"),
    ("SELECT max(created_at) FROM customers", TEXT, b"2024-01-01", "clear"),
    ("SELECT count(*) FROM customers", INT4, b"5", "clear"),
    ("SELECT id || ' +1 415 555 0199' FROM customers", TEXT, f"1 {PHONE}".encode(), "scanned"),
    # A column whose type the catalog did not give may hold text: its derived values are hidden.
    ("SELECT id + 1 FROM untyped", INT4, b"2", "whole"),
]


# Another value of each type: masked whole, a value shows the same whatever it was.
OTHER_VALUE = {TEXT: b"something else entirely", INT4: b"7", NUMERIC: b"3.25", JSONB_OID: b'{"a": 1}'}


@pytest.mark.parametrize("sql, type_oid, value, decision", CORPUS, ids=[c[0][:60] for c in CORPUS])
def test_derived_values_of_scanned_columns(sql, type_oid, value, decision):
    shown = masked_value(DEMO_RULES, sql, type_oid, value)
    if decision == "clear":
        assert shown == value
    elif decision == "scanned":
        assert PHONE.encode() not in shown and b"[phone]" in shown, shown
    else:
        assert decision == "whole"
        assert shown != value and masked_value(DEMO_RULES, sql, type_oid, OTHER_VALUE[type_oid]) == shown, shown


def test_whole_masking_says_why():
    lineage = one("SELECT translate(notes, '0123456789', 'abcdefghij') AS x FROM customers")
    plan = masker().plan([field("x")], {}, None, lineage)
    reason = plan.reasons[0]
    assert "derived from public.customers.notes" in reason and "scanned by detectors" in reason, reason


def test_column_rules_still_decide_their_columns():
    """email is under a column rule (partial): derived, it is masked whole by that rule as before."""
    lineage = one("SELECT lower(email) AS x FROM customers")
    plan = masker().plan([field("x")], {}, None, lineage)
    assert "column rule email" in plan.reasons[0]


def test_a_detector_rule_scoped_to_some_columns_protects_those_only():
    rules = [{"detectors": ["phone"], "columns": ["notes"], "strategy": "hash"}]
    assert masked_value(rules, "SELECT upper(full_name) FROM customers", TEXT, b"ADA") == b"ADA"
    shown = masked_value(rules, "SELECT upper(notes) FROM customers", TEXT, PHONE.encode())
    assert PHONE.encode() not in shown and shown.startswith(b"h:"), shown  # the rule's own strategy


def test_predicates_on_scanned_columns_are_sensitive():
    m = masker()
    statement = one("SELECT id FROM customers WHERE notes ~~ '%555%' ORDER BY full_name")
    assert m.sensitive(statement.predicate_sources, statement.non_text_sources) == [
        "public.customers.full_name", "public.customers.notes"]
    plain = one("SELECT id FROM customers WHERE id = 1 AND created_at > now()")
    assert m.sensitive(plain.predicate_sources, plain.non_text_sources) == []
    assert m.reads_masked(one("SELECT translate(notes, '0', 'a')::int FROM customers"))
    assert not m.reads_masked(one("SELECT id FROM customers WHERE id = 1"))


def test_a_target_with_detector_rules_only_follows_lineage_and_fails_closed():
    rules = [{"detectors": ["phone"], "strategy": "redact"}]
    m = masker(rules)
    assert m.follows_lineage and not m.has_column_rules
    [unknown] = follow("SELECT myfn(notes) FROM customers", CATALOG)
    assert unknown.unknown
    plan = m.plan([field("x")], {}, None, unknown)
    assert plan.notice and "cannot be followed" in plan.notice
    assert FULL_WIDTH.encode() not in plan.mask_row(row(FULL_WIDTH.encode()))
    assert masked_value(rules, "SELECT translate(notes, '0123456789', '０１２３４５６７８９') FROM customers", TEXT,
                        FULL_WIDTH.encode()) != FULL_WIDTH.encode()


def test_tainted_numbers_are_hidden_too():
    """``UPDATE orders SET amount = ascii(substr(notes, 1, 1))`` then ``SELECT amount``: the
    number carries the text it was computed from (the session remembers what it wrote)."""
    [update] = follow("UPDATE orders SET amount = ascii(substr(c.notes, 1, 1)) FROM customers c "
                      "WHERE c.id = orders.customer_id", CATALOG)
    assert update.writes and update.writes[0][:2] == ("public.orders", "amount")
    tainted = Catalog(CATALOG.relations, CATALOG.functions, CATALOG.operators,
                      {("public.orders", "amount"): update.writes[0][2]})
    statement = one("SELECT amount FROM orders", tainted)
    plan = masker().plan([field("amount", NUMERIC)], {}, None, statement)
    assert plan is not None and b"43" not in plan.mask_row(row(b"43"))[11:]
