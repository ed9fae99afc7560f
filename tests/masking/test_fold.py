"""Sensitive values written in Unicode forms (jitgate/masking/fold.py): the attacker's corpus.

Each entry is a value built to slip a card, SSN, phone number, email, IBAN or secret past
ASCII-minded detectors, with the decision it must get under the redact strategy: its exact
masked output, or CLEAR where the detectors leave it alone on purpose (the same shape in ASCII
is left alone too: an identifier, a number that is not Luhn-valid). Each runs through a DataRow
on both row cores, through free text (error messages, recorded statements, SSH/kubectl
recordings: Masker.mask_text) and through a JSON document.
"""
from __future__ import annotations

import json
import random
import struct
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.pg.codec import build_data_row
from jitgate.masking import detectors, fold, rows
from jitgate.masking.detectors import Prefilter, find_all
from jitgate.masking.scanner import DetectorStrategy, Scanner
from jitgate.masking.strategies import Hasher
from jitgate.policy import MaskingRule
from tests.masking.helpers import ALL_DETECTORS, JSON, KEY, field, masker

CLEAR = None
CARD = "4111111111111111"  # Luhn-valid
AWS_KEY = "AKIA" + "IOSFODNN7EXAMPLE"


def _each(digits: str, after: str) -> str:
    return "".join(d + after for d in digits)


def _script(digits: str, zero: int) -> str:
    return "".join(chr(zero + int(d)) for d in digits)


