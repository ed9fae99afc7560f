"""Content detectors: where, inside a piece of text, a sensitive value sits.

Each detector returns spans ``(start, end, kind)``; it never rewrites text
(that is ``scanner.py``'s job). Detectors prefer precision to recall where the
brief says so (phone numbers), and validate checksums where one exists (Luhn for
cards, mod-97 for IBANs), because a masker that eats order ids and timestamps
makes results useless and teaches people to switch masking off.

All digit classes are ``[0-9]``, never ``\\d``, and every pattern is ASCII:
``Prefilter`` (below) stays a cheap, provably wider check over raw bytes, and
the compiled core can mirror the patterns byte for byte. Other scripts' digits,
full-width forms, invisible characters between digits and Unicode spaces and
dashes are not ignored, they are folded: ``find_all`` runs the detectors on the
folded view of a text that is not plain ASCII (``fold.py``: ``４１１１`` and
``٤١١١`` read ``4111``, ZWSP and combining marks are dropped, NBSP reads ' ',
an en dash '-', ``＠`` '@') and maps each detection back to the original
characters, so a card in full-width digits is masked whole. ``Prefilter``
checks the bytes of that same folded view. ASCII text is never folded.

What each detector matches (and deliberately does not):

- email: ``local@domain.tld`` with a local part of at most 64 characters (the
  RFC limit, and a bound on regex work) and a TLD of 2+ letters.
- card: 13-19 digits, single spaces or dashes allowed between digits, first
  digit 2-6 (Mastercard 2-series, Amex, Visa, Mastercard, Discover/UnionPay),
  Luhn-valid. A run glued to letters, a dash or a dot (``ORD-4111...``,
  ``v4111...``) is an identifier, not a card. Unseparated runs that read as a
  timestamp (``20240115103000123``) are skipped. Where a run of digit groups is
  longer than a card (``2024 4111 1111 1111 1111``) every group-aligned window
  of 13-19 digits is tried, longest first.
- iban: two capital letters, two check digits, then exactly the length that
  country's IBAN has (table below), optionally grouped by single spaces; mod-97
  must equal 1.
- ssn: ``###-##-####`` only (no undashed form: a bare 9-digit number is far more
  often something else); area 000, 666 and 900-999, group 00 and serial 0000 are
  never issued and are not matched.
- phone: three shapes only, each with separators or a ``+``:
  international (``+`` then 8-15 digits in groups: ``+44 20 7946 0958``,
  ``+14155550100``), North American (``(415) 555-0100``, ``415.555.0100``,
  ``1-415-555-0100``; area and exchange start with 2-9), and national numbers
  with a trunk ``0`` and one consistent separator (``020 7946 0958``,
  ``01 23 45 67 89``; 10-12 digits). Plain digit runs (``4155550100``), dates,
  times, versions, IP addresses and anything glued to a word, ``-``, ``.`` or
  ``/`` are not phone numbers here. This misses unseparated national numbers on
  purpose.
- secret: PEM private key blocks (RSA, EC, DSA, OPENSSH, ENCRYPTED, PGP ...;
  a block whose END line is missing, e.g. a truncated log line, is masked up to
  where its base64 body stops), JWTs (``eyJ...`` header, payload and signature
  segments of base64url), Google service-account keys (the values of
  ``"private_key"`` and ``"private_key_id"``, also when the JSON is itself
  escaped inside a string), AWS access key ids (``AKIA``/``ASIA`` + 16), Slack
  tokens (``xoxb-``, ``xoxa-``, ``xoxp-``, ``xoxr-``, ``xoxs-``).
"""
from __future__ import annotations

import bisect
import re
from typing import Callable, Iterable

from jitgate.masking import fold

