"""CopyPlan: masks the rows of COPY ... TO STDOUT in text or CSV format.

PostgreSQL sends one row per CopyData message, terminator included, so a
"line" here is one CopyData payload: a CSV field with an embedded newline stays
inside its line. Fields are decoded to the text form of their value, masked by
the same text-format maskers a DataRow would use, and encoded back; fields no
masker looks at are carried over byte for byte.
"""
from __future__ import annotations

import re
import struct

from jitgate.masking.columns import ValueMasker
from jitgate.masking.errors import MalformedRow

_TEXT_UNESCAPES = {ord("b"): 8, ord("f"): 12, ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("v"): 11}
_TEXT_ESCAPES = {8: b"\\b", 12: b"\\f", 10: b"\\n", 13: b"\\r", 9: b"\\t", 11: b"\\v", 92: b"\\\\"}
_OCTAL = re.compile(rb"[0-7]{1,3}")
_HEX = re.compile(rb"x([0-9A-Fa-f]{1,2})")


class CopyPlan:
    """How to mask each row of one COPY TO STDOUT (see ``Masker.plan_copy``)."""

    __slots__ = ("_maskers", "_every_field", "_csv", "_delimiter", "_null", "_skip_header", "_quote", "_escape")

    def __init__(
        self,
        maskers: dict[int, ValueMasker],
        every_field: ValueMasker | None,
        *,
        csv: bool,
        delimiter: bytes,
        null: bytes,
        header: bool,
        quote: bytes = b'"',
        escape: bytes | None = None,
    ):
        self._maskers = maskers  # by field index
        self._every_field = every_field  # used where no column is known (detectors only)
        self._csv = csv
        self._delimiter = delimiter
        self._null = null
        self._skip_header = header
        # CSV: PostgreSQL writes the escape character (by default the quote itself) before
        # every quote and escape character inside a quoted field.
        self._quote = quote
        self._escape = escape if escape is not None else quote

    def mask_data(self, data: bytes) -> bytes:
        """One CopyData payload (one row, PostgreSQL sends a row per message)."""
        return self.mask_line(data)

    def finish(self) -> None:
        """Text and CSV rows are complete in each message: nothing can be left over."""

    def mask_line(self, line: bytes) -> bytes:
        if self._skip_header:
            self._skip_header = False  # the header names columns; it holds no row data
            return line
        body, terminator = _split_terminator(line)
        fields = self._split_csv(body) if self._csv else _split_text(body, self._delimiter)
        changed = False
        for index, field in enumerate(fields):
            masker = self._maskers.get(index, self._every_field)
            if masker is None:
                continue
            value = self._decode(field)
            if value is None:
                continue  # NULL stays NULL
            masked = masker(value)
            if masked is value:
                continue
            fields[index] = self._encode(masked)
            changed = True
        if not changed:
            return line
        return self._delimiter.join(fields) + terminator

    # --- text format ---

    def _decode(self, field: bytes) -> bytes | None:
        if self._csv:
            return _csv_decode(field, self._null, self._quote, self._escape)
        if field == self._null:
            return None
        return _text_unescape(field) if b"\\" in field else field

    def _encode(self, value: bytes | None) -> bytes:
        if self._csv:
            return _csv_encode(value, self._null, self._delimiter, self._quote, self._escape)
        if value is None:
            return self._null
        return _text_escape(value, self._delimiter)

    # --- CSV format ---

    def _split_csv(self, body: bytes) -> list[bytes]:
        if self._quote not in body:
            return body.split(self._delimiter)
        fields = []
        i = 0
        n = len(body)
        delimiter = self._delimiter[0]
        quote = self._quote[0]
        escape = self._escape[0]
        start = 0
        in_quotes = False
        while i < n:
            byte = body[i]
            if in_quotes:
                if byte == escape and i + 1 < n and body[i + 1] in (quote, escape) and (escape != quote or body[i + 1] == quote):
                    i += 1  # an escaped quote or escape character is data
                elif byte == quote:
                    in_quotes = False
            elif byte == quote:
                in_quotes = True
            elif byte == delimiter:
                fields.append(body[start:i])
                start = i + 1
            i += 1
        if in_quotes:
            raise MalformedRow("COPY CSV row ends inside a quoted field")
        fields.append(body[start:])
        return fields


def _split_terminator(line: bytes) -> tuple[bytes, bytes]:
    if line.endswith(b"\r\n"):
        return line[:-2], b"\r\n"
    if line.endswith(b"\n"):
        return line[:-1], b"\n"
    return line, b""


def _split_text(body: bytes, delimiter: bytes) -> list[bytes]:
    """Fields of a text-format row; a delimiter preceded by a backslash is data, not a separator."""
    if b"\\" not in body:
        return body.split(delimiter)
    fields = []
    start = 0
    i = 0
    n = len(body)
    sep = delimiter[0]
    while i < n:
        byte = body[i]
        if byte == 0x5C:
            i += 2
            continue
        if byte == sep:
            fields.append(body[start:i])
            start = i + 1
        i += 1
    fields.append(body[start:])
    return fields


def _text_unescape(field: bytes) -> bytes:
    out = bytearray()
    i = 0
    n = len(field)
    while i < n:
        byte = field[i]
        if byte != 0x5C or i + 1 == n:
            out.append(byte)
            i += 1
            continue
        nxt = field[i + 1]
        if nxt in _TEXT_UNESCAPES:
            out.append(_TEXT_UNESCAPES[nxt])
            i += 2
        elif 0x30 <= nxt <= 0x37:
            m = _OCTAL.match(field, i + 1)
            out.append(int(m.group(), 8) & 0xFF)
            i = m.end()
        elif nxt == ord("x") and (m := _HEX.match(field, i + 1)):
            out.append(int(m.group(1), 16))
            i = m.end()
        else:
            out.append(nxt)  # any other escaped character stands for itself
            i += 2
    return bytes(out)


