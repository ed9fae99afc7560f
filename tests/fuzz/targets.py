"""Fuzz targets: each takes bytes and either returns or raises one of the project's own errors.

The same functions serve the short deterministic run in the test suite (tests/fuzz/test_fuzz.py,
hypothesis) and the long coverage-guided run (scripts/fuzz.sh, atheris). They call only stable
public entry points (the codec, ``UpstreamLogin``, ``Masker``, ``classify_sql``,
``classify_command``, ``parse_policy``) so rewrites behind them do not break the harness.

A target's contract is "only ``ALLOWED[target]`` comes out, or a correct result"; anything else
is a finding. ``KNOWN_FINDINGS`` lists findings that belong to another open piece of work (the
helper that owns that module fixes them); the runs report them without failing, so the suite
stays green while the finding is visible. Remove an entry once its fix lands.
"""
from __future__ import annotations

import functools
import traceback
from typing import Callable

from broker.pg import codec
from broker.pg.codec import FieldDescription
from broker.pg.upstream_auth import UpstreamAuthError, UpstreamLogin
from jitgate.guardrails import Classification, classify_command, classify_sql
from jitgate.masking import Masker, rows
from jitgate.masking.errors import MalformedRow, MaskingRefused
from jitgate.policy import MaskingConfig, MaskingRule, PolicyError, parse_policy

# --- the PostgreSQL codec --------------------------------------------------------------------

_FRONTEND = {
    "Q": codec.parse_query, "P": codec.parse_parse, "B": codec.parse_bind, "E": codec.parse_execute,
    "D": codec.parse_describe, "C": codec.parse_close, "F": codec.parse_function_call, "p": codec.parse_password,
}
_BACKEND = {
    "R": codec.parse_authentication, "K": codec.parse_backend_key, "S": codec.parse_parameter_status,
    "E": codec.parse_fields, "N": codec.parse_fields, "T": codec.parse_row_description,
    "D": codec.parse_data_row, "C": lambda p: codec.rows_from_tag(codec.parse_command_complete(p)),
    "A": codec.parse_notification, "G": lambda p: codec.parse_copy_response("G", p),
    "H": lambda p: codec.parse_copy_response("H", p), "W": lambda p: codec.parse_copy_response("W", p),
}


def fuzz_codec(data: bytes) -> None:
    """Startup packets, then framed messages parsed by every frontend and backend parser."""
    if data[:1] == b"\x00":
        codec.parse_startup(data[1:])
        return
    reader = codec.MessageReader(max_message=1 << 16)
    reader.feed(data)
    for kind, payload in reader.messages():
        for parsers in (_FRONTEND, _BACKEND):
            parser = parsers.get(kind)
            if parser is None:
                continue
            try:
                result = parser(payload)
            except codec.ProtocolError:
                continue
            if kind == "R":
                result.mechanisms  # noqa: B018 - decoding is the point
            elif parsers is _BACKEND and kind == "D":
                assert codec.parse_data_row(codec.build_data_row(result)[5:]) == result


# --- logging in to a hostile upstream ----------------------------------------------------------

# The server-first message must echo the client's random nonce; inputs say where with this token.
NONCE = b"@NONCE@"
_FUZZ_MAX_ITERATIONS = 4096  # scramp's minimum: every valid server-first hashes once, cheaply


def fuzz_upstream_login(data: bytes) -> None:
    """A hostile upstream's login messages, fed to the login state machine in order."""
    login = UpstreamLogin("jitgate_broker", "held-password", encrypted=bool(data[:1]) and data[0] & 1 == 1,
                          max_scram_iterations=_FUZZ_MAX_ITERATIONS)
    reader = codec.MessageReader(max_message=1 << 16)
    reader.feed(data[1:])
    nonce = b""
    for kind, payload in reader.messages():
        if kind != "R":
            continue
        auth = codec.parse_authentication(payload.replace(NONCE, nonce))
        reply = login.respond(auth)
        if reply.startswith(b"p") and b"r=" in reply and not nonce:
            nonce = reply.split(b"r=", 1)[1]
        if auth.code not in (codec.AUTH_OK, codec.AUTH_SASL_FINAL):
            assert reply[:1] == b"p", reply[:20]


# --- masking ---------------------------------------------------------------------------------