UNICODE_ATTACKS = [
    # other digits: every decimal digit folds to its ASCII digit, mixed scripts in one number too
    ("card, mixed scripts in one number", "4١1١ ١111 1١1١ 1111", "[card]"),
    ("card, four scripts in one number", "٤१1１ ۱১๑1 1111 1111", "[card]"),
    ("card, mathematical bold digits", _script(CARD, 0x1D7CE), "[card]"),
    ("card, mathematical monospace digits", _script(CARD, 0x1D7F6), "[card]"),
    ("card, Tibetan digits", _script(CARD, 0x0F20), "[card]"),
    ("card, circled digits", "④" + "①" * 15, "[card]"),
    ("card, dingbat negative circled digits", "❹" + "❶" * 15, "[card]"),
    ("card, superscript digits in groups", "⁴¹¹¹ ¹¹¹¹ ¹¹¹¹ ¹¹¹¹", "[card]"),
    ("card, keycap digits (digit, VS16, U+20E3)", _each(CARD, "\ufe0f\u20e3"), "[card]"),
    # invisible characters inside the number: removed from the folded view, masked with it
    ("card, a combining acute on every digit", _each(CARD, "\u0301"), "[card]"),
    ("card, a variation selector after every digit", _each(CARD, "\ufe0f"), "[card]"),
    ("card, a right-to-left mark between groups", "4111\u200f1111\u200f1111\u200f1111", "[card]"),
    ("card, soft hyphens between groups", "4111\xad1111\xad1111\xad1111", "[card]"),
    ("card, a word joiner between every digit", "\u2060".join(CARD), "[card]"),
    ("card, a tag character and a space between groups", "4111\U000e0041 1111\U000e0041 1111 1111", "[card]"),
    ("card, a ZWSP and a space between groups", "4111\u200b 1111 \u200b1111\u200b 1111", "[card]"),
    ("card, a ZWSP, a ZWJ, a ZWNJ and a BOM", "4111\u200b1111\u200d1111\u200c1111\ufeff", "[card]\ufeff"),
    ("card, an Arabic letter mark before it", "\u061c4111 1111 1111 1111", "\u061c[card]"),
    # Unicode spaces and dashes as separators
    ("card, figure and narrow no-break spaces", "4111\u20071111\u202f1111\u20071111", "[card]"),
    ("card, minus sign, em dash, full-width hyphen", "4111\u22121111\u20141111\uff0d1111", "[card]"),
    ("card, Hangul fillers (blank letters) between groups", "4111\u31641111\u31641111\u31641111", "[card]"),
    ("card, after a Hangul filler after a word", "card\u31644111111111111111", "card\u3164[card]"),
    # the number displayed in reverse by a right-to-left override
    ("card, right-to-left override: shown as 4111 1111 1111 1111", "\u202e1111 1111 1111 1114", "\u202e[card]"),
    ("email, right-to-left override", "to \u202emoc.elpmaxe@resu\u202c now", "to \u202e[email]\u202c now"),
    # footnotes and exponents beside a number are not more of its digits
    ("card then a superscript footnote", "4111 1111 1111 1111\u00b9", "[card]\u00b9"),
    ("card then a circled footnote", "4111 1111 1111 1111\u2460", "[card]\u2460"),
    ("card, last digit superscript", "4111 1111 1111 111\u00b9", "[card]"),
    # SSN and phone numbers in the same forms
    ("ssn, Arabic-Indic digits", "١٢٣-٤٥-٦٧٨٩", "[ssn]"),
    ("ssn, minus signs", "ssn 123\u221245\u22126789.", "ssn [ssn]."),
    ("ssn, a ZWSP in every gap", "\u200b".join("123-45-6789"), "[ssn]"),
    ("phone, full-width plus, parentheses and hyphen", "＋１ （４１５） ５５５－０１００", "[phone]"),
    ("phone, NBSP and a word joiner", "+44\xa020\u2060 7946\xa00958", "[phone]"),
    ("phone, Devanagari digits", "+९१ ९८७६५ ४३२१०", "[phone]"),
    # emails
    ("email, full-width letters and at-sign", "mail ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ now", "mail [email] now"),
    ("email, small commercial at", "john\ufe6bexample.com", "[email]"),
    ("email, ZWSP in the local part and the domain", "jo\u200bhn@exa\u200bmple.com", "[email]"),
    ("email, mathematical bold local part", "𝐣𝐨𝐡𝐧@example.com", "[email]"),
    ("email, soft hyphen before the at-sign", "john\xad@example.com", "[email]"),
    # IBAN and secrets (Python scan on both cores)
    ("iban, full-width", "ＤＥ８９ ３７０４ ００４４ ０５３２ ０１３０ ００", "[iban]"),
    ("secret, full-width AWS key id", "key " + "".join(chr(ord(c) + 0xFEE0) for c in AWS_KEY), "key [secret]"),
    ("secret, ZWSP inside an AWS key id", "key AKIA\u200b" + AWS_KEY[4:], "key [secret]"),
    # left alone, as their ASCII spelling is
    ("full-width order number that is not Luhn-valid", "注文番号 ４１１１ １１１１ １１１１ １１１２", CLEAR),
    ("full-width order id glued to a dash", "ＯＲＤ－４１１１１１１１１１１１１１１１", CLEAR),
    ("full-width date", "２０２４年３月１日 ２０２４０１１５１０３０００１２３", CLEAR),
    ("card glued to a letter of another script", "v٤١١١١١١١١١١١١١١١", CLEAR),
    ("card with double spaces (after a ZWSP)", "4111\u200b  1111  1111  1111", CLEAR),
    ("card with middle dots: not a separator (look-alike, not folded)", "4111\xb71111\xb71111\xb71111", CLEAR),
    ("accented words and a price", "Crème brûlée — 12,50 €, qté ２", CLEAR),
]


def _redact_plan():
    return masker(MaskingRule(detectors=ALL_DETECTORS, strategy="redact")).plan([field("notes")], {})


def _decision(value: str, decision: str | None) -> str:
    return value if decision is CLEAR else decision


_IDS = [a[0] for a in UNICODE_ATTACKS]


@pytest.mark.parametrize("label,value,decision", UNICODE_ATTACKS, ids=_IDS)
def test_unicode_attacks_in_a_row(row_core, label, value, decision):
    plan = _redact_plan()
    assert plan._core is not None if row_core == "compiled" else plan._core is None
    masked = plan.mask_row(build_data_row([value.encode()])[5:])[11:]
    assert masked.decode() == _decision(value, decision), label
    # and the detectors with no prefilter agree
    assert bool(find_all(value, ALL_DETECTORS, (True, True, True, True))) == (decision is not CLEAR), label