def _text_escape(value: bytes, delimiter: bytes) -> bytes:
    if not any(b in value for b in (b"\\", b"\n", b"\r", b"\t", b"\b", b"\f", b"\v", delimiter)):
        return value
    out = bytearray()
    sep = delimiter[0]
    for byte in value:
        escaped = _TEXT_ESCAPES.get(byte)
        if escaped is not None:
            out += escaped
        elif byte == sep:
            out += b"\\" + bytes([byte])
        else:
            out.append(byte)
    return bytes(out)


def _csv_decode(field: bytes, null: bytes, quote: bytes, escape: bytes | None = None) -> bytes | None:
    """A CSV field as PostgreSQL writes it: quoted sections hold escaped quote/escape characters;
    only an unquoted field equal to the NULL string is NULL."""
    if quote not in field:
        return None if field == null else field
    escape = quote if escape is None else escape
    q, e = quote[0], escape[0]
    out = bytearray()
    i, n = 0, len(field)
    in_quotes = False
    while i < n:
        byte = field[i]
        if in_quotes:
            if byte == e and i + 1 < n and field[i + 1] in (q, e) and (e != q or field[i + 1] == q):
                out.append(field[i + 1])
                i += 2
                continue
            if byte == q:
                in_quotes = False
            else:
                out.append(byte)
        elif byte == q:
            in_quotes = True
        else:
            out.append(byte)
        i += 1
    if in_quotes:
        raise MalformedRow("COPY CSV field ends inside quotes")
    return bytes(out)


def _csv_encode(value: bytes | None, null: bytes, delimiter: bytes, quote: bytes, escape: bytes | None = None) -> bytes:
    if value is None:
        return null
    escape = quote if escape is None else escape
    if value == null or any(b in value for b in (delimiter, quote, escape, b"\n", b"\r")) or value[:1].isspace():
        body = bytearray()
        for byte in value:
            if byte == quote[0] or byte == escape[0]:
                body += escape
            body.append(byte)
        return quote + bytes(body) + quote
    return value


_BINARY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")


class BinaryCopyPlan:
    """Masks ``COPY ... TO STDOUT (FORMAT binary)``: a header, then tuples of (int16 field count,
    per field int32 length or -1 and the value in binary format), then an int16 -1 trailer.

    Tuples need not line up with CopyData messages (PostgreSQL sends the header with the
    first tuple), so bytes are buffered until a tuple is complete; each complete tuple is
    masked and passed on. Values are masked by the same binary-format maskers as DataRows.
    """

    __slots__ = ("_maskers", "_columns", "_buf", "_header_done", "_finished")

    def __init__(self, maskers: dict[int, ValueMasker], column_count: int):
        self._maskers = maskers
        self._columns = column_count
        self._buf = bytearray()
        self._header_done = False
        self._finished = False

    def mask_data(self, data: bytes) -> bytes:
        if self._finished:
            raise MalformedRow("COPY binary data after its trailer")
        self._buf += data
        buf = self._buf
        out = []
        pos = 0
        if not self._header_done:
            if len(buf) < 19:
                return b""
            if bytes(buf[:11]) != _BINARY_SIGNATURE:
                raise MalformedRow("COPY binary data does not start with the PGCOPY signature")
            (extension,) = _I32.unpack_from(buf, 15)
            if extension < 0:
                raise MalformedRow("COPY binary header has a negative extension length")
            if len(buf) < 19 + extension:
                return b""
            pos = 19 + extension
            out.append(bytes(buf[:pos]))
            self._header_done = True
        while len(buf) - pos >= 2:
            (count,) = _I16.unpack_from(buf, pos)
            if count == -1:
                if len(buf) != pos + 2:
                    raise MalformedRow("COPY binary data continues after its trailer")
                out.append(b"\xff\xff")
                pos += 2
                self._finished = True
                break
            if count != self._columns:
                raise MalformedRow(f"COPY binary tuple has {count} fields, the copy has {self._columns} columns")
            tuple_out = self._mask_tuple(buf, pos + 2, count)
            if tuple_out is None:
                break  # incomplete: wait for more bytes
            end, masked = tuple_out
            out.append(masked if masked is not None else bytes(buf[pos:end]))
            pos = end
        del buf[:pos]
        return b"".join(out)

    def _mask_tuple(self, buf: bytearray, pos: int, count: int):
        start = pos - 2
        values: list = []
        changed = False
        size = len(buf)
        for index in range(count):
            if size - pos < 4:
                return None
            (length,) = _I32.unpack_from(buf, pos)
            pos += 4
            if length == -1:
                values.append(None)
                continue
            if length < -1:
                raise MalformedRow(f"COPY binary field {index} has invalid length {length}")
            if size - pos < length:
                return None
            value = bytes(buf[pos : pos + length])
            pos += length
            masker = self._maskers.get(index)
            if masker is not None:
                masked = masker(value)
                changed |= masked is not value
                value = masked
            values.append(value)
        if not changed:
            return pos, None
        parts = [_I16.pack(count)]
        for value in values:
            parts.append(b"\xff\xff\xff\xff" if value is None else _I32.pack(len(value)) + value)
        return pos, b"".join(parts)

    def finish(self) -> None:
        """At CopyDone: a tuple or header left half-sent is a broken stream, not data to drop."""
        if self._buf:
            raise MalformedRow("COPY binary data ended inside a tuple")