TEXT, VARCHAR, BYTEA, INT4, NUMERIC, UUID, JSON, JSONB, DATE, TEXT_ARRAY = 25, 1043, 17, 23, 1700, 2950, 114, 3802, 1082, 1009
_TABLE = 16384
_COLUMNS = ("email", "note", "card", "payload", "amount", "id", "doc", "raw", "born", "tags")
_TYPES = (VARCHAR, TEXT, TEXT, JSONB, NUMERIC, UUID, JSON, BYTEA, DATE, TEXT_ARRAY)
_KEY = b"fuzz-masking-key-0123456789abcdef"


def _masker(strategy: str) -> Masker:
    return Masker(MaskingConfig(rules=[
        MaskingRule(columns=["customers.email", "card", "amount", "id", "raw", "born", "tags"], strategy=strategy),
        MaskingRule(detectors=["email", "card", "iban", "ssn", "phone", "secret"], strategy=strategy),
        MaskingRule(columns=["doc", "payload"], detectors=["email", "secret", "card"], strategy=strategy),
    ]), _KEY)


_STRATEGIES = ("redact", "partial", "hash", "null")
_MASKERS = {s: _masker(s) for s in _STRATEGIES}
_MASKING_ERRORS = (MalformedRow, MaskingRefused)


def _fields(formats: int) -> list[FieldDescription]:
    return [FieldDescription(name, _TABLE, i + 1, type_oid, -1, -1, (formats >> i) & 1)
            for i, (name, type_oid) in enumerate(zip(_COLUMNS, _TYPES))]


@functools.lru_cache(maxsize=None)
def _plan(selector: int, implementation: str = "python"):
    """One RowPlan per strategy, format mix and row core (plans hold no per-row state but the
    report of changed columns, so reuse is safe)."""
    masker = _MASKERS[_STRATEGIES[selector & 3]]
    saved, rows.implementation = rows.implementation, implementation
    try:
        return masker.plan(_fields(selector >> 2), {_TABLE: "customers"})
    finally:
        rows.implementation = saved


def _mask_row_both(selector: int, payload: bytes) -> bytes:
    """The row through the pure-Python reference and the compiled core (when built): the same
    bytes out, or the same error with the same message."""
    reference = _plan(selector, "python")
    try:
        expected = reference.mask_row(payload)
    except _MASKING_ERRORS as exc:
        expected = exc
    if rows._rowcore is not None:
        try:
            got = _plan(selector, "compiled").mask_row(payload)
        except _MASKING_ERRORS as exc:
            got = exc
        if isinstance(expected, Exception):
            assert type(got) is type(expected) and str(got) == str(expected), (expected, got)
        else:
            assert got == expected, (expected, got)
    if isinstance(expected, Exception):
        raise expected
    return expected


def fuzz_mask_rows(data: bytes) -> None:
    """DataRows of every masked type, text and binary. The first two bytes pick the strategy and
    the columns' formats; then either raw DataRow payloads (odd) or column values (even)."""
    if len(data) < 2:
        return
    selector = data[0] | (data[1] << 8)
    body = data[2:]
    if data[1] & 0x80:
        payload = body
    else:  # well-framed rows with fuzzed values: reach the value maskers, not just the framing
        values = body.split(b"\x00\x00\x01")[: len(_COLUMNS)]
        values += [b""] * (len(_COLUMNS) - len(values))
        payload = codec.build_data_row([None if v == b"\xff" else v for v in values])[5:]
    out = _mask_row_both(selector, payload)
    codec.parse_data_row(out[5:])  # whatever comes out is a well-formed DataRow


def fuzz_mask_json(data: bytes) -> None:
    """One json/jsonb value (text and binary jsonb) under detector and column rules."""
    if not data:
        return
    selector = (data[0] & 3) | (0b1000 << 2 if data[0] & 4 else 0)
    values: list[bytes | None] = [None] * len(_COLUMNS)  # only the JSON column holds a value
    values[6 if data[0] & 8 else 3] = (b"\x01" if data[0] & 4 and not data[0] & 8 else b"") + data[1:]
    codec.parse_data_row(_mask_row_both(selector, codec.build_data_row(values)[5:])[5:])


_COPY_SHAPES = (
    dict(format="text"), dict(format="csv"), dict(format="csv", header=True), dict(format="text", delimiter="|"),
    dict(format="csv", delimiter=";", null="NULL"), dict(format="text", null=""),
)