@pytest.mark.parametrize("label,value,decision", UNICODE_ATTACKS, ids=_IDS)
def test_unicode_attacks_in_free_text(label, value, decision):
    """Error messages, recorded statements, SSH and kubectl recordings: Masker.mask_text."""
    text_masker = masker(MaskingRule(detectors=ALL_DETECTORS, strategy="redact"))
    statement = f"UPDATE t SET note = '{value}' WHERE id = 1"
    expected = f"UPDATE t SET note = '{_decision(value, decision)}' WHERE id = 1"
    assert text_masker.mask_text(statement) == expected, label


@pytest.mark.parametrize("label,value,decision", UNICODE_ATTACKS, ids=_IDS)
def test_unicode_attacks_in_json(row_core, label, value, decision):
    """A JSON document as PostgreSQL sends it (raw UTF-8) and with every character escaped."""
    plan = masker(MaskingRule(detectors=ALL_DETECTORS, strategy="redact")).plan([field("doc", JSON)], {})
    for body in (json.dumps({"note": value}, ensure_ascii=False), json.dumps({"note": value})):
        raw = body.encode("utf-8")
        out = plan.mask_row(struct.pack("!hi", 1, len(raw)) + raw)[11:]
        assert json.loads(out) == {"note": _decision(value, decision)}, (label, body)


def test_a_card_split_by_a_zwsp_at_every_position(row_core):
    plan = _redact_plan()
    for cut in range(1, len(CARD)):
        for mark in ("\u200b", "\u200d", "\u0301", "\ufe0f", "\u200f", "\xad"):
            value = f"pay {CARD[:cut]}{mark}{CARD[cut:]} now"
            masked = plan.mask_row(build_data_row([value.encode()])[5:])[11:]
            assert masked == b"pay [card] now", (cut, mark)
    every = "\u200b".join(CARD)
    assert plan.mask_row(build_data_row([every.encode()])[5:])[11:] == b"[card]"


@pytest.mark.parametrize("strategy", ["partial", "hash"])
def test_strategies_on_folded_values(row_core, strategy):
    """partial shows the last four digits as written and hides the rest; hash gives the token of
    the ASCII spelling, so a join over hashed values still matches every spelling."""
    plan = masker(MaskingRule(detectors=ALL_DETECTORS, strategy=strategy, keep_last=4)).plan([field("notes")], {})

    def mask(value: str) -> str:
        return plan.mask_row(build_data_row([value.encode()])[5:])[11:].decode()

    spellings = ["4111 1111 1111 1111", "４１１１ １１１１ １１１１ １１１１", "4111\u200b1111\u200b1111\u200b1111",
                 "٤١١١-١١١١-١١١١-١١١١", _each(CARD, "\ufe0f\u20e3")]
    if strategy == "hash":
        assert len({mask(s) for s in spellings}) == 1
        assert mask("ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ") == mask("john@example.com")
    else:
        assert mask("４１１１ １１１１ １１１１ １１１１") == "＊＊＊＊ ＊＊＊＊ ＊＊＊＊ １１１１".replace("＊", "*")
        assert mask("4111\u200b1111\u200b1111\u200b1111") == "****\u200b****\u200b****\u200b1111"
        # the local part is hidden whole, whichever at-sign splits it
        assert mask("ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ") == "***@ｅｘａｍｐｌｅ．ｃｏｍ"
        assert mask("jo\u200bhn\ufe6bexample.com") == "***@example.com"


# --- properties ------------------------------------------------------------------------------

_DIGIT_FORMS = [chr(zero + d) for zero in (0x30, 0xFF10, 0x0660, 0x06F0, 0x0966, 0x09E6, 0x0E50, 0x1D7CE, 0x1D7F6)
                for d in range(10)]
_INVISIBLE = ["", "", "", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\xad", "\u200e", "\u200f", "\u0301",
              "\ufe0f", "\U000e0020", "\u034f"]
_SEPARATORS = ["", " ", "-", "\xa0", "\u2007", "\u202f", "\u3000", "\u2010", "\u2011", "\u2013", "\u2014", "\u2212",
               "\uff0d", "\u1680"]


