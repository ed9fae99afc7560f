"""Column-lineage attack corpus: statements that read a masked column through an expression.

Each case is ``(sql, derived, plain)``: result column indexes whose values derive from a
column under a column rule (they must come back masked whole, with none of their clear
values anywhere in the output) and indexes of ordinary columns (they must come back
exactly as PostgreSQL sends them to a direct client). ``UNKNOWN`` cases cannot be
followed: every column is masked and a NOTICE says so.

The demo policy (jitgate/devstack.py) has column rules for email, customers.phone,
card_number, iban and ssn; ``SETUP`` adds the views and the function some cases read.
"""
from __future__ import annotations

SENSITIVE = ("email", "phone", "card_number", "iban", "ssn")

# Objects created directly in the demo database (as its owner) before the corpus runs.
SETUP = """
CREATE OR REPLACE VIEW lineage_contacts AS
  SELECT id, full_name, reverse(email) AS contact, email AS plain_email, card_number FROM customers;
CREATE OR REPLACE VIEW lineage_nested AS SELECT id, upper(contact) AS shout, full_name FROM lineage_contacts;
CREATE OR REPLACE FUNCTION lineage_secret(i int) RETURNS text LANGUAGE sql STABLE
  AS $$ SELECT reverse(email) FROM customers WHERE id = i $$;
CREATE OR REPLACE FUNCTION lineage_flip(a text, b text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT reverse(a) $$;
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_operator WHERE oprname = '###') THEN
    CREATE OPERATOR ### (LEFTARG = text, RIGHTARG = text, FUNCTION = lineage_flip);
  END IF;
END $$;
"""

# Expressions over one sensitive column {c} of customers c: a curious agent's toolbox.
TEMPLATES = (
    "reverse({c})",
    "replace({c}, '@', ' at ')",
    "encode({c}::bytea, 'base64')",
    "encode(convert_to({c}, 'UTF8'), 'hex')",
    "substr({c}, 1, 8)",
    "translate({c}, '0123456789', 'abcdefghij')",
    "upper({c})",
    "{c} || ''",
    "concat('x', {c})",
    "format('%s!', {c})",
    "md5({c})",
    "CASE WHEN c.id > 0 THEN {c} END",
    "coalesce({c}, 'none')",
    "(SELECT c2.{c} FROM customers c2 WHERE c2.id = c.id)",
    "left({c}, 5) || '/' || right({c}, 5)",
    "regexp_replace({c}, '(.)', '\\1 ', 'g')",
    "split_part({c}, '@', 1) || split_part({c}, '@', 2)",
    "array_to_string(ARRAY[{c}], ',')",
    "string_agg({c}, ',') OVER (ORDER BY c.id)",
    "{c}::varchar(100)",
)

TEMPLATE_CASES = [
    (f"SELECT c.id, c.full_name, {template.format(c=column)} AS v FROM customers c ORDER BY c.id", {2}, {0, 1})
    for column in SENSITIVE
    for template in TEMPLATES
]

