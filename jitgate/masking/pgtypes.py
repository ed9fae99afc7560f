"""PostgreSQL type knowledge the masker needs: which OIDs hold text, widths, and the
text/binary encodings of the few non-text types a hash can stand in for.

OIDs are PostgreSQL's fixed built-in ones (``pg_type.dat``). A type created by a
user or an extension (citext, enums, composites) has an OID of at least
``FIRST_NORMAL_OID``; RowDescription reports a domain as its base type, so
domains never reach us as such.
"""
from __future__ import annotations

import struct
import uuid
from enum import Enum

from jitgate.masking.errors import MalformedRow

FIRST_NORMAL_OID = 16384


class Category(Enum):
    TEXT = "text"  # text, varchar, bpchar, name, unknown, xml
    JSON = "json"
    JSONB = "jsonb"
    TEXT_ARRAY = "text_array"  # arrays whose elements hold text
    INTEGER = "integer"
    UUID = "uuid"
    NUMERIC = "numeric"
    BYTEA = "bytea"
    USER_DEFINED = "user_defined"  # citext, enums, composites...: text by format, opaque in binary
    OTHER = "other"  # every other built-in type: never holds free text


TEXT_OIDS = {25: "text", 1043: "varchar", 1042: "bpchar", 19: "name", 705: "unknown", 142: "xml"}
TEXT_ARRAY_OIDS = {1009, 1015, 1014, 1003, 199, 3807, 143}  # text[] varchar[] bpchar[] name[] json[] jsonb[] xml[]
INTEGER_WIDTHS = {21: 2, 23: 4, 20: 8}  # int2, int4, int8
JSON_OID, JSONB_OID, UUID_OID, NUMERIC_OID, BYTEA_OID = 114, 3802, 2950, 1700, 17
VARCHAR_OID, BPCHAR_OID, NAME_OID, XML_OID = 1043, 1042, 19, 142
NAME_MAX_BYTES = 63  # NAMEDATALEN - 1


# Column types that never hold free text, by the OID pg_attribute.atttypid gives (allow-list:
# any other type, a domain or a user-defined one included, may hold text). Detectors never scan
# these, so a value derived from such columns alone needs no masking (masker._derived_masker).
NEVER_FREE_TEXT_OIDS = frozenset({
    16, 20, 21, 23, 26, 28, 700, 701, 790, 1700,  # bool, int8/2/4, oid, xid, float4/8, money, numeric
    1082, 1083, 1114, 1184, 1186, 1266,  # date, time, timestamp(tz), interval, timetz
    2950, 869, 650, 829, 774, 1560, 1562, 3220, 5069,  # uuid, inet, cidr, macaddr(8), bit, varbit, pg_lsn, xid8
    1000, 1005, 1007, 1016, 1021, 1022, 1231, 1182, 1115, 1185, 2951,  # arrays of the above
})


def categorize(type_oid: int) -> Category:
    if type_oid in TEXT_OIDS:
        return Category.TEXT
    if type_oid == JSON_OID:
        return Category.JSON
    if type_oid == JSONB_OID:
        return Category.JSONB
    if type_oid in TEXT_ARRAY_OIDS:
        return Category.TEXT_ARRAY
    if type_oid in INTEGER_WIDTHS:
        return Category.INTEGER
    if type_oid == UUID_OID:
        return Category.UUID
    if type_oid == NUMERIC_OID:
        return Category.NUMERIC
    if type_oid == BYTEA_OID:
        return Category.BYTEA
    if type_oid >= FIRST_NORMAL_OID:
        return Category.USER_DEFINED
    return Category.OTHER


def varchar_limit(type_modifier: int) -> int | None:
    """varchar(n) -> n characters; None when unconstrained (the modifier counts a 4-byte header)."""
    return type_modifier - 4 if type_modifier >= 4 else None


# --- integers ------------------------------------------------------------------------


def integer_canonical(raw: bytes, binary: bool) -> bytes:
    """The decimal text of an integer value, whatever its wire format, so text and binary
    clients get the same masked number."""
    if binary:
        return str(int.from_bytes(raw, "big", signed=True)).encode()
    return raw


def integer_encode(value: int, width: int, binary: bool) -> bytes:
    return value.to_bytes(width, "big", signed=True) if binary else str(value).encode()


def integer_from_digest(digest: bytes, width: int) -> int:
    """A non-negative integer that fits intN (ids are positive; a negative id would surprise)."""
    return int.from_bytes(digest[:width], "big") & ((1 << (8 * width - 1)) - 1)


# --- uuid ----------------------------------------------------------------------------


def uuid_canonical(raw: bytes, binary: bool) -> bytes:
    if binary:
        if len(raw) != 16:
            raise MalformedRow(f"binary uuid of {len(raw)} bytes (a uuid has 16)")
        return str(uuid.UUID(bytes=bytes(raw))).encode()
    return raw.lower()


def uuid_from_digest(digest: bytes, binary: bool) -> bytes:
    # Version 4 / RFC 4122 variant bits, so the result looks like any other random uuid.
    value = uuid.UUID(bytes=digest[:16], version=4)
    return value.bytes if binary else str(value).encode()


# --- numeric -------------------------------------------------------------------------

