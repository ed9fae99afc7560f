"""Issue 12, part 2, end to end: the row limit is measured by PostgreSQL, not guessed from the text.

Every "always true" condition from the issue passed the syntactic test as bounded and removed
all rows. Now each runs inside the broker's savepoint, is counted, rolled back over
``max_rows_changed`` and held for approval, with the count in the NOTICE; the table is unchanged.
A bounded statement runs at once in every protocol path, and the client's transaction survives.
"""
from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import asyncpg
import psycopg
import pytest

MEASURED_TARGET = """
  demo-measured:
    kind: postgres
    address: 127.0.0.1:{pg_port}
    database: demo
    username: jitgate_broker
    credential: env:JITGATE_DEMO_DB_PASSWORD
    allow:
      groups: [sre]
    max_rows_changed: 100
    overrides:
      - groups: [bulk-loaders]
        max_rows_changed: 100000
    approvals:
      approver_groups: [dba]
      wait: 2s
"""
ROWS = 200


@pytest.fixture(scope="module")
def target(stack):
    stack.add_targets(MEASURED_TARGET)
    return "demo-measured"


@pytest.fixture()
def table(stack):
    stack.pg.psql("DROP TABLE IF EXISTS m_orders CASCADE; CREATE TABLE m_orders (id int PRIMARY KEY, v int NOT NULL); "
                  f"INSERT INTO m_orders SELECT g, g FROM generate_series(1, {ROWS}) g; "
                  "ALTER TABLE m_orders OWNER TO jitgate_broker", "demo")
    return "m_orders"


def _state(stack) -> str:
    return stack.pg.psql("SELECT count(*) || ':' || sum(v) FROM m_orders", "demo")


UNCHANGED = f"{ROWS}:{ROWS * (ROWS + 1) // 2}"

TAUTOLOGIES = [
    "delete from m_orders where id = id",
    "delete from m_orders where id > 0 or true",
    "delete from m_orders where 1=1 or id is null",
    "delete from m_orders where m_orders is not null",
    "update m_orders set v = v + 1 where id = id",
    "merge into m_orders o using (select 1 as one) s on o.id = o.id when matched then delete",
    "select 1; delete from m_orders where id = id",
    "with gone as (delete from m_orders where id = id returning *) select count(*) from gone",
    "insert into m_orders select g + 1000, 0 from generate_series(1, 150) g",
]