def _digit(d: str, rng: random.Random) -> str:
    return rng.choice([f for f in _DIGIT_FORMS if unicodedata.decimal(f) == int(d)])


def _disguised_card(rng: random.Random) -> str:
    """A Luhn-valid card, each digit in a random script, invisible characters anywhere, and one
    separator kind between groups of four."""
    separator = rng.choice(_SEPARATORS)
    out = []
    for i, d in enumerate(rng.choice(["4111111111111111", "5555555555554444", "4012888888881881", "6011000990139424"])):
        if i and i % 4 == 0:
            out.append(rng.choice(_INVISIBLE) + separator + rng.choice(_INVISIBLE))
        out.append(_digit(d, rng) + (rng.choice(_INVISIBLE) if i < 15 else ""))
    return "".join(out)


_PLAIN_WORDS = ["the", "order", "Zürich", "中文", "—", ":", "ж", "café", "ok."]


def test_a_disguised_card_never_survives_and_the_rest_stays_byte_for_byte(row_core):
    """Thousands of disguised cards inside text: the output holds the marker, not one digit of
    the card (read through the fold), and the text around it is the input's, byte for byte."""
    plan = _redact_plan()
    rng = random.Random(f"disguised-{row_core}")
    for _ in range(1500):
        card = _disguised_card(rng)
        before = " ".join(rng.choice(_PLAIN_WORDS) for _ in range(rng.randint(0, 4))) + " "
        after = " " + " ".join(rng.choice(_PLAIN_WORDS) for _ in range(rng.randint(0, 4)))
        value = before + card + after
        masked = plan.mask_row(build_data_row([value.encode()])[5:])[11:].decode()
        assert masked == before + "[card]" + after, (value, masked)
        assert not any("0" <= c <= "9" for c in fold.fold_text(masked)), masked


_ATTACK_PIECES = st.sampled_from(
    list("0123456789 -.()+@aZ") + _DIGIT_FORMS[10:40] + _INVISIBLE[3:] + _SEPARATORS[3:]
    + ["\uff20", "\ufe6b", "ｅｘ", "．ｃｏｍ", "ＤＥ", "ＧＢ", "ＡＫＩＡ", "eyJ", "\u00b2", "\u2460", "\u2474", "\u202e",
       "\u3164", "é", "中", "\udcff", "4111", "+1 ", "123-45-", "@ex.co"])
_ATTACK_TEXT = st.lists(_ATTACK_PIECES, max_size=40).map("".join)


@settings(max_examples=600, deadline=None)
@given(_ATTACK_TEXT)
def test_the_prefilter_stays_wider_on_text_that_folds(text):
    """A value the prefilter skips holds nothing any detector finds: checked against the
    detectors with every family on, on text full of characters that fold."""
    raw = text.encode("utf-8", "surrogateescape")
    spans = find_all(text, ALL_DETECTORS, (True, True, True, True))
    families = Prefilter(ALL_DETECTORS).families(raw)
    kinds = {kind for _, _, kind in spans}
    if families is None:
        assert not spans, text
        return
    email, numeric, iban, secret = families
    assert ("email" in kinds) <= email and bool(kinds & {"card", "ssn", "phone"}) <= numeric
    assert ("iban" in kinds) <= iban and ("secret" in kinds) <= secret


@settings(max_examples=600, deadline=None)
@given(_ATTACK_TEXT)
def test_spans_cover_whole_characters_and_leave_the_rest_alone(text):
    """Every span maps to whole original characters, spans do not overlap, and outside them the
    masked text is the original."""
    spans = find_all(text, ALL_DETECTORS)
    last = 0
    for start, end, _ in spans:
        assert last <= start < end <= len(text)
        last = end
    scanner = Scanner({k: DetectorStrategy("redact", 4) for k in ALL_DETECTORS}, Hasher(KEY))
    masked = scanner.mask(text)
    pieces, last = [], 0
    for start, end, kind in spans:
        pieces += [text[last:start], f"[{kind}]"]
        last = end
    assert masked == "".join(pieces) + text[last:]