_NUMERIC_HEADER = struct.Struct("!hhHh")  # ndigits, weight, sign, dscale
NUMERIC_POS, NUMERIC_NEG, NUMERIC_NAN, NUMERIC_PINF, NUMERIC_NINF = 0x0000, 0x4000, 0xC000, 0xD000, 0xF000
NUMERIC_UNCONSTRAINED_DIGITS = 15  # a derived value for numeric without (p,s): fits float8 exactly


def numeric_precision_scale(type_modifier: int) -> tuple[int, int] | None:
    if type_modifier < 4:
        return None
    packed = type_modifier - 4
    precision, scale = (packed >> 16) & 0xFFFF, packed & 0x7FF
    if scale & 0x400:  # PostgreSQL 15+ allows a negative scale (11-bit two's complement)
        scale -= 0x800
    return precision, scale


def numeric_binary_to_text(raw: bytes) -> bytes:
    """numeric's binary form -> its text form as PostgreSQL prints it ('-12.3400', 'NaN').

    Built from the base-10000 digit groups as strings, never through a Python int: a
    numeric may hold 131072 digits, past the interpreter's int/str conversion limit.
    """
    if len(raw) < _NUMERIC_HEADER.size:
        raise MalformedRow(f"binary numeric of {len(raw)} bytes is shorter than its 8-byte header")
    ndigits, weight, sign, dscale = _NUMERIC_HEADER.unpack_from(raw, 0)
    if sign == NUMERIC_NAN:
        return b"NaN"
    if sign == NUMERIC_PINF:
        return b"Infinity"
    if sign == NUMERIC_NINF:
        return b"-Infinity"
    if sign not in (NUMERIC_POS, NUMERIC_NEG):
        raise MalformedRow(f"binary numeric has an unknown sign 0x{sign:04x}")
    if ndigits < 0 or dscale < 0 or len(raw) != _NUMERIC_HEADER.size + 2 * ndigits:
        raise MalformedRow(f"binary numeric announces {ndigits} digit groups and scale {dscale} in {len(raw)} bytes")
    digits = struct.unpack_from(f"!{ndigits}h", raw, _NUMERIC_HEADER.size)
    if any(d < 0 or d > 9999 for d in digits):
        raise MalformedRow("binary numeric has a digit group outside 0..9999")
    groups = [f"{d:04d}" for d in digits]
    integer_groups = weight + 1  # groups before the decimal point
    if integer_groups <= 0:
        integer = "0"
        fraction = "0000" * -integer_groups + "".join(groups)
    else:
        integer = ("".join(groups[:integer_groups]) + "0000" * max(0, integer_groups - ndigits)).lstrip("0") or "0"
        fraction = "".join(groups[integer_groups:])
    fraction = fraction[:dscale].ljust(dscale, "0")
    negative = sign == NUMERIC_NEG and any(digits)
    return (("-" if negative else "") + integer + ("." + fraction if dscale > 0 else "")).encode()


def numeric_from_digest(digest: bytes, type_modifier: int, binary: bool) -> bytes:
    """A non-negative integer-valued numeric that fits numeric(p, s)."""
    shape = numeric_precision_scale(type_modifier)
    integer_digits, scale = (NUMERIC_UNCONSTRAINED_DIGITS, 0) if shape is None else (shape[0] - shape[1], shape[1])
    value = int.from_bytes(digest[:8], "big") % (10 ** max(integer_digits, 0))
    dscale = max(scale, 0)
    if not binary:
        return (str(value) + ("." + "0" * dscale if dscale else "")).encode()
    groups = []
    while value:
        value, rest = divmod(value, 10000)
        groups.append(rest)
    groups.reverse()
    weight = len(groups) - 1 if groups else 0
    while groups and groups[-1] == 0:  # PostgreSQL never sends trailing zero digit groups
        groups.pop()
    return _NUMERIC_HEADER.pack(len(groups), weight, NUMERIC_POS, dscale) + struct.pack(f"!{len(groups)}h", *groups)


# --- bytea ---------------------------------------------------------------------------


def bytea_canonical(raw: bytes, binary: bool) -> bytes:
    """The bytes a bytea holds, from its binary form or either text output format."""
    if binary:
        return raw
    if raw.startswith(b"\\x"):
        body = raw[2:]
        if not body.isascii():
            raise MalformedRow("text bytea in hex format holds non-ASCII bytes")
        try:
            return bytes.fromhex(body.decode("ascii"))
        except ValueError:
            raise MalformedRow("text bytea in hex format holds characters that are not hex digits") from None
    return _bytea_unescape(raw)


def _bytea_unescape(raw: bytes) -> bytes:
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        byte = raw[i]
        if byte == 0x5C and i + 1 < n and raw[i + 1] == 0x5C:
            out.append(0x5C)
            i += 2
        elif byte == 0x5C:
            octal = raw[i + 1 : i + 4]
            if len(octal) != 3 or any(c < 0x30 or c > 0x37 for c in octal):
                raise MalformedRow("text bytea in escape format has a backslash not followed by three octal digits")
            out.append(int(octal, 8) & 0xFF)
            i += 4
        elif byte >= 0x80:
            raise MalformedRow("text bytea in escape format holds a non-ASCII byte (PostgreSQL escapes them)")
        else:
            out.append(byte)
            i += 1
    return bytes(out)


def bytea_encode(data: bytes, binary: bool) -> bytes:
    return data if binary else b"\\x" + data.hex().encode()
