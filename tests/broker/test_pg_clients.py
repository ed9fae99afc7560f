"""Real PostgreSQL clients through the broker: psql, psycopg (text, binary, pipeline, COPY), asyncpg, pg_dump."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

import asyncpg
import psycopg
import pytest

from tests.conftest import wait_sealed


def _psql(dsn: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", dsn, *args], capture_output=True, text=True,
                          input=input, timeout=60)


def test_psql_select_through_broker(broker_dsn):
    result = _psql(broker_dsn(), "-c", "SELECT count(*) FROM customers", "-c", "SELECT full_name FROM customers ORDER BY id LIMIT 1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["5", "Ada", "Lovelace"]


def test_session_id_is_announced(broker_dsn):
    with psycopg.connect(broker_dsn()) as conn:
        session_id = conn.info.parameter_status("jitgate_session_id")
        assert session_id and len(session_id) == 32
        assert conn.info.parameter_status("server_version").startswith("15")


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_psycopg_text_and_binary(broker_dsn, binary):
    with psycopg.connect(broker_dsn()) as conn:
        cur = conn.cursor(binary=binary)
        cur.execute("SELECT id, amount, placed_at, status FROM orders WHERE customer_id = %s ORDER BY id LIMIT 3", (2,))
        rows = cur.fetchall()
        assert len(rows) == 3
        assert all(isinstance(r[0], int) for r in rows)
        assert {type(r[1]).__name__ for r in rows} == {"Decimal"}
        cur.execute("SELECT %s::text, %s::int, %s::bytea", ("héllo ✓", 42, b"\x00\x01\xff"))
        assert cur.fetchone() == ("héllo ✓", 42, b"\x00\x01\xff")


def test_psycopg_pipeline_mode(broker_dsn):
    with psycopg.connect(broker_dsn()) as conn:
        with conn.pipeline():
            cursors = [conn.execute("SELECT %s::int * 2", (i,)) for i in range(50)]
        assert [c.fetchone()[0] for c in cursors] == [i * 2 for i in range(50)]


def test_transactions_and_error_recovery(broker_dsn):
    with psycopg.connect(broker_dsn()) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        conn.rollback()
        with conn.transaction():
            conn.execute("INSERT INTO orders (customer_id, amount) VALUES (1, 9.99)")
        assert conn.execute("SELECT count(*) FROM orders WHERE amount = 9.99").fetchone()[0] >= 1
        conn.execute("DELETE FROM orders WHERE amount = 9.99")
        conn.commit()


def test_copy_both_directions(broker_dsn, stack):
    stack.pg.psql("CREATE TABLE IF NOT EXISTS copy_target (id int, label text)", "demo")
    stack.pg.psql("ALTER TABLE copy_target OWNER TO jitgate_broker; TRUNCATE copy_target", "demo")
    with psycopg.connect(broker_dsn(groups=("sre", "privacy-officers"))) as conn:
        with conn.cursor().copy("COPY copy_target (id, label) FROM STDIN") as copy:
            for i in range(1000):
                copy.write_row((i, f"row {i}"))
        conn.commit()
        out = bytearray()
        with conn.cursor().copy("COPY (SELECT id, label FROM copy_target ORDER BY id) TO STDOUT") as copy:
            for chunk in copy:
                out += chunk
    lines = bytes(out).decode().splitlines()
    assert len(lines) == 1000 and lines[0] == "0\trow 0" and lines[-1] == "999\trow 999"


def test_listen_notify(broker_dsn):
    with psycopg.connect(broker_dsn(), autocommit=True) as listener, psycopg.connect(broker_dsn(), autocommit=True) as talker:
        listener.execute("LISTEN jitgate_test")
        talker.execute("NOTIFY jitgate_test, 'hello through the gateway'")
        notes = []
        for note in listener.notifies(timeout=10):
            notes.append(note)
            break
        assert notes and notes[0].channel == "jitgate_test" and notes[0].payload == "hello through the gateway"


def test_cancel_request_maps_to_upstream(broker_dsn):
    import threading

    with psycopg.connect(broker_dsn()) as conn:
        done = threading.Event()

        def keep_cancelling():
            # Until the query is cancelled: a cancel that arrives before it starts is a no-op.
            while not done.wait(0.3):
                conn.cancel()

        canceller = threading.Thread(target=keep_cancelling, daemon=True)
        started = time.monotonic()
        canceller.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT count(*) FROM generate_series(1, 2000000000)")
        finally:
            done.set()
            canceller.join()
        assert time.monotonic() - started < 60


def test_asyncpg_prepared_and_binary(broker_dsn, token, stack):
    async def run():
        conn = await asyncpg.connect(host="127.0.0.1", port=stack.broker_port, user="alice@example.com",
                                     password=token(), database="demo", ssl="require")
        try:
            rows = await conn.fetch("SELECT id, email, profile FROM customers WHERE id <= $1 ORDER BY id", 2)
            assert [r["id"] for r in rows] == [1, 2]
            stmt = await conn.prepare("SELECT $1::int + $2::int")
            assert await stmt.fetchval(40, 2) == 42
            async with conn.transaction():
                values = [r[0] for r in await conn.fetch("SELECT g FROM generate_series(1, 1000) g")]
            assert values == list(range(1, 1001))
        finally:
            await conn.close()

    asyncio.run(run())


def test_md5_upstream_login(broker_dsn):
    result = _psql(broker_dsn("demo-md5"), "-c", "SELECT current_user")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "jitgate_md5"


def test_pg_dump_through_broker_matches_direct(stack, token, tmp_path):
    # A member of the clear-text group: the dump must be byte-identical, masking off.
    env = dict(os.environ, PGPASSWORD=token(groups=("sre", "privacy-officers")), PGSSLMODE="require")
    through = subprocess.run(
        ["pg_dump", "--no-sync", "--restrict-key=jitgatetest", "-h", "127.0.0.1", "-p", str(stack.broker_port), "-U", "alice@example.com", "demo"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert through.returncode == 0, through.stderr
    direct = subprocess.run(
        ["pg_dump", "--no-sync", "--restrict-key=jitgatetest", "-h", str(stack.pg.socket_dir), "-p", str(stack.pg.port), "-U", "jitgate_broker", "demo"],
        capture_output=True, text=True, timeout=120,
    )
    assert direct.returncode == 0, direct.stderr
    assert "COPY public.customers" in direct.stdout
    assert through.stdout == direct.stdout


def test_psql_session_recorded_sealed_and_verifiable(stack, broker_dsn, tmp_path):
    with psycopg.connect(broker_dsn()) as conn:
        session_id = conn.info.parameter_status("jitgate_session_id")
        conn.execute("SELECT count(*) FROM orders WHERE status = %s", ("paid",)).fetchone()
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM no_such_table")
    wait_sealed(stack, session_id)
    env = dict(stack.env)
    replay = subprocess.run(["jitgate", "replay", session_id], capture_output=True, text=True, env=env)
    assert replay.returncode == 0, replay.stderr
    assert "SELECT count(*) FROM orders WHERE status = $1" in replay.stdout
    assert '"paid"' in replay.stdout
    assert "42P01" in replay.stdout
    verify = subprocess.run(["jitgate", "verify", session_id], capture_output=True, text=True, env=env)
    assert verify.returncode == 0 and verify.stdout.startswith("OK:"), verify.stdout + verify.stderr

    recording = stack.home / "recordings" / session_id / "recording.jsonl"
    original = recording.read_bytes()
    index = original.index(b"paid")
    os.chmod(recording, 0o644)
    recording.write_bytes(original[:index] + b"P" + original[index + 1 :])  # one byte changed
    try:
        tampered = subprocess.run(["jitgate", "verify", session_id], capture_output=True, text=True, env=env)
        assert tampered.returncode == 1
        assert "TAMPERED" in tampered.stdout and "line" in tampered.stdout
    finally:
        recording.write_bytes(original)


def test_statement_event_written_before_result(stack, broker_dsn):
    """The spool holds the statement while the upstream is still running it (before any result)."""
    import threading

    with psycopg.connect(broker_dsn()) as conn:
        session_id = conn.info.parameter_status("jitgate_session_id")
        spool = stack.home / "spool" / f"{session_id}.jsonl"
        outcome = {}

        def run():
            try:
                conn.execute("SELECT count(*) FROM generate_series(1, 3000000000)")
            except psycopg.errors.QueryCanceled:
                outcome["canceled"] = True

        runner = threading.Thread(target=run)
        runner.start()
        try:
            deadline = time.monotonic() + 20
            events = []
            while time.monotonic() < deadline:
                events = [json.loads(line) for line in spool.read_text().splitlines()]
                if any(e["type"] == "statement" and "3000000000" in e["sql"] for e in events):
                    break
                time.sleep(0.05)
            statement = next(e for e in events if e["type"] == "statement" and "3000000000" in e["sql"])
            assert runner.is_alive()  # the query is still running upstream...
            assert not any(e["type"] == "result" and e["id"] == statement["id"] for e in events)  # ...and has no result
        finally:
            conn.cancel()
            runner.join(30)
    assert outcome.get("canceled")
