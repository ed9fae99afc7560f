"""Inline masking through the broker with real clients, and recordings free of clear-text PII."""
from __future__ import annotations

import asyncio
import subprocess
import time

import asyncpg
import psycopg
import pytest

from tests.conftest import wait_sealed

# The demo data's sensitive values (jitgate/demo/demo.sql).
EMAILS = ["ada@example.com", "grace@example.com", "alan@example.com", "katherine@example.com", "edsger@example.com"]
CARDS = ["4111 1111 1111 1111", "5555 5555 5555 4444", "3782 822463 10005"]
SECRETS_IN_TEXT = ["ada.l@analytical.example", "+1 415 555 0199", "GB82WEST12345698765432", "123-45-6789"]
CLEAR_GROUPS = ("sre", "privacy-officers")


def _psql(dsn: str, sql: str) -> str:
    result = subprocess.run(["psql", "-X", "-A", "-t", "-F", "|", dsn, "-c", sql], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_psql_sees_masked_customers(broker_dsn):
    out = _psql(broker_dsn(), "SELECT email, phone, card_number, iban, ssn, notes, profile FROM customers ORDER BY id")
    for value in EMAILS + CARDS + SECRETS_IN_TEXT:
        assert value not in out, value
    first = out.splitlines()[0].split("|")
    assert first[0] == "***@example.com"  # partial keeps the domain
    assert first[2].endswith("1111") and "4111" not in first[2]  # partial keeps the last 4 digits
    assert "[email]" in first[5]  # a detector found the address inside free text
    assert '"tier": "gold"' in first[6] and "[email]" in first[6]  # JSON stays JSON, only the value is masked


def test_clear_text_group_sees_real_values(broker_dsn):
    out = _psql(broker_dsn(groups=CLEAR_GROUPS), "SELECT email, card_number FROM customers ORDER BY id LIMIT 1")
    assert out.strip() == "ada@example.com|4111 1111 1111 1111"


def test_asyncpg_binary_protocol_is_masked(stack, token):
    async def run():
        conn = await asyncpg.connect(host="127.0.0.1", port=stack.broker_port, user="alice@example.com",
                                     password=token(), database="demo", ssl="require")
        try:
            rows = await conn.fetch("SELECT id, email, card_number, profile, notes FROM customers WHERE id <= $1 ORDER BY id", 2)
            renamed = await conn.fetchval("SELECT email AS contact FROM customers WHERE id = 1")
            return rows, renamed
        finally:
            await conn.close()

    rows, renamed = asyncio.run(run())
    assert [r["id"] for r in rows] == [1, 2]  # unmasked columns keep their types and values
    assert all(r["email"].startswith("***@") for r in rows)
    assert rows[0]["card_number"].endswith("1111") and "4111" not in rows[0]["card_number"]
    assert renamed == "***@example.com"  # a column alias does not escape the column rule


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_psycopg_masked_in_both_formats(broker_dsn, binary):
    with psycopg.connect(broker_dsn()) as conn:
        cur = conn.cursor(binary=binary)
        cur.execute("SELECT email, ssn, profile FROM customers WHERE id = %s", (2,))
        email, ssn, profile = cur.fetchone()
    assert email == "***@example.com" and ssn.endswith("9999") and "219-09" not in ssn
    assert profile["phones"] == ["[phone]"]


def test_copy_to_stdout_is_masked_and_unnamed_columns_refused(broker_dsn):
    with psycopg.connect(broker_dsn()) as conn:
        out = bytearray()
        with conn.cursor().copy("COPY customers (id, email, notes) TO STDOUT") as copy:
            for chunk in copy:
                out += chunk
        text = bytes(out).decode()
        assert text.count("\n") == 5 and "***@example.com" in text
        assert not any(e in text for e in EMAILS)
        with pytest.raises(psycopg.Error) as err:
            with conn.cursor().copy("COPY customers TO STDOUT") as copy:
                for _ in copy:
                    pass
        assert "list the columns" in str(err.value)


def test_error_detail_is_masked(broker_dsn):
    with psycopg.connect(broker_dsn()) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation) as err:
            conn.execute("INSERT INTO customers (full_name, email) VALUES ('Dup', 'ada@example.com')")
    detail = err.value.diag.message_detail
    assert "ada@example.com" not in detail and "***@example.com" in detail


def test_no_clear_text_pii_in_recordings(stack, broker_dsn):
    sessions = []
    for groups in (("sre",), CLEAR_GROUPS):  # the clear-text group's recording is masked too
        with psycopg.connect(broker_dsn(groups=groups)) as conn:
            sessions.append(conn.info.parameter_status("jitgate_session_id"))
            conn.execute("SELECT full_name FROM customers WHERE email = %s", ("grace@example.com",)).fetchall()
            conn.execute("SELECT full_name FROM customers WHERE email = %b", ("edsger@example.com",)).fetchall()  # binary
            conn.execute("SELECT count(*) FROM customers WHERE notes LIKE '%ada.l@analytical.example%'").fetchall()
            with pytest.raises(psycopg.errors.UniqueViolation):
                conn.execute("INSERT INTO customers (full_name, email) VALUES ('Dup', 'alan@example.com')")
    for session_id in sessions:
        wait_sealed(stack, session_id)
    from jitgate.backends import open_backends
    from jitgate.settings import Settings

    backends = open_backends(Settings.from_env(stack.env))
    for session_id in sessions:
        recording = backends.recordings.get_object(session_id, "recording.jsonl").decode()
        assert "SELECT full_name FROM customers WHERE email" in recording  # the statement is there...
        for value in EMAILS + CARDS + SECRETS_IN_TEXT:
            assert value not in recording, (session_id, value)  # ...its sensitive values are not
            assert value.encode().hex() not in recording, (session_id, value)  # not even as a binary parameter's hex


def test_policy_change_applies_to_new_sessions(stack, broker_dsn):
    original = stack.policy_path.read_text()
    rule = "        - detectors: [email, card, iban, ssn, phone, secret]\n          strategy: redact\n"
    assert rule in original
    try:
        stack.policy_path.write_text(original.replace(rule, rule + "        - columns: [full_name]\n          strategy: redact\n", 1))
        time.sleep(0.05)
        assert _psql(broker_dsn(), "SELECT full_name FROM customers WHERE id = 1").strip() == "[redacted]"
    finally:
        stack.policy_path.write_text(original)
        time.sleep(0.05)
    assert _psql(broker_dsn(), "SELECT full_name FROM customers WHERE id = 1").strip() == "Ada Lovelace"
