"""The relay's masking plan cache (broker.masking.SessionMasker.plan_for).

A plan is built once per session for each distinct RowDescription, lineage, masker and
catalog state. Each attack below is a second statement whose result looks like an earlier
one's in some way; it must get the decision its own columns call for, never the cached
plan of the other.
"""
from __future__ import annotations

import asyncio

from broker.masking import PLAN_CACHE_SIZE, SessionMasker
from broker.pg.codec import build_row_description, build_data_row
from broker.pg.lineage_step import UNFOLLOWED
from jitgate.masking.lineage import ColumnLineage, StatementLineage
from tests.masking.helpers import INT4, TEXT, columns, field, masker

CUSTOMERS, ORDERS = 16400, 16500  # table OIDs
EMAIL_ATTR, PHONE_ATTR = 2, 3
EMAIL = "bob@example.com"


def _session(*rules) -> tuple[SessionMasker, list]:
    """A SessionMasker whose catalog is already resolved, and a list of every plan it built."""
    session = SessionMasker(masker(*rules or (columns("customers.email"),)), None, None, owner="alice")
    session._tables.update({CUSTOMERS: "public.customers", ORDERS: "public.orders"})
    session._columns.update({(CUSTOMERS, EMAIL_ATTR): "email", (CUSTOMERS, PHONE_ATTR): "phone",
                             (ORDERS, EMAIL_ATTR): "email"})
    built = []
    inner = session.masker.plan

    def counting(*args, **kwargs):
        built.append(args)
        return inner(*args, **kwargs)

    session.masker.plan = counting
    return session, built


def _description(*fields) -> bytes:
    return build_row_description(list(fields))[5:]


def _shown(plan, value: str = EMAIL) -> bytes:
    """What the client gets for a one-column row holding ``value`` under this plan."""
    row = build_data_row([value.encode()])
    return row if plan is None else plan.mask_row(row[5:])


def _plan(session, description, lineage=None, result_formats=None):
    return asyncio.run(session.plan_for(description, lineage, result_formats))


def _lineage(*sources, direct: bool = True, name: str = "email") -> StatementLineage:
    return StatementLineage(columns=(ColumnLineage(name, frozenset(sources), direct),))


def test_the_same_columns_and_lineage_reuse_one_plan():
    session, built = _session()
    description = _description(field("email", TEXT, table_oid=CUSTOMERS, attr=EMAIL_ATTR))
    lineage = _lineage(("public.customers", "email"))
    first = _plan(session, description, lineage)
    # An equal lineage built anew (a new statement of the same shape) hits too.
    second = _plan(session, bytes(description), _lineage(("public.customers", "email")))
    assert first is second and len(built) == 1
    assert EMAIL.encode() not in _shown(second)


def test_same_column_name_from_another_table_gets_its_own_plan():
    # SELECT email FROM customers, then SELECT email FROM orders (not under the rule).
    session, built = _session()
    masked = _plan(session, _description(field("email", TEXT, table_oid=CUSTOMERS, attr=EMAIL_ATTR)),
                   _lineage(("public.customers", "email")))
    clear = _plan(session, _description(field("email", TEXT, table_oid=ORDERS, attr=EMAIL_ATTR)),
                  _lineage(("public.orders", "email")))
    assert EMAIL.encode() not in _shown(masked)
    assert clear is None and len(built) == 2
    # ...and in the other order: the clear plan is not reused for customers.
    session, built = _session()
    assert _plan(session, _description(field("email", TEXT, table_oid=ORDERS, attr=EMAIL_ATTR)),
                 _lineage(("public.orders", "email"))) is None
    assert EMAIL.encode() not in _shown(_plan(
        session, _description(field("email", TEXT, table_oid=CUSTOMERS, attr=EMAIL_ATTR)),
        _lineage(("public.customers", "email"))))


