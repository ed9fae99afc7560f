"""Bad input gets a clear error, loses nothing, and the broker keeps serving everyone else."""
from __future__ import annotations

import base64
import json
import socket
import ssl
import struct
import subprocess
import time

import jwt
import psycopg
import pytest

from broker.pg import codec
from jitgate.devstack import start_broker


def _read_error(sock: socket.socket, timeout: float = 10) -> dict[str, str]:
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if data[:1] == b"E" and len(data) >= 5 and len(data) >= 1 + struct.unpack("!i", data[1:5])[0]:
            break
    assert data[:1] == b"E", data[:50]
    return codec.parse_fields(data[5 : 1 + struct.unpack("!i", data[1:5])[0]])


def _still_serving(broker_dsn) -> None:
    with psycopg.connect(broker_dsn()) as conn:
        assert conn.execute("SELECT 40 + 2").fetchone()[0] == 42


def test_garbage_instead_of_startup(stack, broker_dsn):
    with socket.create_connection(("127.0.0.1", stack.broker_port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        fields = _read_error(s)
    assert fields["C"] == "08P01"
    assert "startup packet" in fields["M"]
    _still_serving(broker_dsn)


def _tls_connect(port: int) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port))
    raw.sendall(codec.build_ssl_request())
    assert raw.recv(1) == b"S"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx.wrap_socket(raw)


def _login(port: int, token: str, database: str = "demo", user: str = "alice@example.com") -> ssl.SSLSocket:
    s = _tls_connect(port)
    s.sendall(codec.build_startup({"user": user, "database": database}))
    assert s.recv(9) == codec.AUTHENTICATION_CLEARTEXT
    s.sendall(codec.build_password(token))
    reader = codec.MessageReader()
    s.settimeout(10)
    while True:
        reader.feed(s.recv(65536))
        kinds = [k for k, _ in reader.messages()]
        if "Z" in kinds or "E" in kinds:
            assert "E" not in kinds
            return s


def test_garbage_after_login_is_a_protocol_error(stack, token, broker_dsn):
    s = _login(stack.broker_port, token())
    s.sendall(b"Q\x00\x00\x00\x02")  # length 2 < 4: impossible
    fields = _read_error(s)
    assert fields["C"] == "08P01" and "invalid message length" in fields["M"]
    s.close()
    _still_serving(broker_dsn)


def test_malformed_bind_gets_a_clear_error(stack, token, broker_dsn):
    s = _login(stack.broker_port, token())
    s.sendall(codec.message("B", b"portal\x00stmt\x00\x00"))  # cut off inside the parameter formats
    fields = _read_error(s)
    assert fields["C"] == "08P01" and "truncated Bind message" in fields["M"]
    s.close()
    _still_serving(broker_dsn)


def test_message_over_the_size_limit(stack, token, broker_dsn):
    env = dict(stack.env, JITGATE_PG_LISTEN="127.0.0.1:0", JITGATE_PG_MAX_MESSAGE="65536")
    proc, info = start_broker(stack.home, env, stack.home / "logs", name="broker-small-limit")
    try:
        port = int(info["pg"].rpartition(":")[2])
        dsn = broker_dsn().replace(f"port={stack.broker_port}", f"port={port}")
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT length(%s)", ("x" * 1000,)).fetchone()[0] == 1000
            with pytest.raises(psycopg.OperationalError) as err:
                conn.execute("SELECT length(%s)", ("x" * 200_000,))
        assert "exceeds the limit of 65536 bytes" in str(err.value)
        with psycopg.connect(dsn) as conn:  # the same broker still serves new sessions
            assert conn.execute("SELECT 1").fetchone()[0] == 1
    finally:
        proc.stop()


def test_client_vanishes_mid_query(stack, token, broker_dsn):
    s = _login(stack.broker_port, token())
    marker = f"vanish_{int(time.time() * 1000)}"
    s.sendall(codec.build_query(f"SELECT count(*) AS {marker} FROM generate_series(1, 3000000000)"))
    time.sleep(1.0)
    s.close()  # no Terminate: the client is just gone
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        running = stack.pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%{marker}%' AND pid <> pg_backend_pid()")
        if running == "0":
            break
        time.sleep(0.3)
    assert running == "0", "the upstream query kept running after the client vanished"
    _still_serving(broker_dsn)