def fuzz_mask_copy(data: bytes) -> None:
    """COPY TO STDOUT lines, text and CSV, with and without named columns."""
    if not data:
        return
    shape = _COPY_SHAPES[data[0] % len(_COPY_SHAPES)]
    masker = _MASKERS[_STRATEGIES[(data[0] >> 3) & 3]]
    columns = list(_COLUMNS[:4]) if data[0] & 0x20 else None
    try:
        plan = masker.plan_copy(columns, "customers" if columns else None, **shape)
    except MaskingRefused:
        plan = masker.plan_copy(None, "logs", **shape)
    if plan is None:
        return
    for line in data[1:].split(b"\n"):
        out = plan.mask_line(line + b"\n")
        assert out.endswith(b"\n")


def fuzz_mask_text(data: bytes) -> None:
    """Error and notice text (what a client controls with e.g. SELECT '<text>'::int)."""
    text = data.decode("utf-8", "replace")
    for strategy in ("redact", "hash"):
        out = _MASKERS[strategy].mask_text(text, table="customers" if len(text) & 1 else None)
        assert isinstance(out, str)


# --- classifiers -----------------------------------------------------------------------------


def _fails_closed(result: Classification) -> None:
    assert isinstance(result, Classification), type(result)
    if result.error is not None:
        assert "unclassified" in result.classes, result


def fuzz_classify_sql(data: bytes) -> None:
    _fails_closed(classify_sql(data.decode("utf-8", "replace")))


def fuzz_classify_shell(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    _fails_closed(classify_command(text))
    _fails_closed(classify_command(text.split("\x00")))


# --- the policy loader -----------------------------------------------------------------------


def fuzz_policy(data: bytes) -> None:
    parse_policy(data, "fuzz.yaml")


# --- registry --------------------------------------------------------------------------------

TARGETS: dict[str, Callable[[bytes], None]] = {
    "codec": fuzz_codec,
    "upstream_login": fuzz_upstream_login,
    "mask_rows": fuzz_mask_rows,
    "mask_json": fuzz_mask_json,
    "mask_copy": fuzz_mask_copy,
    "mask_text": fuzz_mask_text,
    "classify_sql": fuzz_classify_sql,
    "classify_shell": fuzz_classify_shell,
    "policy": fuzz_policy,
}

ALLOWED: dict[str, tuple[type[BaseException], ...]] = {
    "codec": (codec.ProtocolError,),
    "upstream_login": (codec.ProtocolError, UpstreamAuthError),
    "mask_rows": _MASKING_ERRORS,
    "mask_json": _MASKING_ERRORS,
    "mask_copy": _MASKING_ERRORS,
    "mask_text": (),
    "classify_sql": (),
    "classify_shell": (),
    "policy": (PolicyError,),
}

# (target, exception type name, "folder/file.py" where it was raised): findings another open piece of
# work owns, reported by the runs instead of failed. Empty since the masking fixes of issue 21
# landed (feebfae: binary numeric/uuid, bytea escapes and bad JSON escapes now raise MalformedRow).
KNOWN_FINDINGS: set[tuple[str, str, str]] = set()


def signature(exc: BaseException) -> tuple[str, str, int]:
    """Exception type, and file and line of the innermost project frame: one finding, many inputs."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/tests/fuzz/" not in f.filename]
    ours = [f for f in frames if "/jitgate/" in f.filename or "/broker/" in f.filename] or frames
    last = ours[-1] if ours else None
    return type(exc).__name__, last.filename.rsplit("/", 2)[-2] + "/" + last.filename.rsplit("/", 1)[-1] if last else "?", last.lineno if last else 0


def run_one(name: str, data: bytes) -> tuple[str, str, int] | None:
    """Run one input; None when it held the contract, else the finding's signature."""
    try:
        TARGETS[name](data)
    except ALLOWED[name]:
        return None
    except RecursionError as exc:  # never acceptable, and unsafe to format deeply
        return ("RecursionError", signature(exc)[1], signature(exc)[2])
    except Exception as exc:  # noqa: BLE001 - every other exception is a finding
        return signature(exc)
    return None


def is_known(name: str, finding: tuple[str, str, int]) -> bool:
    return (name, finding[0], finding[1]) in KNOWN_FINDINGS