def test_the_compiled_core_masks_what_the_reference_masks_on_folded_values():
    plans = {}
    for implementation in rows.IMPLEMENTATIONS:
        rows.implementation, saved = implementation, rows.implementation
        try:
            plans[implementation] = [
                masker(MaskingRule(detectors=ALL_DETECTORS, strategy=s, keep_last=4)).plan([field("n"), field("m")], {})
                for s in ("redact", "partial", "hash", "null")]
        finally:
            rows.implementation = saved
    rng = random.Random("folded-rows")
    pieces = [_disguised_card(rng) for _ in range(20)] + [a[1] for a in UNICODE_ATTACKS] + _PLAIN_WORDS
    for case in range(1500):
        values = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 4))).encode("utf-8", "surrogateescape")
                  for _ in range(2)]
        payload = build_data_row(values)[5:]
        for compiled, reference in zip(plans["compiled"], plans["python"]):
            assert compiled.mask_row(payload) == reference.mask_row(payload), values


# --- the table ------------------------------------------------------------------------------

def test_the_stored_table_is_this_pythons_unicode():
    """_foldtable.py against a fresh computation from unicodedata (regenerate it with
    `python -m jitgate.masking.fold` after a Python upgrade; until then it is recomputed at import)."""
    from jitgate.masking import _foldtable

    assert _foldtable.UNICODE_VERSION == unicodedata.unidata_version
    assert tuple(fold._table_rows()) == _foldtable.FOLDING == fold.FOLDING_RANGES


def test_every_fold_is_short_and_long_compatibility_forms_hold_no_digit_or_separator():
    import sys

    relevant = set("0123456789@+-.() ")
    kept_with_relevant = set()
    for cp in range(0x80, sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        folded = fold.fold_char(ch)
        assert len(folded) <= fold.MAX_EXPANSION, hex(cp)
        nfkc = unicodedata.normalize("NFKC", ch)
        if folded == ch != nfkc:  # kept whole: its compatibility form is too long
            assert len(nfkc) > fold.MAX_EXPANSION, hex(cp)
            if relevant & set(nfkc):
                kept_with_relevant.add(ch)
        if folded == "@":
            assert ch in fold.AT_SIGNS, hex(cp)
    # two Arabic phrase ligatures (spaces between their words) and ㎯ (rad∕s2: the exponent of a unit)
    assert kept_with_relevant == {"\ufdfa", "\ufdfb", "\u33af"}
    assert fold.AT_SIGNS == {"@"} | {c for c, entry in fold._fold_map().items() if entry[0] == "@"}


def test_the_c_core_knows_which_characters_fold():
    """The compiled core hands a value to the Python scan exactly when a character of it folds:
    every code point, alone and inside ASCII text, and bytes that are not UTF-8."""
    import sys

    core = rows._rowcore
    assert core is not None, rows.core_status()
    for cp in range(0x80, sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        assert core.needs_fold(ch.encode()) == fold.needs_fold(ch), hex(cp)
    assert core.needs_fold(b"4111 1111 " + "\u200b".encode() + b" 1111") is True
    assert core.needs_fold(b"plain ascii 4111") is False
    assert core.needs_fold(b"\xff\xfe\xed\xa0\x80 cut \xe2\x80") is False  # escaped bytes never fold
    assert core.needs_fold("café Zürich 中文".encode()) is False
    # its prefilter then lets every enabled family through
    all_families = core.FAMILY_EMAIL | core.FAMILY_NUMERIC | core.FAMILY_IBAN | core.FAMILY_SECRET
    assert core.families("４１１１".encode(), all_families) == all_families
    assert core.families("4111".encode(), all_families) == 0


def test_plain_text_is_not_folded():
    """ASCII and text whose characters fold to themselves are not copied: the detectors and the
    compiled core take their usual paths."""
    for text in ["plain 4111 1111 1111 1111", "café +1 415 555 0100, jöhn@example.com", "中文 ж ß €", ""]:
        assert fold.fold(text) is None and not fold.needs_fold(text)
    assert fold.fold("a\xa0b").text == "a b"
    assert detectors.find_all("a\xa0b", ALL_DETECTORS) == []
