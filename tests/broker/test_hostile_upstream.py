"""A hostile (or broken) upstream gets the project's own errors: the session ends with an
ErrorResponse that says what was wrong, nothing hangs, and the broker keeps serving others.

A real PostgreSQL never sends these bytes, so the upstream here is a small scripted peer on
loopback; the broker, its policy and the client are the real ones.
"""
from __future__ import annotations

import base64
import socket
import struct
import threading
import time

import psycopg
import pytest

from broker.pg import codec
from broker.pg.upstream_auth import UpstreamAuthError, UpstreamLogin

# --- sans-IO: the codec and the login state machine --------------------------------------


@pytest.mark.parametrize("tag, rows", [("SELECT 5", 5), ("INSERT 0 3", 3), ("CREATE TABLE", None), ("", None),
                                       ("COPY " + "9" * 20, int("9" * 20)), ("SELECT x5", None)])
def test_rows_from_tag(tag, rows):
    assert codec.rows_from_tag(tag) == rows


@pytest.mark.parametrize("tag", ["SELECT ²", "SELECT ٣", "SELECT " + "1" * 21, "SELECT " + "7" * 4301])
def test_rows_from_tag_refuses_counts_no_server_sends(tag):
    with pytest.raises(codec.ProtocolError, match="not a 64-bit decimal number"):
        codec.rows_from_tag(tag)


def test_non_utf8_sasl_mechanism_is_a_protocol_error():
    auth = codec.parse_authentication(struct.pack("!i", codec.AUTH_SASL) + b"SCRAM-SHA-256\xff\x00\x00")
    with pytest.raises(codec.ProtocolError, match="not UTF-8"):
        UpstreamLogin("u", "p", encrypted=False).respond(auth)


def _server_first(login: UpstreamLogin, iterations: int, nonce_suffix: bytes = b"srv") -> codec.Authentication:
    first = login.respond(codec.Authentication(codec.AUTH_SASL, b"SCRAM-SHA-256\x00\x00"))
    nonce = first.split(b"r=")[1]
    salt = base64.b64encode(b"0123456789abcdef")
    return codec.Authentication(codec.AUTH_SASL_CONTINUE, b"r=" + nonce + nonce_suffix + b",s=" + salt + b",i=" + str(iterations).encode())


def test_scram_iteration_cap_refuses_clearly():
    login = UpstreamLogin("u", "p", encrypted=False, max_scram_iterations=10_000)
    with pytest.raises(UpstreamAuthError, match=r"asks for 10001 SCRAM iterations; the gateway refuses more than 10000"):
        login.respond(_server_first(login, 10_001))
    ok = UpstreamLogin("u", "p", encrypted=False, max_scram_iterations=10_000)
    assert ok.respond(_server_first(ok, 10_000)).startswith(b"p")


def test_non_utf8_scram_messages_are_protocol_errors():
    login = UpstreamLogin("u", "p", encrypted=False)
    with pytest.raises(codec.ProtocolError, match="not UTF-8"):
        login.respond(_server_first(login, 4096, nonce_suffix=b"\xff"))
    login = UpstreamLogin("u", "p", encrypted=False)
    login.respond(_server_first(login, 4096))
    with pytest.raises(codec.ProtocolError, match="not UTF-8"):
        login.respond(codec.Authentication(codec.AUTH_SASL_FINAL, b"v=\xfe"))


def test_scram_steps_out_of_order_are_auth_errors():
    login = UpstreamLogin("u", "p", encrypted=False)
    first = _server_first(login, 4096)
    login.respond(first)
    with pytest.raises(UpstreamAuthError, match="SCRAM exchange failed"):
        login.respond(first)  # a second server-first


# --- end to end through the broker --------------------------------------------------------


def _read_message(conn: socket.socket) -> tuple[bytes, bytes]:
    head = b""
    while len(head) < 5:
        chunk = conn.recv(5 - len(head))
        if not chunk:
            raise ConnectionError("client left")
        head += chunk
    length = struct.unpack("!i", head[1:])[0] - 4
    body = b""
    while len(body) < length:
        body += conn.recv(length - len(body))
    return head[:1], body


def _read_startup(conn: socket.socket) -> None:
    length = struct.unpack("!i", conn.recv(4))[0]
    remaining = length - 4
    while remaining:
        remaining -= len(conn.recv(remaining))


def _sasl_then(server_first) -> callable:
    def script(conn):
        conn.sendall(codec.build_authentication(codec.AUTH_SASL, b"SCRAM-SHA-256\x00\x00"))
        _, body = _read_message(conn)  # SASLInitialResponse
        nonce = body.split(b"r=")[1]
        conn.sendall(codec.build_authentication(codec.AUTH_SASL_CONTINUE, server_first(nonce)))
    return script


def _logged_in_then(reply: bytes) -> callable:
    def script(conn):
        conn.sendall(codec.AUTHENTICATION_OK + codec.build_backend_key(7, b"\x00\x00\x00\x01") + codec.build_ready())
        kind, _ = _read_message(conn)
        assert kind == b"Q"
        conn.sendall(reply)
    return script


SALT = base64.b64encode(b"0123456789abcdef")
SCRIPTS = {
    "non-UTF-8 SASL mechanism": (
        lambda conn: conn.sendall(codec.build_authentication(codec.AUTH_SASL, b"SCRAM\xff-SHA-256\x00\x00")),
        "not UTF-8", "08P01"),
    "SCRAM iteration count over the cap": (
        _sasl_then(lambda nonce: b"r=" + nonce + b"x,s=" + SALT + b",i=9999999"),
        "asks for 9999999 SCRAM iterations; the gateway refuses more than 600000", "28000"),
    "non-UTF-8 SCRAM server-first": (
        _sasl_then(lambda nonce: b"r=" + nonce + b"\xff,s=" + SALT + b",i=4096"), "not UTF-8", "08P01"),
    "row count no server sends": (
        _logged_in_then(codec.message("C", b"SELECT \xc2\xb2\x00") + codec.build_ready()),
        "upstream protocol error: CommandComplete tag 'SELECT ²' carries a row count that is not a 64-bit", "08P01"),
}


