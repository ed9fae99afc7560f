"""Per-column value maskers: ``bytes -> bytes | None`` for one column, one type, one format.

A masker receives a column's non-NULL wire value and returns the masked wire
value, ``None`` for SQL NULL, or the *same object* when nothing changed (callers
test ``is`` to keep the untouched bytes). Every type decision happens here, once
per RowDescription, so ``RowPlan.mask_row`` only calls closures.
"""
from __future__ import annotations

from typing import Callable

from jitgate.masking import pgtypes
from jitgate.masking.errors import MaskingRefused
from jitgate.masking.pgtypes import Category
from jitgate.masking.scanner import Scanner
from jitgate.masking.strategies import COLUMN_MARKER, Hasher, partial_text

ValueMasker = Callable[[bytes], "bytes | None"]

_SQL_NULL: ValueMasker = lambda raw: None  # noqa: E731 - the null strategy, shared
_JSONB_VERSION = b"\x01"
# Below this width a hash token drops its "h:" prefix: 6 hex digits beat "h:" + 4.
_MIN_PREFIXED_TOKEN = 8


def _text_fitter(type_oid: int, type_modifier: int) -> Callable[[str, str], str] | None:
    """Makes a masked string a valid value of a length-limited type (None: any length is fine)."""
    if type_oid == pgtypes.BPCHAR_OID:
        # char(n) values arrive padded to n characters; keep exactly the original length.
        return lambda masked, original: masked[: len(original)].ljust(len(original))
    if type_oid == pgtypes.VARCHAR_OID:
        limit = pgtypes.varchar_limit(type_modifier)
        if limit is not None:
            return lambda masked, original: masked[:limit]
    if type_oid == pgtypes.NAME_OID:
        return lambda masked, original: masked.encode("utf-8", "surrogateescape")[: pgtypes.NAME_MAX_BYTES].decode(
            "utf-8", "ignore"
        )
    return None


def _text_width(type_oid: int, type_modifier: int, original: str) -> int | None:
    if type_oid == pgtypes.BPCHAR_OID:
        return len(original)
    if type_oid == pgtypes.VARCHAR_OID:
        return pgtypes.varchar_limit(type_modifier)
    return None


def whole_value_masker(
    type_oid: int, type_modifier: int, binary: bool, strategy: str, keep_last: int, hasher: Hasher
) -> ValueMasker:
    """The masker of a column matched by a column rule: the whole value is replaced."""
    if strategy == "null":
        return _SQL_NULL
    category = pgtypes.categorize(type_oid)
    if category is Category.TEXT or (category is Category.USER_DEFINED and not binary):
        return _whole_text(type_oid, type_modifier, strategy, keep_last, hasher)
    if category in (Category.JSON, Category.JSONB):
        return _whole_json(binary and category is Category.JSONB, strategy, hasher)
    if strategy != "hash":
        return _SQL_NULL  # a marker or a partial value is not a valid int, uuid, date...
    if category is Category.INTEGER:
        width = pgtypes.INTEGER_WIDTHS[type_oid]

        def mask_integer(raw: bytes) -> bytes:
            digest = hasher.digest(pgtypes.integer_canonical(raw, binary))
            return pgtypes.integer_encode(pgtypes.integer_from_digest(digest, width), width, binary)

        return mask_integer
    if category is Category.UUID:
        return lambda raw: pgtypes.uuid_from_digest(hasher.digest(pgtypes.uuid_canonical(raw, binary)), binary)
    if category is Category.NUMERIC:

        def mask_numeric(raw: bytes) -> bytes:
            canonical = pgtypes.numeric_binary_to_text(raw) if binary else raw
            return pgtypes.numeric_from_digest(hasher.digest(canonical), type_modifier, binary)

        return mask_numeric
    if category is Category.BYTEA:
        return lambda raw: pgtypes.bytea_encode(hasher.digest(pgtypes.bytea_canonical(raw, binary)), binary)
    return _SQL_NULL  # dates, times, floats, arrays, binary user-defined types...


def _whole_text(type_oid: int, type_modifier: int, strategy: str, keep_last: int, hasher: Hasher) -> ValueMasker:
    fit = _text_fitter(type_oid, type_modifier)
    is_bpchar = type_oid == pgtypes.BPCHAR_OID
    if strategy == "partial" and type_oid == pgtypes.XML_OID:
        strategy = "redact"  # a cut XML document is not XML

    if strategy == "hash" and fit is None and _text_width(type_oid, type_modifier, "") is None:
        # Unlimited text (text, unlimited varchar, citext...): the token of the raw bytes, with
        # no decode/encode round trip (it would give back the same bytes).
        token = hasher.token

        def hash_text_value(raw: bytes) -> bytes:
            return token(raw).encode()

        hash_text_value.compiled = ("hash_text", hasher)  # rows.py: the compiled core does this one itself
        return hash_text_value

    def mask_text_value(raw: bytes) -> bytes:
        original = raw.decode("utf-8", "surrogateescape")
        # Trailing blanks of char(n) are padding, not data: 'ab  ' and 'ab' are the same value.
        core = original.rstrip(" ") if is_bpchar else original
        if strategy == "hash":
            masked = hasher.token(core.encode("utf-8", "surrogateescape"))
            width = _text_width(type_oid, type_modifier, original)
            if width is not None and width < len(masked):
                masked = (masked if width >= _MIN_PREFIXED_TOKEN else masked[2:])[:width]
        elif strategy == "partial":
            masked = partial_text(core, keep_last)
        else:
            masked = COLUMN_MARKER
        if fit is not None:
            masked = fit(masked, original)
        return masked.encode("utf-8", "surrogateescape")

    return mask_text_value


