"""CopyPlan: masks the rows of COPY ... TO STDOUT in text or CSV format.

PostgreSQL sends one row per CopyData message, terminator included, so a
"line" here is one CopyData payload: a CSV field with an embedded newline stays
inside its line. Fields are decoded to the text form of their value, masked by
the same text-format maskers a DataRow would use, and encoded back; fields no
masker looks at are carried over byte for byte.
"""
from __future__ import annotations

import re
from jitgate.masking.columns import ValueMasker
from jitgate.masking.errors import MalformedRow

_TEXT_UNESCAPES = {ord("b"): 8, ord("f"): 12, ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("v"): 11}
_TEXT_ESCAPES = {8: b"\\b", 12: b"\\f", 10: b"\\n", 13: b"\\r", 9: b"\\t", 11: b"\\v", 92: b"\\\\"}
_OCTAL = re.compile(rb"[0-7]{1,3}")
_HEX = re.compile(rb"x([0-9A-Fa-f]{1,2})")


class CopyPlan:
    """How to mask each row of one COPY TO STDOUT (see ``Masker.plan_copy``)."""

    __slots__ = ("_maskers", "_every_field", "_csv", "_delimiter", "_null", "_skip_header", "_quote")

    def __init__(
        self,
        maskers: dict[int, ValueMasker],
        every_field: ValueMasker | None,
        *,
        csv: bool,
        delimiter: bytes,
        null: bytes,
        header: bool,
    ):
        self._maskers = maskers  # by field index
        self._every_field = every_field  # used where no column is known (detectors only)
        self._csv = csv
        self._delimiter = delimiter
        self._null = null
        self._skip_header = header
        self._quote = b'"'

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
            return _csv_decode(field, self._null, self._quote)
        if field == self._null:
            return None
        return _text_unescape(field) if b"\\" in field else field

    def _encode(self, value: bytes | None) -> bytes:
        if self._csv:
            return _csv_encode(value, self._null, self._delimiter, self._quote)
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
        start = 0
        in_quotes = False
        while i < n:
            byte = body[i]
            if in_quotes:
                if byte == quote:
                    if i + 1 < n and body[i + 1] == quote:
                        i += 1  # a doubled quote is a literal quote
                    else:
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


def _csv_decode(field: bytes, null: bytes, quote: bytes) -> bytes | None:
    if field.startswith(quote) and field.endswith(quote) and len(field) >= 2:
        return field[1:-1].replace(quote + quote, quote)
    if field == null:
        return None  # only an unquoted field equal to the NULL string is NULL
    return field


def _csv_encode(value: bytes | None, null: bytes, delimiter: bytes, quote: bytes) -> bytes:
    if value is None:
        return null
    if value == null or any(b in value for b in (delimiter, quote, b"\n", b"\r")) or value[:1].isspace():
        return quote + value.replace(quote, quote + quote) + quote
    return value