STRUCTURAL_CASES = [
    # the five queries of issue 14
    ("SELECT replace(email, '@', ' at ') FROM customers ORDER BY id", {0}, set()),
    ("SELECT reverse(email) FROM customers ORDER BY id", {0}, set()),
    ("SELECT encode(email::bytea, 'base64') FROM customers ORDER BY id", {0}, set()),
    ("SELECT encode(email::bytea, 'hex') FROM customers ORDER BY id", {0}, set()),
    ("SELECT substr(card_number, 1, 8), translate(card_number, '0123456789', 'abcdefghij') FROM customers ORDER BY id",
     {0, 1}, set()),
    # whole-row references
    ("SELECT c FROM customers c ORDER BY id", {0}, set()),
    ("SELECT c.id, to_jsonb(c) FROM customers c ORDER BY id", {1}, {0}),
    ("SELECT row(c.*)::text FROM customers c ORDER BY id", {0}, set()),
    ("SELECT c::text FROM customers c ORDER BY id", {0}, set()),
    ("SELECT (c).email FROM customers c ORDER BY id", {0}, set()),
    ("SELECT json_agg(c) FROM customers c", {0}, set()),
    ("SELECT row_to_json(c) FROM (SELECT id, email FROM customers) c ORDER BY c.id", {0}, set()),
    # aggregates
    ("SELECT string_agg(email, ',' ORDER BY id) FROM customers", {0}, set()),
    ("SELECT array_agg(ssn ORDER BY id)::text FROM customers", {0}, set()),
    ("SELECT jsonb_object_agg(id, iban) FROM customers", {0}, set()),
    ("SELECT json_agg(phone ORDER BY id) FROM customers", {0}, set()),
    ("SELECT min(email), max(card_number), count(*) FROM customers", {0, 1}, {2}),
    ("SELECT full_name, string_agg(reverse(email), ';') FROM customers GROUP BY full_name ORDER BY full_name", {1}, {0}),
    # subqueries, CTEs, set operations, joins, LATERAL
    ("SELECT e FROM (SELECT reverse(email) AS e, id FROM customers) s ORDER BY id", {0}, set()),
    ("WITH x AS (SELECT id, reverse(email) AS r FROM customers) SELECT id, r FROM x ORDER BY id", {1}, {0}),
    ("WITH RECURSIVE r(n, v) AS (SELECT 1, email FROM customers WHERE id = 1 "
     "UNION ALL SELECT n + 1, reverse(v) FROM r WHERE n < 3) SELECT n, v FROM r ORDER BY n", {1}, {0}),
    ("SELECT reverse(email) FROM customers UNION ALL SELECT 'zzz-not-secret' ORDER BY 1", {0}, set()),
    ("SELECT id, upper(iban) FROM customers INTERSECT SELECT id, upper(iban) FROM customers ORDER BY 1", {1}, {0}),
    ("SELECT id, lower(ssn) FROM customers EXCEPT SELECT 99, 'x' ORDER BY 1", {1}, {0}),
    ("SELECT o.id, x.e FROM orders o, LATERAL (SELECT reverse(c.email) AS e FROM customers c "
     "WHERE c.id = o.customer_id) x ORDER BY o.id LIMIT 5", {1}, {0}),
    ("SELECT o.id, o.status, reverse(c.phone) FROM orders o JOIN customers c ON c.id = o.customer_id ORDER BY o.id LIMIT 5",
     {2}, {0, 1}),
    ("SELECT c.id, t.r FROM customers c CROSS JOIN LATERAL (VALUES (reverse(c.card_number))) AS t(r) ORDER BY c.id",
     {1}, {0}),
    ("SELECT u FROM customers, unnest(ARRAY[reverse(email), 'x']) AS u WHERE u <> 'x' ORDER BY u", {0}, set()),
    ("SELECT x FROM customers c, LATERAL jsonb_array_elements_text(jsonb_build_array(c.ssn)) AS x ORDER BY 1", {0}, set()),
    ("SELECT id, (SELECT reverse(max(email)) FROM customers) FROM orders ORDER BY id LIMIT 2", {1}, {0}),
    ("SELECT id, lag(reverse(email)) OVER (ORDER BY id) FROM customers ORDER BY id", {1}, {0}),
    ("SELECT id, first_value(card_number) OVER (ORDER BY id DESC) FROM customers ORDER BY id", {1}, {0}),
    # functions and operators
    ("SELECT jsonb_build_object('e', email) FROM customers ORDER BY id", {0}, set()),
    ("SELECT format('%s-%s', id, ssn) FROM customers ORDER BY id", {0}, set()),
    ("SELECT concat_ws('|', full_name, iban) FROM customers ORDER BY id", {0}, set()),
    ("SELECT overlay(email placing 'X' from 1 for 1) FROM customers ORDER BY id", {0}, set()),
    ("SELECT substring(email from 2) FROM customers ORDER BY id", {0}, set()),
    ("SELECT trim(both ' ' from card_number) FROM customers ORDER BY id", {0}, set()),
    ("SELECT position('@' in email)::text || reverse(email) FROM customers ORDER BY id", {0}, set()),
    ("SELECT CASE WHEN ssn LIKE '1%' THEN 'one' ELSE reverse(ssn) END FROM customers ORDER BY id", {0}, set()),
    ("SELECT id, greatest(phone, '') FROM customers ORDER BY id", {1}, {0}),
    ("SELECT id, nullif(reverse(iban), '') FROM customers ORDER BY id", {1}, {0}),
    ("SELECT to_hex(length(email)) || md5(email) FROM customers ORDER BY id", {0}, set()),
    ("SELECT convert_from(decode(encode(email::bytea, 'base64'), 'base64'), 'UTF8') FROM customers ORDER BY id", {0}, set()),
    # views (resolved from the catalog)
    ("SELECT id, contact FROM lineage_contacts ORDER BY id", {1}, {0}),
    ("SELECT id, shout, full_name FROM lineage_nested ORDER BY id", {1}, {0, 2}),
    ("SELECT * FROM lineage_contacts ORDER BY id", {2, 3, 4}, {0, 1}),
    ("SELECT id, reverse(plain_email) FROM lineage_contacts ORDER BY id", {1}, {0}),
    # a write that hands back derived values (the row is written back unchanged)
    ("WITH u AS (UPDATE customers SET notes = notes WHERE id = 1 RETURNING id, reverse(email) AS r) SELECT id, r FROM u",
     {1}, {0}),
]

# Lineage cannot be followed: every column is masked, with a NOTICE.
UNKNOWN_CASES = [
    # planner statistics hold sample values of every analyzed column
    "SELECT attname, most_common_vals::text FROM pg_stats WHERE tablename = 'customers'",
    "SELECT id, lineage_secret(id) FROM customers ORDER BY id",
    "SELECT lineage_secret(1)",
    "SELECT * FROM public.lineage_secret(2) AS s",
    # a user-defined operator runs a function the gateway cannot see into
    "SELECT email ### 'x' FROM customers ORDER BY id",
    # built-ins that read a table named by a value: the arguments are constants, the result is
    # the table's rows (emails included) as XML
    "SELECT table_to_xml('customers', true, false, '')",
    "SELECT pg_catalog.table_to_xml_and_xmlschema('public.customers'::regclass, false, true, '')",
    "SELECT schema_to_xml('public', true, false, '')",
    "SELECT x FROM table_to_xml('customers', false, false, '') AS x",
]

CASES = TEMPLATE_CASES + STRUCTURAL_CASES