def test_an_alias_does_not_reuse_the_plan_of_another_column_under_that_alias():
    # SELECT phone AS x FROM customers (clear), then SELECT email AS x FROM customers (masked by
    # its source column), and in the other order; an alias named like a masked column is masked.
    for order in ((PHONE_ATTR, EMAIL_ATTR), (EMAIL_ATTR, PHONE_ATTR)):
        session, built = _session()
        for attr in order:
            source = "email" if attr == EMAIL_ATTR else "phone"
            plan = _plan(session, _description(field("x", TEXT, table_oid=CUSTOMERS, attr=attr)),
                         _lineage(("public.customers", source), name="x"))
            assert (EMAIL.encode() in _shown(plan)) == (source == "phone")
        assert len(built) == 2
    phone_as_email = _plan(session, _description(field("email", TEXT, table_oid=CUSTOMERS, attr=PHONE_ATTR)),
                           _lineage(("public.customers", "phone")))
    assert EMAIL.encode() not in _shown(phone_as_email)


def test_same_description_with_a_different_lineage_gets_a_new_plan():
    # SELECT 'x' AS e and SELECT lower(email) AS e FROM customers: both describe one text column
    # with no source table, byte for byte the same RowDescription; only the lineage differs.
    session, built = _session()
    description = _description(field("e", TEXT))
    constant = _plan(session, description, StatementLineage(columns=(ColumnLineage("e"),)))
    derived = _plan(session, description, _lineage(("public.customers", "email"), direct=False, name="e"))
    unfollowed = _plan(session, description, UNFOLLOWED)
    assert constant is None
    assert EMAIL.encode() not in _shown(derived)
    assert EMAIL.encode() not in _shown(unfollowed) and unfollowed.notice  # fails closed, says so
    assert len(built) == 3
    # The first one again: still not masked, from the cache.
    assert _plan(session, description, StatementLineage(columns=(ColumnLineage("e"),))) is None
    assert len(built) == 3


def test_result_formats_are_part_of_the_key():
    # A statement's Describe says text; Binds choosing binary and text need different plans.
    session, built = _session(columns("customers.id", strategy="hash"))
    description = _description(field("id", INT4, table_oid=CUSTOMERS, attr=1))
    session._columns[(CUSTOMERS, 1)] = "id"
    lineage = _lineage(("public.customers", "id"), name="id")
    text = _plan(session, description, lineage, result_formats=())
    binary = _plan(session, description, lineage, result_formats=(1,))
    assert text is not binary and len(built) == 2
    assert built[0][0][0].format == 0 and built[1][0][0].format == 1


def test_a_policy_reload_gives_a_new_plan():
    session, built = _session()
    description = _description(field("email", TEXT, table_oid=CUSTOMERS, attr=EMAIL_ATTR))
    lineage = _lineage(("public.customers", "email"))
    assert _plan(session, description, lineage) is not None
    session.masker = masker(columns("customers.phone"))  # the rule on email is gone
    assert _plan(session, description, lineage) is None
    session.masker = masker(columns("email", strategy="null"))
    assert _shown(_plan(session, description, lineage)) == build_data_row([None])


def test_a_changed_catalog_resolution_gives_a_new_plan():
    # The table's name was not known (catalog lookup failed: ""), later it is: a plan made
    # without the name (masked by column name only) is not reused.
    session, built = _session(columns("customers.*"))
    session._tables[CUSTOMERS] = ""
    description = _description(field("email", TEXT, table_oid=CUSTOMERS, attr=EMAIL_ATTR))
    assert _plan(session, description) is None
    session._tables[CUSTOMERS] = "public.customers"
    session._catalog_generation += 1  # what resolve does whenever it changes the names
    assert EMAIL.encode() not in _shown(_plan(session, description))


def test_the_cache_is_bounded():
    session, built = _session()
    for n in range(PLAN_CACHE_SIZE * 2):
        _plan(session, _description(field(f"c{n}", TEXT)))
    assert len(session._plans) <= PLAN_CACHE_SIZE


def test_sensitive_columns_are_kept_per_set_of_sources_and_not_shared_between_sets():
    # WHERE email LIKE 'a%' on customers (masked) and on orders (not): each set gets its own answer,
    # asked in either order and again; a caller changing the list it got changes nothing kept.
    rules = masker(columns("customers.email"))
    customers = frozenset({("public.customers", "email")})
    orders = {("public.orders", "email")}
    for _ in range(2):
        assert rules.sensitive(orders) == []
        got = rules.sensitive(customers)
        assert got == ["public.customers.email"]
        got.clear()
    assert rules.sensitive(frozenset({("public.customers", None)})) == ["public.customers.*"]
