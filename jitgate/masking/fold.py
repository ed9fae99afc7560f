"""The folded view of a text: what the detectors read when a text is not plain ASCII.

A card, SSN, phone number or email stays readable, to a person and to a program, when it is
written in full-width digits (``４１１１``), another script's digits (``٤١١١``), mathematical or
circled digits, with invisible characters between its digits (ZWSP, ZWJ, soft hyphen, a
variation selector, an RTL mark), with Unicode spaces or dashes as separators (NBSP, U+3000,
en dash, non-breaking hyphen, minus sign) or with a full-width ``＠``. The detectors' patterns
are ASCII on purpose (see ``detectors.py``), so instead of widening every pattern (and the
compiled core that mirrors them) the text is folded once into the form those patterns know,
and each detection is mapped back to the characters it came from.

Folding, character by character (``fold_char``); ASCII is never changed:

- removed: format characters (Cf: ZWSP, ZWJ, ZWNJ, word joiner, soft hyphen, BOM, RTL/LTR
  marks and embeddings, tags), combining marks (Mn, Me: U+0301, keycap U+20E3, variation
  selectors) and every other default-ignorable code point (reserved ones too: a renderer shows
  them as nothing). They are invisible or sit on the character before them, so a number with
  them inside reads as the number without them;
- the Hangul fillers (default-ignorable letters that render as a blank) become ' ';
- every character with a decimal digit value (``unicodedata.decimal``: category Nd, all
  scripts, full-width, mathematical) becomes its ASCII digit;
- anything else is replaced by its NFKC compatibility form (full-width letters and
  punctuation, superscripts, circled and parenthesized numbers, ligatures, U+3000...), in which
  digits (``unicodedata.digit`` too: dingbat circled digits), spaces (Zs) and dashes (Pd, and
  the minus signs U+2212, U+2796) become ASCII ``0-9``, ' ' and '-', and marks are removed.
  A compatibility form longer than ``MAX_EXPANSION`` characters (Arabic ligatures of whole
  phrases, ``㎯``) is kept as the original character instead, so the folded text stays within
  ``MAX_EXPANSION`` characters per character and detection linear; none of those 19 forms
  holds a digit or separator of a number (a space between a ligature's words, the exponent of
  rad∕s2: tests/masking/test_fold.py lists them).

One rule looks at neighbours: a superscript or subscript digit (or an enclosed one, ``①``)
beside a digit of another form is a footnote or an exponent, not the next digit of the same
number, so a ' ' is put between them in the folded view (``4111 1111 1111 1111²`` is a card
with a footnote; ``⁴¹¹¹ ¹¹¹¹ ¹¹¹¹ ¹¹¹¹`` is a card).

Spans found in the folded text map back to whole original characters: a detection that starts
or ends inside the fold of one character (``⑴`` -> ``(1)``) covers that character, and
removed characters inside a span are masked with it (those just outside stay where they are:
they are not part of the value). ASCII text, and text whose characters fold to themselves
(accented letters, CJK), is not copied at all (``fold`` returns None): the detectors and the
compiled core take their ASCII paths at their usual speed.

Not folded (decided, not missed): look-alike characters that are neither compatibility forms
nor dashes or spaces (a middle dot ``·`` between digits, Cyrillic ``О`` for ``0``), and
Mc spacing marks. A number glued to a letter of any script (``é4111...``) stays an identifier,
as ``v4111...`` does in ASCII.

The set of characters that fold is computed from ``unicodedata`` once, by
``python -m jitgate.masking.fold`` into ``_foldtable.py``, for the Unicode version of the
Python that generated it; on another version it is recomputed at import (about a second) so
that a newer Unicode's digits are folded too. tests/masking/test_fold.py checks the stored table
against this Python's ``unicodedata``. The compiled core (``_rowcore.c``) gets the same set as a
bitmap (``bitmap``) and hands every value holding one of these characters to the Python scan.
"""
from __future__ import annotations

import bisect
import re
import sys
import unicodedata

MAX_EXPANSION = 4

# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties.txt; stable, assigned or not).
_DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)
_IGNORABLE = frozenset(chr(cp) for lo, hi in _DEFAULT_IGNORABLE for cp in range(lo, hi + 1))
# Default-ignorable letters that render as a blank: a space, not nothing ("x\u31644111..." reads
# as "x 4111...").
_BLANK_FILLERS = frozenset("\u115f\u1160\u3164\uffa0")
_REMOVED_CATEGORIES = frozenset({"Cf", "Mn", "Me"})
_MARK_CATEGORIES = frozenset({"Mn", "Me"})
RIGHT_TO_LEFT_OVERRIDE = "\u202e"
_MINUS_SIGNS = frozenset("\u2212\u2796")
_DIGITS = "0123456789"
# Forms of a digit, for the neighbour rule above.
BASE, SUPER, SUB, ENCLOSED = "base", "super", "sub", "enclosed"