@pytest.mark.parametrize("sql", TAUTOLOGIES)
def test_tautologies_are_counted_rolled_back_and_held_through_psql(broker_dsn, target, table, stack, sql):
    result = subprocess.run(["psql", "-X", "-A", "-t", broker_dsn(target), "-c", sql], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert re.search(r"would (delete|update|insert) \d+ rows (from|in|into) public\.m_orders", result.stderr), result.stderr
    assert "over the limit of 100" in result.stderr and "did not run" in result.stderr
    assert _state(stack) == UNCHANGED


def test_extended_protocol_tautology_with_parameters_is_held(broker_dsn, target, table, stack):
    with psycopg.connect(broker_dsn(target)) as conn:
        notices = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        with pytest.raises(psycopg.Error) as err:
            conn.execute("delete from m_orders where id > %s or %s", (0, True))
        assert "did not run" in str(err.value)
        assert any("would delete 200 rows from public.m_orders" in n for n in notices), notices
        conn.rollback()
    assert _state(stack) == UNCHANGED


def test_asyncpg_both_protocols_are_measured(stack, token, target, table):
    async def run():
        conn = await asyncpg.connect(host="127.0.0.1", port=stack.broker_port, user="alice@example.com",
                                     password=token(), database=target, ssl="require")
        try:
            with pytest.raises(asyncpg.PostgresError):
                await conn.execute("delete from m_orders where id = id")  # simple protocol
            with pytest.raises(asyncpg.PostgresError):
                await conn.execute("delete from m_orders where id > $1 or $2", 0, True)  # extended
            assert await conn.execute("delete from m_orders where id = $1", 3) == "DELETE 1"
            assert await conn.fetchval("select count(*) from m_orders") == ROWS - 1
        finally:
            await conn.close()

    asyncio.run(run())


def test_bounded_statements_run_at_once_in_every_path(broker_dsn, target, table, stack):
    result = subprocess.run(["psql", "-X", "-A", "-t", broker_dsn(target), "-c", "delete from m_orders where id = 7"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "DELETE 1", result.stderr
    with psycopg.connect(broker_dsn(target), autocommit=True) as conn:
        assert conn.execute("delete from m_orders where id = %s", (8,)).rowcount == 1  # extended, autocommit
        # RETURNING rows are withheld until the count is known, then delivered unchanged.
        assert conn.execute("update m_orders set v = 0 where id = %s returning id, v", (9,)).fetchall() == [(9, 0)]
        with conn.pipeline():
            cursors = [conn.execute("update m_orders set v = v + 1 where id = %s", (i,)) for i in (10, 11, 12)]
        assert [c.rowcount for c in cursors] == [1, 1, 1]
    with psycopg.connect(broker_dsn(target)) as conn:  # inside a client transaction
        conn.execute("delete from m_orders where id = 13")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.commit()
    assert stack.pg.psql("SELECT count(*) FROM m_orders", "demo") == str(ROWS - 3)


def test_an_over_limit_statement_leaves_the_client_transaction_usable(broker_dsn, target, table, stack):
    with psycopg.connect(broker_dsn(target)) as conn:
        conn.execute("insert into m_orders values (5000, 1)")
        with pytest.raises(psycopg.Error) as err:
            conn.execute("delete from m_orders where id > %s", (0,))  # 201 rows: over
        assert "rolled back" in str(err.value) or "did not run" in str(err.value)
        # Still in the same, healthy transaction: the insert before is there, nothing was deleted.
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert conn.execute("select count(*) from m_orders").fetchone()[0] == ROWS + 1
        conn.execute("delete from m_orders where id = 5000")
        conn.commit()
    assert _state(stack) == UNCHANGED


def test_over_limit_returning_rows_are_never_delivered(broker_dsn, target, table, stack):
    with psycopg.connect(broker_dsn(target), autocommit=True) as conn:
        cur = conn.cursor()
        with pytest.raises(psycopg.Error):
            cur.execute("delete from m_orders where id = id returning *")
        with pytest.raises(psycopg.ProgrammingError):
            cur.fetchall()  # no result reached the client
    assert _state(stack) == UNCHANGED


def test_a_group_override_raises_the_limit(broker_dsn, target, table, stack):
    with psycopg.connect(broker_dsn(target, groups=("sre", "bulk-loaders")), autocommit=True) as conn:
        assert conn.execute("update m_orders set v = v where id = id").rowcount == ROWS
    assert _state(stack) == UNCHANGED


def test_approved_statement_runs_for_real(broker_dsn, target, table, stack, token):
    sql = "delete from m_orders where id > 50"
    first = subprocess.run(["psql", "-X", "-A", "-t", broker_dsn(target), "-c", sql], capture_output=True, text=True,
                           timeout=60)
    assert "would delete 150 rows from public.m_orders" in first.stderr
    approval_id = re.search(r"apr_[0-9a-f]+", first.stderr).group(0)
    cli = subprocess.run([sys.executable, "-m", "jitgate.cli", "--home", str(stack.home), "approvals", "approve",
                          approval_id, "--token", token("dana@example.com", ("dba",))],
                         capture_output=True, text=True, timeout=60, env=stack.env)
    assert cli.returncode == 0, cli.stderr
    again = subprocess.run(["psql", "-X", "-A", "-t", broker_dsn(target), "-c", sql], capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 0 and again.stdout.strip() == "DELETE 150", again.stderr
    assert stack.pg.psql("SELECT count(*) FROM m_orders", "demo") == "50"


def test_in_a_failed_transaction_the_server_refuses_as_usual(broker_dsn, target, table, stack):
    with psycopg.connect(broker_dsn(target)) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1/0")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("delete from m_orders where id = %s", (1,))
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        assert conn.execute("delete from m_orders where id = %s", (1,)).rowcount == 1
        conn.rollback()
    assert _state(stack) == UNCHANGED


def test_statement_timeout_inside_the_measurement(broker_dsn, target, table, stack):
    with psycopg.connect(broker_dsn(target), autocommit=True) as conn:
        conn.execute("set statement_timeout = '50ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("delete from m_orders where id = id and (select count(*) from generate_series(1, 50000000)) > 0")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        conn.execute("set statement_timeout = 0")
        assert conn.execute("delete from m_orders where id = %s", (2,)).rowcount == 1
    assert stack.pg.psql("SELECT count(*) FROM m_orders", "demo") == str(ROWS - 1)


def test_returning_rows_are_masked_after_the_count(broker_dsn, stack):
    # The demo target masks customers.email for group sre; the withheld answer is the masked one.
    clear = stack.pg.psql("SELECT email FROM customers ORDER BY id LIMIT 1", "demo")
    with psycopg.connect(broker_dsn(), autocommit=True) as conn:
        row = conn.execute("update customers set email = email where id = (select min(id) from customers) "
                           "returning email").fetchone()
    assert row[0] and row[0] != clear, row  # masked, not the clear value
    assert stack.pg.psql("SELECT email FROM customers ORDER BY id LIMIT 1", "demo") == clear


def test_a_measured_batch_without_sync_is_not_held_without_bound(stack, token, target, table):
    """Execute of a row-writing statement, then Binds and no Sync: the broker stops holding at 16 MiB."""
    import socket
    import ssl

    from broker.pg import codec

    raw = socket.create_connection(("127.0.0.1", stack.broker_port), timeout=60)
    raw.sendall(codec.build_ssl_request())
    assert raw.recv(1) == b"S"
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    sock = context.wrap_socket(raw)
    try:
        sock.sendall(codec.build_startup({"user": "alice@example.com", "database": target}) + codec.build_password(token()))
        # Bind: portal "", statement "", no parameter formats, no parameters, no result formats.
        bind = b"B" + (4 + 2 + 2 + 2 + 2).to_bytes(4, "big") + b"\x00\x00" + b"\x00\x00" + b"\x00\x00" + b"\x00\x00"
        execute = b"E" + (4 + 1 + 4).to_bytes(4, "big") + b"\x00" + b"\x00\x00\x00\x00"
        sock.sendall(codec.build_parse("", "delete from m_orders where id = id") + bind + execute)
        # 17 MiB of Describe messages of the unnamed portal, then Sync: the Execute must come back refused.
        describe = b"D" + (4 + 1 + 1).to_bytes(4, "big") + b"P\x00"
        chunk = describe * (1 << 16)
        for _ in range(17 * (1 << 20) // len(chunk) + 1):
            sock.sendall(chunk)
        sock.sendall(b"S\x00\x00\x00\x04")
        reader, errors, ready = codec.MessageReader(1 << 30), [], 0
        while ready < 2:
            data = sock.recv(1 << 20)
            assert data
            reader.feed(data)
            for kind, payload in reader.messages():
                ready += kind == "Z"
                if kind == "E":
                    errors.append(codec.parse_fields(payload)["M"])
        assert any("grew over 16 MiB before Sync" in e for e in errors), errors
    finally:
        sock.close()
    assert _state(stack) == UNCHANGED
