"""How a sensitive value is replaced: redact, partial, hash (null is SQL NULL, decided by callers).

Everything here works on ``str`` and knows nothing about PostgreSQL types;
``columns.py`` turns these strings into valid values of a column's type.
"""
from __future__ import annotations

import hashlib

from jitgate.masking.detectors import EMAIL_FULL
from jitgate.masking.fold import AT_SIGNS, fold_text

# A detection is replaced by a marker that names what was there, so an agent
# reading "[email]" knows an address was present without seeing it. Markers hold
# no space, quote, comma, tab or backslash: they stay valid unquoted inside array
# literals, COPY text/CSV fields and JSON strings without escaping.
DETECTION_MARKERS = {
    "email": "[email]",
    "card": "[card]",
    "iban": "[iban]",
    "ssn": "[ssn]",
    "phone": "[phone]",
    "secret": "[secret]",
}
# A whole column masked by name: we do not know what it holds, only that it is masked.
COLUMN_MARKER = "[redacted]"
HASH_PREFIX = "h:"
HASH_HEX_DIGITS = 16  # 64 bits: collisions are negligible for joins over any realistic table


class Hasher:
    """Keyed HMAC-SHA256: the same input always gives the same token, so joins and GROUP BY work.

    Without the key, a token cannot be reversed by hashing guesses (a plain
    SHA-256 of a phone number can be brute-forced in seconds).
    """

    __slots__ = ("_key", "_inner", "_outer", "_compiled")

    def __init__(self, key: bytes):
        if len(key) < 16:
            raise ValueError("the masking HMAC key must be at least 16 bytes (128 bits)")
        self._key = bytes(key)
        # HMAC-SHA256 (RFC 2104) with its two keyed states computed once: copying a hash
        # state costs a fraction of hmac.digest(), which sets OpenSSL up again on every call
        # (4.1 -> 1.9 us per value here; the output is the same, see tests/masking).
        block = (hashlib.sha256(self._key).digest() if len(self._key) > 64 else self._key).ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        self._compiled = None

    def compiled(self, module):
        """The same HMAC in the compiled row core (``module``: ``jitgate.masking._rowcore``)."""
        if self._compiled is None:
            self._compiled = module.Hmac(self._key)
        return self._compiled

    def digest(self, data: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def token(self, data: bytes) -> str:
        return HASH_PREFIX + self.digest(data)[: HASH_HEX_DIGITS // 2].hex()


def kept_count(available: int, keep_last: int) -> int:
    """partial never shows more than half of a value: a short value is never shown whole."""
    return min(keep_last, available // 2)


def partial_text(value: str, keep_last: int) -> str:
    """Whole-value partial: an email keeps its domain; anything else keeps its last characters.

    The length is preserved (one '*' per hidden character), which keeps
    fixed-width columns valid; an email's local part becomes a fixed '***' so its
    length is not revealed.
    """
    if "@" in value and EMAIL_FULL.match(value):
        return "***@" + value.rpartition("@")[2]
    keep = kept_count(len(value), keep_last)
    return "*" * (len(value) - keep) + (value[-keep:] if keep else "")


def partial_detection(kind: str, found: str, keep_last: int) -> str:
    """In-text partial: separators stay, letters and digits become '*' except the last few."""
    if kind == "secret":
        return DETECTION_MARKERS["secret"]  # no part of a credential is ever shown
    if kind == "email":
        # The domain is what follows the last at-sign, ASCII or one that folds to '@' ('＠').
        at = max(found.rfind(sign) for sign in AT_SIGNS)
        return "***@" + found[at + 1 :]
    alnum = sum(ch.isalnum() for ch in found)
    keep = kept_count(alnum, keep_last)
    hide = alnum - keep
    out = []
    for ch in found:
        if ch.isalnum() and hide > 0:
            out.append("*")
            hide -= 1
        else:
            out.append(ch)
    return "".join(out)


def normalized_detection(kind: str, found: str) -> bytes:
    """What a detection's hash is computed over: separators do not change the identity of a
    card, IBAN, SSN or phone number ('4111 1111 1111 1111' and '4111111111111111' give one token),
    and neither does its spelling: the folded view is hashed (fold.py: '４１１１' is '4111')."""
    found = fold_text(found)
    if kind in ("card", "iban", "ssn", "phone"):
        return "".join(ch for ch in found if ch.isalnum()).upper().encode()
    return found.encode("utf-8", "surrogatepass")


def render_detection(kind: str, found: str, strategy: str, keep_last: int, hasher: Hasher) -> str:
    """The replacement for one detection (the null strategy is handled by the caller)."""
    if strategy == "hash":
        return hasher.token(normalized_detection(kind, found))
    if strategy == "partial":
        return partial_detection(kind, found, keep_last)
    return DETECTION_MARKERS[kind]


def render_whole_text(value: str, strategy: str, keep_last: int, hasher: Hasher) -> str:
    """A whole text value masked by a column rule (the null strategy is handled by the caller)."""
    if strategy == "hash":
        return hasher.token(value.encode("utf-8", "surrogatepass"))
    if strategy == "partial":
        return partial_text(value, keep_last)
    return COLUMN_MARKER