def _digit_form(ch: str) -> str:
    if unicodedata.decimal(ch, None) is not None:
        return BASE
    tag = unicodedata.decomposition(ch).split(" ", 1)[0]
    return SUPER if tag == "<super>" else SUB if tag == "<sub>" else ENCLOSED


def fold_char(ch: str) -> str:
    """The folded form of one character (the rules in the module docstring)."""
    if ch < "\x80":
        return ch
    if ch in _BLANK_FILLERS:
        return " "
    category = unicodedata.category(ch)
    if category in _REMOVED_CATEGORIES or ch in _IGNORABLE:
        return ""
    value = unicodedata.decimal(ch, None)
    if value is not None:
        return _DIGITS[value]
    if not unicodedata.decomposition(ch):  # NFKC of one character without a decomposition is itself
        return _fold_simple(ch, category)
    folded = "".join(c if c < "\x80" else _fold_simple(c, unicodedata.category(c))
                     for c in unicodedata.normalize("NFKC", ch))
    return ch if len(folded) > MAX_EXPANSION else folded


def _fold_simple(ch: str, category: str) -> str:
    """A character that NFKC leaves alone (ASCII excepted)."""
    if category == "Zs" or ch in _BLANK_FILLERS:
        return " "
    if category in _REMOVED_CATEGORIES or ch in _IGNORABLE:
        return ""
    value = unicodedata.digit(ch, None)
    if value is not None:
        return _DIGITS[value]
    if category == "Pd" or ch in _MINUS_SIGNS:
        return "-"
    return ch


# --- the table of characters that fold ------------------------------------------------------

def _table_rows() -> list[tuple[int, int]]:
    """Ranges of the code points whose fold is not themselves (a second or so of unicodedata)."""
    ranges: list[tuple[int, int]] = []
    for cp in range(0x80, sys.maxunicode + 1):
        ch = chr(cp)
        if 0xD800 <= cp <= 0xDFFF or fold_char(ch) == ch:
            continue
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    return ranges


def _load_ranges() -> tuple[tuple[int, int], ...]:
    try:
        from jitgate.masking import _foldtable
    except ImportError:  # not generated yet (python -m jitgate.masking.fold writes it)
        return tuple(_table_rows())
    if _foldtable.UNICODE_VERSION != unicodedata.unidata_version:
        return tuple(_table_rows())  # another Unicode: its new digits and spaces must fold too
    return _foldtable.FOLDING