# jitgate/masking/_rowcore.c finds emails, cards, SSNs and phone numbers in ASCII values the
# way this module does, span for span: a change here needs the same change there
# (tests/masking/test_rowcore.py compares them on random and hostile text).
DETECTOR_KINDS = ("secret", "email", "iban", "card", "ssn", "phone")
# When two detections overlap, the union is masked as one span and named after
# its longest member; on a tie this order decides (most damaging leak first).
_PRIORITY = {kind: rank for rank, kind in enumerate(DETECTOR_KINDS)}

Span = tuple[int, int, str]

# --- email ---------------------------------------------------------------------------

_EMAIL_LOCAL_REVERSED = re.compile(r"[\w.%+-]{1,64}")
_EMAIL_DOMAIN = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
    r"\.[A-Za-z]{2,24}(?![A-Za-z0-9-])"
)
EMAIL_FULL = re.compile(r"[\w.%+-]{1,64}@" + _EMAIL_DOMAIN.pattern.replace("(?![A-Za-z0-9-])", "") + r"\Z")


def find_emails(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    """Anchored on each '@': the local part is read backwards (at most 64 characters, the RFC
    limit, so a long run of word characters costs no more than that), the domain forwards.
    An over-long local part still has its last 64 characters masked."""
    found: list[Span] = []
    end = len(text) if end is None else end
    at = text.find("@", start, end)
    while at >= 0:
        window = text[max(0, at - 64) : at][::-1]
        local = _EMAIL_LOCAL_REVERSED.match(window)
        # A domain name has at most 253 characters; the bound keeps a long run of
        # dotted labels after many '@' from costing more than that per '@'.
        domain = _EMAIL_DOMAIN.match(text, at + 1, min(end, at + 1 + 256)) if local else None
        if domain:
            found.append((at - local.end(), domain.end(), "email"))
            at = text.find("@", domain.end(), end)
        else:
            at = text.find("@", at + 1, end)
    return found


# --- payment cards -------------------------------------------------------------------

# Maximal runs of digit groups (single space or dash between groups). No look-around
# here: a regex that backtracks over group boundaries is quadratic on a long run of
# "1 1 1 1 ...", so boundaries are checked in Python, once per run.
_DIGIT_RUN = re.compile(r"[0-9]+(?:[ -][0-9]+)*")
_GROUP = re.compile(r"[0-9]+")
_TIMESTAMP_DIGITS = re.compile(r"(?:19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _is_card_number(digits: str, separated: bool) -> bool:
    if not 13 <= len(digits) <= 19 or digits[0] not in "23456":
        return False
    if not separated and _TIMESTAMP_DIGITS.match(digits):
        return False
    return luhn_valid(digits)


def find_cards(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    found: list[Span] = []
    end = len(text) if end is None else end
    for run in _DIGIT_RUN.finditer(text, start, end):
        if run.end() - run.start() < 13:
            continue
        groups = [g.span() for g in _GROUP.finditer(text, run.start(), run.end())]
        # A group glued to a word, a dash or a dot ("ORD-4111...", "v4111...", "...1111x",
        # "...1111.50") belongs to an identifier or an amount, not to a card.
        first = groups[0][0]
        if first > 0 and (text[first - 1].isalnum() or text[first - 1] in "_.-"):
            groups.pop(0)
        if groups:
            last = groups[-1][1]
            after = text[last : last + 2]
            if after[:1].isalnum() or after[:1] == "_" or (len(after) == 2 and after[0] in ".,-" and after[1].isdigit()):
                groups.pop()
        found.extend(_cards_in_groups(text, groups))
    return found


def _cards_in_groups(text: str, groups: list[tuple[int, int]]) -> list[Span]:
    """Group-aligned windows of 13-19 digits that pass Luhn, longest first, left to right."""
    found: list[Span] = []
    parts = [text[s:e] for s, e in groups]
    i = 0
    while i < len(groups):
        best = None
        digits = ""
        for j in range(i, len(groups)):
            digits += parts[j]
            if len(digits) > 19:
                break
            if len(digits) >= 13 and _is_card_number(digits, separated=j > i):
                best = j  # keep looking: a longer window wins
        if best is not None:
            found.append((groups[i][0], groups[best][1], "card"))
            i = best + 1
        else:
            i += 1
    return found


# --- IBAN ----------------------------------------------------------------------------

# Total IBAN length per country (SWIFT IBAN registry). Knowing the exact length
# both raises precision and tells where an IBAN ends when text follows it.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25,
    "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18,
    "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33,
    "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}
_IBAN_START = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2})[0-9]{2}")


def iban_valid(iban: str) -> bool:
    rearranged = iban[4:] + iban[:4]
    try:
        number = int("".join(str(int(ch, 36)) for ch in rearranged))
    except ValueError:
        return False
    return number % 97 == 1


def find_ibans(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    found: list[Span] = []
    n = len(text) if end is None else end
    for m in _IBAN_START.finditer(text, start, len(text) if end is None else end):
        length = IBAN_LENGTHS.get(m.group(1))
        if length is None:
            continue
        chars = [text[m.start() : m.end()]]
        have = 4
        i = m.end()
        # Collect exactly `length` characters, allowing one space between any two.
        while have < length and i < n:
            ch = text[i]
            if ch == " " and i + 1 < n and text[i + 1] != " ":
                i += 1
                continue
            if not ("A" <= ch <= "Z" or "0" <= ch <= "9"):
                break
            chars.append(ch)
            have += 1
            i += 1
        if have != length or (i < n and text[i].isalnum()):
            continue
        if iban_valid("".join(chars)):
            found.append((m.start(), i, "iban"))
    return found


# --- US SSN --------------------------------------------------------------------------

_SSN = re.compile(r"(?<![\w-])(?!000|666|9)[0-9]{3}-(?!00)[0-9]{2}-(?!0000)[0-9]{4}(?![\w-]|\.[0-9])")


def find_ssns(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    return [(m.start(), m.end(), "ssn") for m in _SSN.finditer(text, start, len(text) if end is None else end)]


# --- phone numbers -------------------------------------------------------------------

_PHONE = re.compile(
    r"(?<![\w+./-])(?:"
    r"(?P<intl>\+[0-9]{1,3}(?:[ .-]?(?:\([0-9]{1,4}\)|[0-9]{1,5})){1,6})"
    r"|(?P<nanp>(?:1[ .-])?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])[2-9][0-9]{2}[ .-][0-9]{4})"
    r"|(?P<trunk>0[0-9]{1,4}(?P<sep>[ .-])[0-9]{2,4}(?:(?P=sep)[0-9]{2,4}){1,3})"
    r")(?![\w]|[.,:/-][0-9])"
)
_DIGIT = re.compile(r"[0-9]")


def find_phones(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    found: list[Span] = []
    for m in _PHONE.finditer(text, start, len(text) if end is None else end):
        digits = len(_DIGIT.findall(m.group()))
        if m.group("intl") is not None:
            ok = 8 <= digits <= 15
        elif m.group("nanp") is not None:
            ok = True
        else:
            ok = 10 <= digits <= 12
        if ok:
            found.append((m.start(), m.end(), "phone"))
    return found


# --- secrets -------------------------------------------------------------------------

# A PEM private key, up to its END line, or (truncated) as far as its body goes. BEGIN and
# END lines are found in one pass each and paired in Python (``_find_pem_keys``): a lazy
# ".{0,16384}?-----END" rescanned up to 16 KB after every repeated BEGIN line.
_PEM_BEGIN = re.compile(r"-----BEGIN (?P<pem>(?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----")
_PEM_END = re.compile(r"-----END (?P<pem>(?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----")
_PEM_BODY = re.compile(r"[A-Za-z0-9+/=\s\\:,-]*")
# A 4096-bit RSA key is about 3.3 KB: an END line further than this from its BEGIN does not close it.
PEM_MAX_BODY = 16384
_SECRET = re.compile(
    r"(?<![\w-])eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*"
    r"|(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])"
    r"|(?<![\w-])xox[baprs]-[A-Za-z0-9-]{10,}"
    # Service-account key fields, also inside JSON that is escaped into a string.
    r'|"private_key(?:_id)?\\?"\s*:\s*\\?"(?P<gcp>(?:[^"\\]|\\[^"])+)'
)


def _find_pem_keys(text: str, start: int, end: int) -> list[Span]:
    ends: dict[str, list[tuple[int, int]]] = {}
    for m in _PEM_END.finditer(text, start, end):
        ends.setdefault(m.group("pem"), []).append(m.span())
    found: list[Span] = []
    covered = start  # BEGIN lines inside an earlier key are part of it
    for m in _PEM_BEGIN.finditer(text, start, end):
        if m.start() < covered:
            continue
        candidates = ends.get(m.group("pem"), ())
        k = bisect.bisect_left(candidates, (m.end(), -1))
        if k < len(candidates) and candidates[k][0] - m.end() <= PEM_MAX_BODY:
            stop = candidates[k][1]
        else:
            stop = _PEM_BODY.match(text, m.end(), end).end()
        found.append((m.start(), stop, "secret"))
        covered = stop
    return found


def find_secrets(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    end = len(text) if end is None else end
    found: list[Span] = _find_pem_keys(text, start, end) if "-----BEGIN " in text else []
    for m in _SECRET.finditer(text, start, end):
        if m.group("gcp") is not None:
            found.append((*m.span("gcp"), "secret"))
        else:
            found.append((m.start(), m.end(), "secret"))
    return found


FINDERS: dict[str, Callable[[str, int, int | None], list[Span]]] = {
    "email": find_emails,
    "card": find_cards,
    "iban": find_ibans,
    "ssn": find_ssns,
    "phone": find_phones,
    "secret": find_secrets,
}
NUMERIC_KINDS = frozenset({"card", "ssn", "phone"})

# --- prefilter -------------------------------------------------------------------------
#
# Python's regex engine costs about as much per character whether or not it finds
# anything, and most values hold nothing to mask, so each value first goes through
# checks that run at C speed over its raw bytes. Each check is a necessary
# condition of a family of detectors (tests/masking/test_detectors.py checks that):
#
# - email: an '@';
# - card, ssn, phone: a run of at least 9 characters from "0-9 ().+-" (a card has
#   13+ digits, an SSN is 11 characters, the shortest phone "+" and 8 digits);
#   ``bytes.translate`` maps those characters to '9' so one substring search finds it;
# - iban: two capitals followed by two digits (their own translation table, below);
# - secret: one of its literal openings.

_PREFILTER_TABLE = bytes.maketrans(b"0123456789 ().+-", b"9" * 16)
_NUMERIC_RUN = b"9" * 9
# An IBAN starts with two capitals and two digits, side by side (see _IBAN_START): a table
# that keeps only that shape ("ORD-1234" does not pass, "GB82" does).
_IBAN_TABLE = bytes(57 if 48 <= i <= 57 else 65 if 65 <= i <= 90 else 46 for i in range(256))
_SECRET_OPENINGS = re.compile(rb"-----BEGIN |eyJ|A[KS]IA|xox|private_key")  # one search beats six `in` tests
# The numeric clusters that the card, SSN and phone detectors then look inside.
_NUMERIC_CLUSTER = re.compile(r"[0-9(+][0-9 ().+-]{8,}")


class Prefilter:
    """Which detector families could match in a value, from cheap checks on its bytes."""

    __slots__ = ("email", "numeric", "iban", "secret")

    def __init__(self, kinds: Iterable[str]):
        kinds = set(kinds)
        self.email = "email" in kinds
        self.numeric = bool(kinds & NUMERIC_KINDS)
        self.iban = "iban" in kinds
        self.secret = "secret" in kinds

    def families(self, raw: bytes) -> tuple[bool, bool, bool, bool] | None:
        """(email, numeric, iban, secret) worth running, or None when no detector can match.

        The checks run on the bytes of the text the detectors will read: for a value with a
        character that folds (``fold.py``), its folded view (UTF-8, surrogateescape). So the
        proof stays the ASCII one: each check is a necessary condition of its detectors on
        whatever text they run over, and they run over exactly this one."""
        if not raw.isascii():
            text = raw.decode("utf-8", "surrogateescape")
            folded = fold.fold(text)
            if folded is not None:
                raw = folded.text.encode("utf-8", "surrogateescape")
                if folded.right_to_left:  # find_all reads it reversed too: so does the check
                    raw += b"\n" + folded.text[::-1].encode("utf-8", "surrogateescape")
        email = self.email and b"@" in raw
        numeric = self.numeric and _NUMERIC_RUN in raw.translate(_PREFILTER_TABLE)
        iban = self.iban and b"AA99" in raw.translate(_IBAN_TABLE)
        secret = self.secret and _SECRET_OPENINGS.search(raw) is not None
        if email or numeric or iban or secret:
            return email, numeric, iban, secret
        return None


def find_all(text: str, kinds: Iterable[str], families: tuple[bool, bool, bool, bool] | None = None) -> list[Span]:
    """Every detection of these kinds in the folded view of the text (``fold.py``), as spans of
    the text itself, overlaps merged, sorted by position.

    ``families`` (from ``Prefilter.families``, which checks the same folded view) skips the
    families that cannot match.
    """
    if not isinstance(kinds, frozenset):
        kinds = frozenset(kinds)
    if not text.isascii():
        folded = fold.fold(text)
        if folded is not None:
            spans = _find_all(folded.text, kinds, families)
            if folded.right_to_left:  # displayed in reverse order after the override: read it so too
                size = len(folded.text)
                spans += [(size - end, size - start, kind)
                          for start, end, kind in _find_all(folded.text[::-1], kinds, families)]
            return merge_overlaps(folded.original_spans(spans))
    return _find_all(text, kinds, families)


def _find_all(text: str, kinds: frozenset[str], families: tuple[bool, bool, bool, bool] | None) -> list[Span]:
    email, numeric, iban, secret = families if families is not None else (True, True, True, True)
    spans: list[Span] = []
    if email and "email" in kinds:
        spans.extend(find_emails(text))
    if numeric and kinds & NUMERIC_KINDS:
        size = len(text)
        for cluster in _NUMERIC_CLUSTER.finditer(text):
            # Detectors run inside the cluster; two characters past it let their
            # look-aheads see what follows, their look-behinds see the whole text.
            start, end = cluster.start(), min(size, cluster.end() + 2)
            found = cluster.group()
            digits = len(_DIGIT.findall(found))
            if digits >= 13 and "card" in kinds:
                spans.extend(find_cards(text, start, end))
            if digits >= 9 and "-" in found and "ssn" in kinds:  # ###-##-####
                spans.extend(find_ssns(text, start, end))
            if digits >= 8 and "phone" in kinds:
                spans.extend(find_phones(text, start, end))
    if iban and "iban" in kinds:
        spans.extend(find_ibans(text))
    if secret and "secret" in kinds:
        spans.extend(find_secrets(text))
    return merge_overlaps(spans)


def merge_overlaps(spans: list[Span]) -> list[Span]:
    """Overlapping detections become one span, so no part of either is left in clear."""
    if len(spans) < 2:
        return spans
    spans.sort(key=lambda s: (s[0], -s[1]))
    merged: list[Span] = []
    start, end, kind = spans[0]
    best_len = end - start
    for s, e, k in spans[1:]:
        if s < end:
            if e - s > best_len or (e - s == best_len and _PRIORITY[k] < _PRIORITY[kind]):
                kind, best_len = k, e - s
            end = max(end, e)
        else:
            merged.append((start, end, kind))
            start, end, kind, best_len = s, e, k, e - s
    merged.append((start, end, kind))
    return merged
