"""PostgreSQL wire protocol v3, sans-IO.

Bytes in, typed messages out; messages in, bytes out. Nothing here touches a
socket, so the codec can be unit-tested and fuzzed with bytes alone (see
tests/broker/pg/test_codec.py). Any malformed input raises ``ProtocolError``,
which the I/O layer turns into an ErrorResponse (SQLSTATE 08P01) and a close.

Reference: https://www.postgresql.org/docs/current/protocol-message-formats.html
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from jitgate.native import load_compiled

# The compiled framing loop (broker/pg/_framing.c, built by pip; optional): the same walk as
# MessageReader._scan below, which stays the reference. JITGATE_PG_FRAMING=python forces it.
_framing, FRAMING_MISSING = load_compiled("broker.pg._framing", Path(__file__).with_name("_framing.c"))
FRAMING = "python" if _framing is None or os.environ.get("JITGATE_PG_FRAMING") == "python" else "compiled"

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
PROTOCOL_3_0 = 196608  # 3 << 16

# PostgreSQL itself caps a message at 1 GB. We default much lower: a broker holds
# messages in memory while it inspects them, and 64 MiB comfortably exceeds any
# real statement or row while bounding what one client can make us buffer.
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
# Startup packets are tiny; PostgreSQL refuses over 10000 bytes.
MAX_STARTUP_PACKET = 10000

_I32 = struct.Struct("!i")
_I16 = struct.Struct("!h")
_HDR = struct.Struct("!ci")


class ProtocolError(Exception):
    """The peer sent bytes that are not valid PostgreSQL protocol."""

    sqlstate = "08P01"


# --- startup phase ------------------------------------------------------------------


@dataclass(frozen=True)
class SSLRequest:
    pass


@dataclass(frozen=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True)
class CancelRequest:
    pid: int
    secret: bytes


@dataclass(frozen=True)
class StartupMessage:
    protocol: int
    params: dict[str, str]

    @property
    def user(self) -> str:
        return self.params.get("user", "")

    @property
    def database(self) -> str:
        return self.params.get("database") or self.user


def parse_startup(buf: bytes | bytearray) -> tuple[object, int] | None:
    """Parse one startup-phase packet from the front of buf.

    Returns (message, bytes consumed), or None if more bytes are needed.
    """
    if len(buf) < 8:
        return None
    (length,) = _I32.unpack_from(buf, 0)
    if length < 8 or length > MAX_STARTUP_PACKET:
        raise ProtocolError(f"invalid startup packet length {length}; is this a PostgreSQL client?")
    if len(buf) < length:
        return None
    (code,) = _I32.unpack_from(buf, 4)
    body = bytes(buf[8:length])
    if code == SSL_REQUEST_CODE and length == 8:
        return SSLRequest(), length
    if code == GSSENC_REQUEST_CODE and length == 8:
        return GSSENCRequest(), length
    if code == CANCEL_REQUEST_CODE:
        if length < 16:
            raise ProtocolError("cancel request too short")
        (pid,) = _I32.unpack_from(buf, 8)
        return CancelRequest(pid, bytes(buf[12:length])), length
    if code >> 16 != 3:
        raise ProtocolError(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: only 3.x is spoken here")
    if not body.endswith(b"\x00"):
        raise ProtocolError("startup packet is not NUL-terminated")
    parts = body[:-1].split(b"\x00")
    if parts and parts[-1] == b"":
        parts.pop()
    if len(parts) % 2:
        raise ProtocolError("startup packet has a parameter name without a value")
    try:
        params = {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts), 2)}
    except UnicodeDecodeError:
        raise ProtocolError("startup parameters are not UTF-8") from None
    return StartupMessage(code, params), length


def build_startup(params: dict[str, str], protocol: int = PROTOCOL_3_0) -> bytes:
    body = b"".join(k.encode() + b"\x00" + v.encode() + b"\x00" for k, v in params.items()) + b"\x00"
    return _I32.pack(len(body) + 8) + _I32.pack(protocol) + body


def build_ssl_request() -> bytes:
    return _I32.pack(8) + _I32.pack(SSL_REQUEST_CODE)


def build_cancel_request(pid: int, secret: bytes) -> bytes:
    return _I32.pack(12 + len(secret)) + _I32.pack(CANCEL_REQUEST_CODE) + _I32.pack(pid) + secret


# --- framing of regular messages ----------------------------------------------------


class MessageReader:
    """Splits a byte stream into (type, payload) messages with a size limit.

    ``feed`` appends bytes; ``messages`` yields every complete message. Raw
    spans are available too, so a relay can forward untouched bytes without
    re-encoding them.
    """

    __slots__ = ("_buf", "_whole", "max_message")

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE):
        self._buf = bytearray()
        # A chunk fed while nothing was buffered, kept as it is: when it holds whole messages
        # only (a relay's usual read), ``spans`` hands it back without copying it twice.
        self._whole: bytes | None = None
        self.max_message = max_message

    def feed(self, data: bytes) -> None:
        if self._whole is None and not self._buf and type(data) is bytes:
            self._whole = data
            return
        self._settle()
        self._buf += data

    def _settle(self) -> None:
        """Move a kept chunk into the buffer (every method but ``spans`` reads the buffer)."""
        if self._whole is not None:
            self._buf += self._whole
            self._whole = None

    @property
    def buffered(self) -> int:
        return len(self._buf) + (len(self._whole) if self._whole is not None else 0)

    def spans(self, skip: int = -1) -> tuple[bytes, list[tuple[int, int, int]]]:
        """Take every complete message: (bytes, [(type byte, start, end), ...]).

        start..end covers the whole message including its 5-byte header. Bytes
        of an incomplete trailing message stay buffered. Messages of type ``skip``
        are framed and checked but not listed (the relay skips DataRows this way
        when it has nothing to do with them).
        """
        whole = self._whole
        buf = whole if whole is not None else self._buf
        pos, out, bad = (_framing.scan(buf, skip, self.max_message) if FRAMING == "compiled"
                         else _scan(buf, skip, self.max_message))
        if bad is not None:
            self._settle()
            if bad < 4:
                raise ProtocolError(f"invalid message length {bad} for message type {chr(buf[pos])!r}")
            raise ProtocolError(
                f"message of {bad} bytes exceeds the limit of {self.max_message} bytes (setting JITGATE_PG_MAX_MESSAGE)"
            )
        if whole is not None:
            self._whole = None
            if pos == len(whole):
                return whole, out
            self._buf += memoryview(whole)[pos:]
            return whole[:pos], out
        if pos == 0:
            return b"", out
        data = bytes(buf[:pos])
        del buf[:pos]
        return data, out

    def head(self) -> tuple[int, int] | None:
        """(type byte, total bytes incl. the type byte) of the first buffered message, once its
        header is in: a caller can refuse or stream a large message before it is all buffered."""
        self._settle()
        if len(self._buf) < 5:
            return None
        (length,) = _I32.unpack_from(self._buf, 1)
        return self._buf[0], length + 1

    def take(self, size: int | None = None) -> bytes:
        """Remove and return up to ``size`` buffered bytes (a message being streamed through);
        every buffered byte, an incomplete message too, when ``size`` is None."""
        self._settle()
        size = len(self._buf) if size is None else size
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def messages(self) -> list[tuple[str, bytes]]:
        data, spans = self.spans()
        return [(chr(t), data[s + 5 : e]) for t, s, e in spans]


def _scan(buf: bytearray, skip: int, limit: int) -> tuple[int, list[tuple[int, int, int]], int | None]:
    """(pos, spans, bad): the reference framing loop (see broker/pg/_framing.c)."""
    n = len(buf)
    pos = 0
    out = []
    unpack = _I32.unpack_from
    while n - pos >= 5:
        (length,) = unpack(buf, pos + 1)
        if length < 4 or length > limit:
            return pos, out, length
        end = pos + 1 + length
        if end > n:
            break
        kind = buf[pos]
        if kind != skip:
            out.append((kind, pos, end))
        pos = end
    return pos, out, None


def count_messages(data: bytes, begin: int, stop: int) -> int:
    """How many messages data[begin:stop] holds (framed and checked already, as above)."""
    count = 0
    unpack = _I32.unpack_from
    pos = begin
    while pos < stop:
        pos += 1 + unpack(data, pos + 1)[0]
        count += 1
    return count


def message(kind: str | bytes, payload: bytes = b"") -> bytes:
    kind_b = kind.encode() if isinstance(kind, str) else kind
    return kind_b + _I32.pack(len(payload) + 4) + payload


def cstr(value: str) -> bytes:
    return value.encode() + b"\x00"


class _Cursor:
    """Reads fields out of one message payload; any overrun is a ProtocolError."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str):
        self.data = data
        self.pos = 0
        self.what = what

    def _need(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError(f"truncated {self.what} message")

    def i16(self) -> int:
        self._need(2)
        (v,) = _I16.unpack_from(self.data, self.pos)
        self.pos += 2
        return v

    def u16(self) -> int:
        self._need(2)
        v = int.from_bytes(self.data[self.pos : self.pos + 2], "big")
        self.pos += 2
        return v

    def i32(self) -> int:
        self._need(4)
        (v,) = _I32.unpack_from(self.data, self.pos)
        self.pos += 4
        return v

    def u32(self) -> int:
        self._need(4)
        v = int.from_bytes(self.data[self.pos : self.pos + 4], "big")
        self.pos += 4
        return v

    def bytes(self, n: int) -> bytes:
        self._need(n)
        v = self.data[self.pos : self.pos + n]
        self.pos += n
        return v

    def cstr(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise ProtocolError(f"unterminated string in {self.what} message")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise ProtocolError(f"{self.what} message holds a string that is not UTF-8") from None

    def rest(self) -> bytes:
        v = self.data[self.pos :]
        self.pos = len(self.data)
        return v


# --- frontend messages ---------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    sql: str


@dataclass(frozen=True)
class Parse:
    name: str
    sql: str
    param_types: tuple[int, ...]


@dataclass(frozen=True)
class Bind:
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]

    def param_format(self, i: int) -> int:
        if not self.param_formats:
            return 0
        if len(self.param_formats) == 1:
            return self.param_formats[0]
        return self.param_formats[i]


@dataclass(frozen=True)
class Execute:
    portal: str
    max_rows: int


@dataclass(frozen=True)
class Describe:
    kind: str  # 'S' statement or 'P' portal
    name: str


@dataclass(frozen=True)
class Close:
    kind: str
    name: str


@dataclass(frozen=True)
class FunctionCall:
    oid: int


def parse_query(payload: bytes) -> Query:
    return Query(_first_cstr(payload, "Query"))


# What reading a malformed payload straight through can raise (UnicodeDecodeError is a ValueError).
_UNREADABLE = (ValueError, struct.error, IndexError)


def parse_parse(payload: bytes) -> Parse:
    """Every extended-protocol statement may send one: read straight through; what that trips on is
    read again by the checked reference, which raises the ProtocolError that says what is wrong."""
    try:
        end = payload.index(0)
        name = payload[:end].decode()
        pos = end + 1
        end = payload.index(0, pos)
        sql = payload[pos:end].decode()
        (n,) = _I16.unpack_from(payload, end + 1)
        if n < 0:
            raise ValueError
        types = struct.unpack_from(f"!{n}I", payload, end + 3) if n else ()
    except _UNREADABLE:
        return _parse_parse_checked(payload)
    return Parse(name, sql, types)


def _parse_parse_checked(payload: bytes) -> Parse:
    c = _Cursor(payload, "Parse")
    name = c.cstr()
    sql = c.cstr()
    n = c.i16()
    if n < 0:
        raise ProtocolError("negative parameter count in Parse")
    return Parse(name, sql, tuple(c.u32() for _ in range(n)))


def _first_cstr(payload: bytes, what: str) -> str:
    """The NUL-terminated UTF-8 string at the start of ``payload``, as ``_Cursor.cstr`` reads it."""
    end = payload.find(b"\x00")
    if end >= 0:
        try:
            return payload[:end].decode()
        except UnicodeDecodeError:
            pass
    return _Cursor(payload, what).cstr()  # says what is wrong


def parse_bind(payload: bytes) -> Bind:
    """Every extended-protocol statement sends a Bind: a well-formed one is read straight
    through; anything that reading trips on is parsed again by ``_parse_bind_checked``
    (the reference), which raises the ProtocolError that says what is wrong."""
    try:
        end = payload.index(0)
        portal = payload[:end].decode()
        pos = end + 1
        end = payload.index(0, pos)
        statement = payload[pos:end].decode()
        pos = end + 1
        (nf,) = _I16.unpack_from(payload, pos)
        if nf < 0:
            raise ValueError
        formats = struct.unpack_from(f"!{nf}h", payload, pos + 2) if nf else ()
        pos += 2 + 2 * nf
        (np_,) = _I16.unpack_from(payload, pos)
        pos += 2
        if np_ < 0 or (nf > 1 and nf != np_):
            raise ValueError
        size = len(payload)
        params = []
        for _ in range(np_):
            (length,) = _I32.unpack_from(payload, pos)
            pos += 4
            if length == -1:
                params.append(None)
            elif 0 <= length <= size - pos:
                params.append(payload[pos : pos + length])
                pos += length
            else:
                raise ValueError
        (nr,) = _I16.unpack_from(payload, pos)
        if nr < 0:
            raise ValueError
        results = struct.unpack_from(f"!{nr}h", payload, pos + 2) if nr else ()
    except _UNREADABLE:
        return _parse_bind_checked(payload)
    return Bind(portal, statement, formats, tuple(params), results)


def _parse_bind_checked(payload: bytes) -> Bind:
    c = _Cursor(payload, "Bind")
    portal = c.cstr()
    statement = c.cstr()
    nf = c.i16()
    if nf < 0:
        raise ProtocolError("negative format count in Bind")
    formats = tuple(c.i16() for _ in range(nf))
    np_ = c.i16()
    if np_ < 0:
        raise ProtocolError("negative parameter count in Bind")
    if nf > 1 and nf != np_:
        raise ProtocolError("Bind has a parameter format count that matches neither 1 nor the parameter count")
    params: list[bytes | None] = []
    for _ in range(np_):
        length = c.i32()
        params.append(None if length == -1 else c.bytes(length))
    nr = c.i16()
    if nr < 0:
        raise ProtocolError("negative result format count in Bind")
    return Bind(portal, statement, formats, tuple(params), tuple(c.i16() for _ in range(nr)))


def parse_execute(payload: bytes) -> Execute:
    """Straight through, like ``parse_bind``; the checked reference says what is wrong."""
    try:
        end = payload.index(0)
        portal = payload[:end].decode()
        (max_rows,) = _I32.unpack_from(payload, end + 1)
    except _UNREADABLE:
        return _parse_execute_checked(payload)
    return Execute(portal, max_rows)


def _parse_execute_checked(payload: bytes) -> Execute:
    c = _Cursor(payload, "Execute")
    return Execute(c.cstr(), c.i32())


def parse_describe(payload: bytes) -> Describe:
    """Straight through, like ``parse_bind``; the checked reference says what is wrong."""
    try:
        kind = payload[0]
        end = payload.index(0, 1)
        name = payload[1:end].decode()
    except _UNREADABLE:
        return _parse_describe_checked(payload)
    if kind != 0x50 and kind != 0x53:  # 'P', 'S'
        return _parse_describe_checked(payload)
    return Describe(chr(kind), name)


def _parse_describe_checked(payload: bytes) -> Describe:
    c = _Cursor(payload, "Describe")
    kind = chr(c.bytes(1)[0])
    if kind not in "SP":
        raise ProtocolError(f"Describe of unknown kind {kind!r}")
    return Describe(kind, c.cstr())


def parse_close(payload: bytes) -> Close:
    c = _Cursor(payload, "Close")
    kind = chr(c.bytes(1)[0])
    if kind not in "SP":
        raise ProtocolError(f"Close of unknown kind {kind!r}")
    return Close(kind, c.cstr())


def parse_function_call(payload: bytes) -> FunctionCall:
    return FunctionCall(_Cursor(payload, "FunctionCall").u32())


def parse_password(payload: bytes) -> str:
    return _Cursor(payload, "PasswordMessage").cstr()


def build_query(sql: str) -> bytes:
    return message("Q", cstr(sql))


def build_close(kind: str, name: str) -> bytes:
    return message("C", kind.encode() + cstr(name))


def build_sync() -> bytes:
    return message("S")


def build_parse(name: str, sql: str, param_types: tuple[int, ...] = ()) -> bytes:
    return message(
        "P", cstr(name) + cstr(sql) + _I16.pack(len(param_types)) + b"".join(t.to_bytes(4, "big") for t in param_types)
    )


def build_password(password: str | bytes) -> bytes:
    raw = password.encode() if isinstance(password, str) else password
    return message("p", raw + b"\x00")


def build_sasl_initial(mechanism: str, data: bytes) -> bytes:
    return message("p", cstr(mechanism) + _I32.pack(len(data)) + data)


def build_sasl_response(data: bytes) -> bytes:
    return message("p", data)


SYNC = message("S")
TERMINATE = message("X")


# --- backend messages ----------------------------------------------------------------

AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


@dataclass(frozen=True)
class Authentication:
    code: int
    data: bytes = b""

    @property
    def mechanisms(self) -> list[str]:
        try:
            return [m.decode() for m in self.data.split(b"\x00") if m]
        except UnicodeDecodeError:
            raise ProtocolError("AuthenticationSASL names a mechanism that is not UTF-8") from None

    def text(self) -> str:
        """The SASL payload as text (SCRAM messages are UTF-8)."""
        try:
            return self.data.decode()
        except UnicodeDecodeError:
            raise ProtocolError(f"authentication message (code {self.code}) holds bytes that are not UTF-8") from None


def parse_authentication(payload: bytes) -> Authentication:
    c = _Cursor(payload, "Authentication")
    return Authentication(c.i32(), c.rest())


def build_authentication(code: int, data: bytes = b"") -> bytes:
    return message("R", _I32.pack(code) + data)


AUTHENTICATION_OK = build_authentication(AUTH_OK)
AUTHENTICATION_CLEARTEXT = build_authentication(AUTH_CLEARTEXT)


@dataclass(frozen=True)
class BackendKeyData:
    pid: int
    secret: bytes


def parse_backend_key(payload: bytes) -> BackendKeyData:
    c = _Cursor(payload, "BackendKeyData")
    return BackendKeyData(c.i32(), c.rest())


def build_backend_key(pid: int, secret: bytes) -> bytes:
    return message("K", _I32.pack(pid) + secret)


def build_parameter_status(name: str, value: str) -> bytes:
    return message("S", cstr(name) + cstr(value))


def parse_parameter_status(payload: bytes) -> tuple[str, str]:
    c = _Cursor(payload, "ParameterStatus")
    return c.cstr(), c.cstr()


def build_ready(status: str = "I") -> bytes:
    return message("Z", status.encode())


def build_negotiate_protocol(newest_minor: int, unsupported: list[str]) -> bytes:
    return message("v", _I32.pack(newest_minor) + _I32.pack(len(unsupported)) + b"".join(cstr(o) for o in unsupported))


# ErrorResponse / NoticeResponse field codes
FIELD_NAMES = {
    "S": "severity",
    "V": "severity_nonlocalized",
    "C": "code",
    "M": "message",
    "D": "detail",
    "H": "hint",
    "P": "position",
    "p": "internal_position",
    "q": "internal_query",
    "W": "where",
    "s": "schema",
    "t": "table",
    "c": "column",
    "d": "data_type",
    "n": "constraint",
    "F": "file",
    "L": "line",
    "R": "routine",
}


def parse_fields(payload: bytes) -> dict[str, str]:
    """ErrorResponse/NoticeResponse fields, keyed by their one-letter code."""
    out: dict[str, str] = {}
    pos = 0
    n = len(payload)
    while pos < n:
        code = payload[pos : pos + 1]
        if code == b"\x00":
            return out
        end = payload.find(b"\x00", pos + 1)
        if end < 0:
            raise ProtocolError("unterminated field in ErrorResponse/NoticeResponse")
        out[code.decode("latin-1")] = payload[pos + 1 : end].decode("utf-8", "replace")
        pos = end + 1
    raise ProtocolError("ErrorResponse/NoticeResponse lacks its terminator")


def build_fields(kind: str, fields: dict[str, str]) -> bytes:
    return message(kind, b"".join(k.encode() + cstr(v) for k, v in fields.items()) + b"\x00")


def _report(kind: str, message_text: str, code: str, severity: str, extra: dict[str, str]) -> bytes:
    fields = {"S": severity, "V": severity, "C": code, "M": message_text}
    for key, value in extra.items():
        letter = {"detail": "D", "hint": "H"}.get(key)
        if letter and value:
            fields[letter] = value
    return build_fields(kind, fields)


def build_error(message_text: str, code: str = "28000", severity: str = "FATAL", **extra: str) -> bytes:
    return _report("E", message_text, code, severity, extra)


def build_notice(message_text: str, code: str = "01000", severity: str = "NOTICE", **extra: str) -> bytes:
    return _report("N", message_text, code, severity, extra)


@dataclass(frozen=True)
class FieldDescription:
    name: str
    table_oid: int
    column_attr: int
    type_oid: int
    type_size: int
    type_modifier: int
    format: int


_FIELD = struct.Struct("!IhIhih")  # table OID, attribute number, type OID, type size, type modifier, format


def parse_row_description(payload: bytes) -> list[FieldDescription]:
    """Straight through, like ``parse_bind``; the checked reference says what is wrong."""
    try:
        (n,) = _I16.unpack_from(payload, 0)
        if n < 0:
            raise ValueError
        fields = []
        pos = 2
        for _ in range(n):
            end = payload.index(0, pos)
            fields.append(FieldDescription(payload[pos:end].decode(), *_FIELD.unpack_from(payload, end + 1)))
            pos = end + 19
    except _UNREADABLE:
        return _parse_row_description_checked(payload)
    return fields


def _parse_row_description_checked(payload: bytes) -> list[FieldDescription]:
    c = _Cursor(payload, "RowDescription")
    n = c.i16()
    if n < 0:
        raise ProtocolError("negative field count in RowDescription")
    return [FieldDescription(c.cstr(), c.u32(), c.i16(), c.u32(), c.i16(), c.i32(), c.i16()) for _ in range(n)]


def build_row_description(fields: list[FieldDescription]) -> bytes:
    parts = [_I16.pack(len(fields))]
    for f in fields:
        parts.append(
            cstr(f.name)
            + f.table_oid.to_bytes(4, "big")
            + _I16.pack(f.column_attr)
            + f.type_oid.to_bytes(4, "big")
            + _I16.pack(f.type_size)
            + _I32.pack(f.type_modifier)
            + _I16.pack(f.format)
        )
    return message("T", b"".join(parts))


def parse_data_row(payload: bytes) -> list[bytes | None]:
    """DataRow columns; None is SQL NULL."""
    c = _Cursor(payload, "DataRow")
    n = c.i16()
    if n < 0:
        raise ProtocolError("negative column count in DataRow")
    out: list[bytes | None] = []
    for _ in range(n):
        length = c.i32()
        out.append(None if length == -1 else c.bytes(length))
    if c.pos != len(payload):
        raise ProtocolError("DataRow has trailing bytes")
    return out


def build_data_row(values: list[bytes | None]) -> bytes:
    """A whole DataRow message rebuilt from its column values."""
    parts = [_I16.pack(len(values))]
    for v in values:
        if v is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(_I32.pack(len(v)))
            parts.append(v)
    return message("D", b"".join(parts))


def parse_command_complete(payload: bytes) -> str:
    return _first_cstr(payload, "CommandComplete")


# PostgreSQL counts rows in a uint64: at most 20 decimal digits.
_MAX_ROW_COUNT_DIGITS = 20


def rows_from_tag(tag: str) -> int | None:
    """Row count from a CommandComplete tag: 'SELECT 5', 'INSERT 0 3', 'COPY 10'; None for
    tags without one ('CREATE TABLE'). A count no server could send is a ProtocolError."""
    last = tag.rpartition(" ")[2]
    if not last.isdigit():
        return None
    if not last.isascii() or len(last) > _MAX_ROW_COUNT_DIGITS:
        raise ProtocolError(f"CommandComplete tag {tag[:40]!r} carries a row count that is not a 64-bit decimal number")
    return int(last)


@dataclass(frozen=True)
class Notification:
    pid: int
    channel: str
    payload: str


def parse_notification(payload: bytes) -> Notification:
    c = _Cursor(payload, "NotificationResponse")
    return Notification(c.i32(), c.cstr(), c.cstr())


def build_notification(note: Notification, payload: str | None = None) -> bytes:
    """A NotificationResponse; ``payload`` replaces the note's own."""
    text = note.payload if payload is None else payload
    return message("A", struct.pack("!i", note.pid) + note.channel.encode() + b"\0" + text.encode() + b"\0")


@dataclass
class CopyResponse:
    kind: str  # 'G' in, 'H' out, 'W' both
    format: int
    column_formats: list[int] = field(default_factory=list)


def parse_copy_response(kind: str, payload: bytes) -> CopyResponse:
    c = _Cursor(payload, "CopyResponse")
    overall = c.bytes(1)[0]
    n = c.i16()
    return CopyResponse(kind, overall, [c.i16() for _ in range(max(n, 0))])