def test_upstream_refuses_held_credential(broker_dsn):
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(broker_dsn("demo-badcred"))
    text = str(err.value)
    assert "refused the gateway's held credential" in text
    assert "not-the-password" not in text


def _forge(claims: dict, header: dict, signature: bytes = b"") -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    return f"{enc(header)}.{enc(claims)}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def _refusal(broker_dsn, password: str, dbname: str = "demo", user: str = "alice@example.com") -> str:
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(broker_dsn(dbname, user=user, password=password))
    text = str(err.value)
    assert password not in text or len(password) < 8
    return text


def test_expired_token(broker_dsn, token):
    assert "expired" in _refusal(broker_dsn, token(ttl=-120))


def test_forged_token_signed_with_another_key(broker_dsn, token, stack):
    from cryptography.hazmat.primitives.asymmetric import rsa

    real = token()
    header = jwt.get_unverified_header(real)
    claims = jwt.decode(real, options={"verify_signature": False})
    claims["groups"] = ["dba"]
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, key, algorithm="RS256", headers={"kid": header["kid"]})
    assert "signature does not verify" in _refusal(broker_dsn, forged)


def test_alg_none_token(broker_dsn, token):
    claims = jwt.decode(token(), options={"verify_signature": False})
    forged = _forge(claims, {"alg": "none", "typ": "JWT"})
    assert "algorithm 'none' is not accepted" in _refusal(broker_dsn, forged)


def test_hs256_token_with_public_key_as_secret(broker_dsn, token):
    claims = jwt.decode(token(), options={"verify_signature": False})
    forged = jwt.encode(claims, "public-key-material-used-as-hmac-secret", algorithm="HS256")
    assert "algorithm 'HS256' is not accepted" in _refusal(broker_dsn, forged)


def test_wrong_audience(broker_dsn, token):
    text = _refusal(broker_dsn, token(audience="some-other-app"))
    assert "another audience" in text


def test_unknown_issuer(broker_dsn, token):
    from cryptography.hazmat.primitives.asymmetric import rsa

    claims = jwt.decode(token(), options={"verify_signature": False})
    claims["iss"] = "https://idp.attacker.example"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "attacker-key"})
    text = _refusal(broker_dsn, forged)
    assert "does not publish" in text or "another issuer" in text


def test_not_a_token(broker_dsn):
    assert "must be an OIDC ID token" in _refusal(broker_dsn, "hunter2")


def test_unknown_target_lists_reachable_ones(broker_dsn):
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(broker_dsn("no-such-target"))
    assert "no target named 'no-such-target'" in str(err.value)
    assert "demo" in str(err.value)


def test_group_not_allowed(broker_dsn):
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(broker_dsn("demo-private"))
    assert "may not reach 'demo-private'" in str(err.value) and "dba" in str(err.value)


def test_user_must_match_token(broker_dsn, token):
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(broker_dsn(user="mallory@example.com", password=token("alice@example.com")))
    assert "your token is for 'alice@example.com'" in str(err.value)


def test_plaintext_connection_refused(broker_dsn):
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(broker_dsn(sslmode="disable"))
    assert "TLS is required" in str(err.value)


def test_gssenc_request_answered_no(stack):
    with socket.create_connection(("127.0.0.1", stack.broker_port)) as s:
        s.sendall(struct.pack("!ii", 8, codec.GSSENC_REQUEST_CODE))
        assert s.recv(1) == b"N"


def test_policy_typo_keeps_previous_policy(stack, broker_dsn, tmp_path):
    good = stack.policy_path.read_text()
    try:
        stack.policy_path.write_text(good.replace("    allow:\n      groups: [sre, dba, analysts]", "    allow:\n      gruops: [sre]", 1))
        time.sleep(0.05)
        _still_serving(broker_dsn)  # the broken file is refused; the last good policy stays in force
        result = subprocess.run(["jitgate", "policy", "check", str(stack.policy_path)], capture_output=True, text=True)
        assert result.returncode == 1
        assert "unknown field (did you mean 'groups'?)" in result.stderr
        assert f"{stack.policy_path}:" in result.stderr
    finally:
        stack.policy_path.write_text(good)
