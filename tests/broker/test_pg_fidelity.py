"""Issue 12, part 4: what real drivers see through the broker matches a direct connection.

- the backend PID the client is told is the upstream's real one (cancel still works, with
  the broker's own secret);
- when PostgreSQL refuses the held-credential login for a reason other than the credential,
  the client gets the server's SQLSTATE and reason, not "bad credential";
- bytes a client sends in the same packet as its startup message are kept.
"""
from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import subprocess
import time

import asyncpg
import psycopg
import pytest

from broker.pg import codec

REFUSING_TARGETS = """
  demo-nodb:
    kind: postgres
    address: 127.0.0.1:{pg_port}
    database: no_such_database
    username: jitgate_broker
    credential: env:JITGATE_DEMO_DB_PASSWORD
    allow:
      groups: [sre]
  demo-full:
    kind: postgres
    address: 127.0.0.1:{pg_port}
    database: demo
    username: jitgate_limited
    credential: env:JITGATE_DEMO_DB_PASSWORD
    allow:
      groups: [sre]
"""


@pytest.fixture(scope="module")
def refusing(stack):
    stack.add_targets(REFUSING_TARGETS)
    password = stack.pg.broker_password.replace("'", "''")
    # A role that may log in but has no connection left: PostgreSQL answers 53300.
    stack.pg.psql("DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'jitgate_limited') THEN "
                  "CREATE ROLE jitgate_limited LOGIN; END IF; END$$; "
                  f"ALTER ROLE jitgate_limited PASSWORD '{password}' CONNECTION LIMIT 0")
    return {"nodb": "demo-nodb", "full": "demo-full"}


# --- the real backend PID ---------------------------------------------------------


def test_psycopg_sees_the_real_backend_pid(broker_dsn):
    with psycopg.connect(broker_dsn(), autocommit=True) as conn:
        assert conn.info.backend_pid == conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def test_asyncpg_sees_the_real_backend_pid_and_notify_sender(stack, token):
    async def run():
        conn = await asyncpg.connect(host="127.0.0.1", port=stack.broker_port, user="alice@example.com",
                                     password=token(), database="demo", ssl="require")
        try:
            assert conn.get_server_pid() == await conn.fetchval("SELECT pg_backend_pid()")
            heard = asyncio.get_running_loop().create_future()
            await conn.add_listener("fidelity", lambda c, pid, channel, payload: heard.done() or heard.set_result(pid))
            await conn.execute("NOTIFY fidelity, 'x'")
            assert await asyncio.wait_for(heard, 30) == conn.get_server_pid()  # our own notification
        finally:
            await conn.close()

    asyncio.run(run())


def test_psql_cancel_still_works_with_the_real_pid(broker_dsn):
    proc = subprocess.Popen(["psql", "-X", "-A", "-t", broker_dsn(), "-c", "SELECT pg_backend_pid(), count(*) FROM generate_series(1, 3000000000)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Ctrl-C until psql reports the cancel (a cancel that lands before the query starts is a no-op).
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "canceling statement due to user request" in err, err


# --- the server's reason passes through ---------------------------------------------


def test_missing_database_passes_through_its_sqlstate(broker_dsn, refusing, stack, token):
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(broker_dsn(refusing["nodb"]))
    assert 'database "no_such_database" does not exist' in str(err.value)
    assert "rotate" not in str(err.value)

    async def run():
        with pytest.raises(asyncpg.InvalidCatalogNameError) as aerr:
            await asyncpg.connect(host="127.0.0.1", port=stack.broker_port, user="alice@example.com",
                                  password=token(), database=refusing["nodb"], ssl="require")
        assert aerr.value.sqlstate == "3D000"

    asyncio.run(run())
    result = subprocess.run(["psql", "-X", broker_dsn(refusing["nodb"]), "-c", "SELECT 1"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and "does not exist" in result.stderr


def test_too_many_connections_is_retryable_not_a_bad_credential(broker_dsn, refusing, stack, token):
    async def run():
        with pytest.raises(asyncpg.TooManyConnectionsError) as aerr:
            await asyncpg.connect(host="127.0.0.1", port=stack.broker_port, user="alice@example.com",
                                  password=token(), database=refusing["full"], ssl="require")
        assert aerr.value.sqlstate == "53300"

    asyncio.run(run())
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(broker_dsn(refusing["full"]))
    assert "too many connections" in str(err.value) and "53300" in str(err.value)
    result = subprocess.run(["psql", "-X", broker_dsn(refusing["full"]), "-c", "SELECT 1"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and "too many connections" in result.stderr


def test_a_wrong_held_credential_still_says_rotate(broker_dsn):
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(broker_dsn("demo-badcred"))
    assert "rotate" in str(err.value)


# --- pipelined startup ------------------------------------------------------------------


def _tls_socket(port: int) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    raw.sendall(codec.build_ssl_request())
    assert raw.recv(1) == b"S"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context.wrap_socket(raw)


def test_password_and_query_pipelined_with_the_startup_packet(stack, token):
    sock = _tls_socket(stack.broker_port)
    try:
        startup = codec.build_startup({"user": "alice@example.com", "database": "demo"})
        # Startup, password and a query in one write: nothing may be dropped.
        sock.sendall(startup + codec.build_password(token()) + codec.build_query("SELECT 40 + 2"))
        reader = codec.MessageReader()
        seen: list[tuple[str, bytes]] = []
        ready = 0
        deadline = time.monotonic() + 30
        while ready < 2 and time.monotonic() < deadline:  # one ReadyForQuery for login, one for the query
            chunk = sock.recv(65536)
            assert chunk, f"connection closed; seen {[k for k, _ in seen]}"
            reader.feed(chunk)
            for kind, payload in reader.messages():
                seen.append((kind, payload))
                ready += kind == "Z"
                assert kind != "E", codec.parse_fields(payload)
        rows = [codec.parse_data_row(p) for k, p in seen if k == "D"]
        assert rows == [[b"42"]]
        assert [k for k, _ in seen][0] == "R"
    finally:
        sock.close()