class ScriptedUpstream:
    """One loopback listener that plays a script to every connection it accepts."""

    def __init__(self, script):
        self.script = script
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.errors: list[BaseException] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    _read_startup(conn)
                    self.script(conn)
                    conn.recv(1)  # hold the connection until the broker hangs up
                except (OSError, ConnectionError):
                    pass
                except BaseException as exc:  # noqa: BLE001 - reported by the test
                    self.errors.append(exc)

    def close(self):
        self.sock.close()


HOSTILE_TARGET = """
  hostile:
    kind: postgres
    address: 127.0.0.1:{port}
    database: demo
    username: jitgate_broker
    tls: disable
    credential: env:JITGATE_TEST_WRONG_PASSWORD
    allow:
      groups: [sre]
"""


@pytest.mark.parametrize("case", list(SCRIPTS))
def test_hostile_upstream_ends_the_session_with_a_clear_error(case, stack, broker_dsn):
    script, expected, sqlstate = SCRIPTS[case]
    upstream = ScriptedUpstream(script)
    good = stack.policy_path.read_text()
    try:
        stack.policy_path.write_text(good + HOSTILE_TARGET.format(port=upstream.port))
        time.sleep(0.05)
        deadline = time.monotonic() + 20
        while True:  # the broker and authorize see the new file on their next look
            try:
                with psycopg.connect(broker_dsn("hostile")) as conn:
                    conn.execute("SELECT 1")
                raise AssertionError("the hostile upstream was not refused")
            except psycopg.Error as exc:
                if "not a PostgreSQL target" in str(exc) or "no target" in str(exc).lower():
                    assert time.monotonic() < deadline, str(exc)
                    time.sleep(0.2)
                    continue
                assert expected in str(exc), str(exc)
                # libpq gives no SQLSTATE for a failed connection attempt; a failed query has one.
                assert exc.sqlstate in (None, sqlstate), (exc.sqlstate, str(exc))
                assert "not-the-password" not in str(exc)
                break
    finally:
        stack.policy_path.write_text(good)
        upstream.close()
    assert not upstream.errors, upstream.errors
    with psycopg.connect(broker_dsn()) as conn:  # everyone else is still served
        assert conn.execute("SELECT 40 + 2").fetchone()[0] == 42


def test_scram_hashing_runs_off_the_event_loop(monkeypatch):
    """The PBKDF2 of the held password (the upstream chooses its cost) never runs on the loop."""
    import asyncio
    import threading as threads

    import scramp

    from broker.pg.upstream import UpstreamLoginError, open_upstream
    from jitgate.policy import Target

    hashed_in: list[int] = []
    real = scramp.ScramClient.get_client_final

    def recording(self):
        hashed_in.append(threads.get_ident())
        return real(self)

    monkeypatch.setattr(scramp.ScramClient, "get_client_final", recording)

    def refuse_after_proof(conn):
        _sasl_then(lambda nonce: b"r=" + nonce + b"x,s=" + SALT + b",i=4096")(conn)
        _read_message(conn)  # the client's proof
        conn.sendall(codec.build_error("password authentication failed", "28P01"))

    upstream = ScriptedUpstream(refuse_after_proof)
    target = Target.model_validate({"kind": "postgres", "address": f"127.0.0.1:{upstream.port}", "database": "demo",
                                    "username": "u", "tls": "disable", "credential": "env:X", "allow": {"groups": ["g"]}})

    async def login() -> int:
        with pytest.raises(UpstreamLoginError, match="refused the gateway's held credential"):
            await open_upstream(target, "held-password", {})
        return threads.get_ident()

    try:
        loop_thread = asyncio.run(login())
    finally:
        upstream.close()
    assert hashed_in and loop_thread not in hashed_in


def test_login_flood_is_bounded():
    """A target that answers the startup with endless notices is cut off, not buffered."""
    import asyncio

    from broker.pg.upstream import LOGIN_MAX_BYTES, UpstreamLoginError, open_upstream
    from jitgate.policy import Target

    notice = codec.build_notice("x" * 60_000)

    def flood(conn):
        for _ in range(LOGIN_MAX_BYTES // len(notice) + 10):
            conn.sendall(notice)

    upstream = ScriptedUpstream(flood)
    target = Target.model_validate({"kind": "postgres", "address": f"127.0.0.1:{upstream.port}", "database": "demo",
                                    "username": "u", "tls": "disable", "credential": "env:X", "allow": {"groups": ["g"]}})

    async def login():
        with pytest.raises(UpstreamLoginError, match=f"more than {LOGIN_MAX_BYTES} bytes during login"):
            await open_upstream(target, "held-password", {})

    try:
        asyncio.run(login())
    finally:
        upstream.close()


def test_offered_mechanisms_are_quoted_briefly():
    auth = codec.Authentication(codec.AUTH_SASL, b"\x00".join([b"X" * 5000] * 50) + b"\x00\x00")
    with pytest.raises(UpstreamAuthError) as err:
        UpstreamLogin("u", "p", encrypted=False).respond(auth)
    assert len(str(err.value)) < 400 and "only SCRAM-SHA-256 is supported" in str(err.value)