def _whole_json(jsonb_binary: bool, strategy: str, hasher: Hasher) -> ValueMasker:
    prefix = _JSONB_VERSION if jsonb_binary else b""
    if strategy != "hash":
        # partial of a JSON document would not be JSON; it is redacted as a JSON string.
        constant = prefix + b'"' + COLUMN_MARKER.encode() + b'"'
        return lambda raw: constant

    def mask_json_value(raw: bytes) -> bytes:
        body = raw[1:] if jsonb_binary else raw
        return prefix + b'"' + hasher.token(body).encode() + b'"'

    return mask_json_value


# Detectors scan a value up to this size; a larger one is redacted whole (valid for its type)
# instead: scanning costs linear time, and one field must not hold the broker for long.
MAX_SCANNED_VALUE = 1 << 20


def detector_masker(type_oid: int, type_modifier: int, binary: bool, scanner: Scanner) -> ValueMasker | None:
    """The masker of a column scanned by detectors; None when the type never holds free text."""
    category = pgtypes.categorize(type_oid)
    if category is Category.TEXT or (category in (Category.USER_DEFINED, Category.TEXT_ARRAY) and not binary):
        scan = _detect_in_text(type_oid, type_modifier, scanner)
    elif category in (Category.JSON, Category.JSONB):
        scan = _detect_in_json(binary and category is Category.JSONB, scanner)
    elif category in (Category.USER_DEFINED, Category.TEXT_ARRAY):
        scan = _detect_in_opaque(scanner)
    else:
        return None
    too_large = whole_value_masker(type_oid, type_modifier, binary, "redact", 0, scanner.hasher)

    def scan_or_redact(raw: bytes) -> bytes | None:
        return scan(raw) if len(raw) <= MAX_SCANNED_VALUE else too_large(raw)

    if getattr(scan, "plain_text", False):
        # rows.py: the compiled core runs the prefilter and the email, card, SSN and phone
        # detectors itself, and hands every value it does not settle (an IBAN or secret
        # candidate; at most MAX_SCANNED_VALUE bytes) to ``scan`` with the families it found.
        scan_or_redact.compiled = ("detect_text", scanner, scan)
    return scan_or_redact


def _detect_in_text(type_oid: int, type_modifier: int, scanner: Scanner) -> ValueMasker:
    prefilter = scanner.prefilter.families
    scan = scanner.mask
    fit = _text_fitter(type_oid, type_modifier)

    def mask_free_text(raw: bytes, families: tuple[bool, bool, bool, bool] | None = None) -> bytes | None:
        """``families``: the prefilter's answer when the caller has it (the compiled row core)."""
        if families is None:
            families = prefilter(raw)
            if families is None:
                return raw
        # surrogateescape: bytes that are not UTF-8 survive unchanged around the masks.
        text = raw.decode("utf-8", "surrogateescape")
        masked = scan(text, families)
        if masked is text:
            return raw
        if masked is None:
            return None
        if fit is not None:
            masked = fit(masked, text)
        return masked.encode("utf-8", "surrogateescape")

    mask_free_text.plain_text = fit is None  # no length limit to fit: bytes in, bytes out
    return mask_free_text


def _detect_in_json(jsonb_binary: bool, scanner: Scanner) -> ValueMasker:
    prefilter = scanner.prefilter.families

    def mask_json_document(raw: bytes) -> bytes | None:
        if jsonb_binary:
            if raw[:1] != _JSONB_VERSION:
                return None  # a jsonb format we do not know: fail closed rather than pass it
            body = raw[1:]
        else:
            body = raw
        families = prefilter(body)
        # A \u escape can spell any character, so the byte prefilter cannot be trusted then.
        if families is None:
            if b"\\u" not in body:
                return raw
            families = (True, True, True, True)
        text = body.decode("utf-8", "surrogateescape")
        masked = scanner.mask_json(text, families)
        if masked is text:
            return raw
        if masked is None:
            return None
        encoded = masked.encode("utf-8", "surrogateescape")
        return _JSONB_VERSION + encoded if jsonb_binary else encoded

    return mask_json_document


def _detect_in_opaque(scanner: Scanner) -> ValueMasker:
    """Binary forms we cannot rewrite (arrays, extension types): NULL when anything is found."""
    prefilter = scanner.prefilter.families

    def mask_opaque(raw: bytes) -> bytes | None:
        if prefilter(raw) is None:
            return raw
        return None if scanner.finds_any(raw.decode("utf-8", "surrogateescape")) else raw

    return mask_opaque


def check_format(format_code: int, column: str) -> bool:
    """True for binary. Formats other than text (0) and binary (1) do not exist in protocol 3."""
    if format_code not in (0, 1):
        raise MaskingRefused(
            f"column {column!r} uses result format {format_code}, which PostgreSQL does not define; "
            "the gateway cannot mask it. Ask for text (0) or binary (1) results."
        )
    return format_code == 1