FOLDING_RANGES = _load_ranges()
# One search over a text says whether anything in it folds (the common answer is no).
_FOLDING = re.compile("[" + "".join(
    re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in FOLDING_RANGES
) + "]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


def needs_fold(text: str) -> bool:
    """True when some character of the text folds (the folded view differs from the text)."""
    return not text.isascii() and _FOLDING.search(text) is not None


def bitmap() -> bytes:
    """The folding code points as a bitmap (bit cp & 7 of byte cp >> 3), for the compiled core."""
    bits = bytearray((sys.maxunicode + 1) // 8)
    for lo, hi in FOLDING_RANGES:
        for cp in range(lo, hi + 1):
            bits[cp >> 3] |= 1 << (cp & 7)
    return bytes(bits)


_FOLDS: dict[str, tuple[str, str | None, str | None]] = {}


def _fold_map() -> dict[str, tuple[str, str | None, str | None]]:
    """(fold, digit form of its first character or None, same for its last) of every folding
    character; built on first use (some 8000 characters, a few ms)."""
    if not _FOLDS:
        folds = {}
        for lo, hi in FOLDING_RANGES:
            for cp in range(lo, hi + 1):
                ch = chr(cp)
                folded = fold_char(ch)
                form = _digit_form(ch) if any("0" <= c <= "9" for c in folded) else None
                folds[ch] = (folded, form if folded[:1].isdigit() else None, form if folded[-1:].isdigit() else None)
        _FOLDS.update(folds)
    return _FOLDS


class FoldedText:
    """A folded text and the map from its positions back to the original's.

    The map is a list of segments, each ``(folded start, original start, original end, linear)``:
    a run of characters that fold to themselves maps position for position (linear); the
    characters of one character's fold all map to that character; a ' ' put between two
    digits of different forms maps to the empty range before the second.
    """

    __slots__ = ("text", "right_to_left", "_original", "_starts", "_segments")

    def __init__(self, text: str, original: str, starts: list[int], segments: list[tuple[int, int, int, bool]]):
        self.text = text
        # A right-to-left override (U+202E) shows the characters after it in reverse order,
        # digits too: '\u202e1111 1111 1111 1114' is displayed as a card. The detectors also
        # read such a text reversed (detectors.find_all; Prefilter checks both directions).
        self.right_to_left = RIGHT_TO_LEFT_OVERRIDE in original
        self._original = original
        self._starts = starts
        self._segments = segments

    def _segment(self, position: int) -> tuple[int, int, int, bool]:
        return self._segments[bisect.bisect_right(self._starts, position) - 1]

    def original_start(self, position: int) -> int:
        folded_start, start, _, linear = self._segment(position)
        return start + position - folded_start if linear else start

    def original_end(self, position: int) -> int:
        """The original end of a span that ends (exclusive) at this folded position, with the
        combining marks that sit on its last character (the keycap of '4️⃣')."""
        folded_start, start, end, linear = self._segment(position - 1)
        end = start + position - folded_start if linear else end
        original = self._original
        while end < len(original) and unicodedata.category(original[end]) in _MARK_CATEGORIES:
            end += 1
        return end

    def original_spans(self, spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
        """Spans of the folded text as spans of the original (not merged: two spans may now
        share a character, e.g. both ends of ``⑴``'s fold)."""
        return [(self.original_start(s), self.original_end(e), kind) for s, e, kind in spans if s < e]


_last: tuple[str, FoldedText | None] = ("", None)


def fold(text: str) -> FoldedText | None:
    """The folded view of a text, or None when nothing in it folds (then it is the text)."""
    global _last
    last_text, last_folded = _last
    if last_text is text or (len(last_text) == len(text) and last_text == text):
        return last_folded  # the prefilter folded it a moment ago (one entry: thread-safe to read)
    folded = _fold(text) if needs_fold(text) else None
    _last = (text, folded)
    return folded


def _fold(text: str) -> FoldedText:
    folds = _fold_map()
    pieces: list[str] = []
    starts: list[int] = []
    segments: list[tuple[int, int, int, bool]] = []
    size = 0  # length of the folded text so far
    tail_form: str | None = None  # digit form of the folded text's last character (None: not a digit)
    linear_from = 0  # original start of the pending run of characters that fold to themselves

    def emit(piece: str, start: int, end: int, linear: bool) -> None:
        nonlocal size
        starts.append(size)
        segments.append((size, start, end, linear))
        pieces.append(piece)
        size += len(piece)

    def flush(upto: int) -> None:
        """The pending run up to ``upto``: itself, after a ' ' if it starts with a digit that
        follows a digit of another form."""
        nonlocal tail_form
        if upto <= linear_from:
            return
        if tail_form not in (None, BASE) and "0" <= text[linear_from] <= "9":
            emit(" ", linear_from, linear_from, False)
        emit(text[linear_from:upto], linear_from, upto, True)
        # the only digits that fold to themselves are ASCII ones
        tail_form = BASE if "0" <= text[upto - 1] <= "9" else None

    for run in _NON_ASCII.finditer(text):
        for i in range(*run.span()):
            entry = folds.get(text[i])
            if entry is None:
                continue  # folds to itself: part of the pending run
            flush(i)
            linear_from = i + 1
            folded, head, tail = entry
            if not folded:
                continue  # removed: the form before it still counts
            if head is not None and tail_form is not None and head != tail_form:
                emit(" ", i, i, False)
            emit(folded, i, i + 1, False)
            tail_form = tail
    flush(len(text))
    return FoldedText("".join(pieces), text, starts, segments)


def fold_text(text: str) -> str:
    """Only the folded string (for hashing a detection: one token for every spelling)."""
    if text.isascii():
        return text
    folded = fold(text)
    return text if folded is None else folded.text


# The characters that fold to '@' (tests/masking/test_fold.py checks the list against the table).
AT_SIGNS = frozenset("@\uff20\ufe6b")


def _write_table() -> None:
    from pathlib import Path

    rows = _table_rows()
    lines = [
        '"""The code points whose fold is not themselves (see fold.py). Generated by',
        "`python -m jitgate.masking.fold` from this Python's unicodedata: do not edit by hand.\"\"\"",
        f'UNICODE_VERSION = "{unicodedata.unidata_version}"',
        "FOLDING = (",
    ]
    line = "   "
    for lo, hi in rows:
        item = f" (0x{lo:X}, 0x{hi:X}),"
        if len(line) + len(item) > 110:
            lines.append(line)
            line = "   "
        line += item
    lines += [line, ")", ""]
    Path(__file__).with_name("_foldtable.py").write_text("\n".join(lines))
    print(f"{len(rows)} ranges, Unicode {unicodedata.unidata_version}")


if __name__ == "__main__":
    _write_table()
