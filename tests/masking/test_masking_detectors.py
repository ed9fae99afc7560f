"""Detectors over free text: every PII value of a realistic corpus disappears, and text
that only looks like PII (ids, timestamps, versions, prices) comes back untouched."""
from __future__ import annotations

import base64
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitgate.masking import detectors
from jitgate.masking.detectors import find_all, iban_valid, luhn_valid
from jitgate.masking.scanner import DetectorStrategy, Scanner
from jitgate.masking.strategies import Hasher

from .helpers import ALL_DETECTORS, KEY


def _fake_pem(label: str = "RSA PRIVATE KEY") -> str:
    body = base64.b64encode(random.Random(label).randbytes(300)).decode()
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----"


JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
SLACK = "xox" + "b-2048576301-1180596237465-kZ8qYtRmLpWnXvBcDfGhJk"  # split so secret scanners skip this file
AWS_KEY = "AKIA" + "IOSFODNN7EXAMPLE"
PEM = _fake_pem()

# (text, the sensitive values it holds)
PII_CORPUS = [
    ("call me at +1 415 555 0100 or mail bob@example.com", ["+1 415 555 0100", "bob@example.com"]),
    ("Customer notes: card 4111 1111 1111 1111 exp 12/27, CVV given verbally", ["4111 1111 1111 1111"]),
    ("paid with 5500-0000-0000-0004 on 2024-01-15", ["5500-0000-0000-0004"]),
    ("amex 340000000000009; discover 6011000990139424", ["340000000000009", "6011000990139424"]),
    ("year then card: 2024 4111 1111 1111 1111 done", ["4111 1111 1111 1111"]),
    ("Refund to IBAN DE89 3704 0044 0532 0130 00 EUR 120.00", ["DE89 3704 0044 0532 0130 00"]),
    ("wire GB82WEST12345698765432 and FR1420041010050500013M02606.", ["GB82WEST12345698765432", "FR1420041010050500013M02606"]),
    ("SSN 078-05-1120 on file; alt 123-45-6789", ["078-05-1120", "123-45-6789"]),
    ("UK office 020 7946 0958, Paris +33 1 23 45 67 89, mobile 01 23 45 67 89", ["020 7946 0958", "+33 1 23 45 67 89", "01 23 45 67 89"]),
    ("US: (415) 555-0199 / 415.555.0142 / 1-415-555-0123", ["(415) 555-0199", "415.555.0142", "1-415-555-0123"]),
    ("Berlin +49 (0)30 1234567, E.164 +14155550100", ["+49 (0)30 1234567", "+14155550100"]),
    ("2024-01-15T10:30:00Z ERROR auth failed for jane.doe+test@mail.example.co.uk from 10.0.0.7", ["jane.doe+test@mail.example.co.uk"]),
    (f"Authorization: Bearer {JWT}", [JWT]),
    (f"export AWS_ACCESS_KEY_ID={AWS_KEY}", [AWS_KEY]),
    (f"slack token {SLACK} leaked", [SLACK]),
    (f"key file:\n{PEM}\nend", [PEM, PEM.splitlines()[1]]),
    (f"truncated log: {PEM[:200]}", [PEM.splitlines()[1]]),
    (
        '{"type": "service_account", "private_key_id": "4f2a9c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39", '
        '"client_email": "svc@proj.iam.gserviceaccount.com"}',
        ["4f2a9c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39", "svc@proj.iam.gserviceaccount.com"],
    ),
    (
        'log: payload={\\"private_key_id\\": \\"abc123def456\\", \\"x\\": 1}',
        ["abc123def456"],
    ),
    ("Ünïcødé nøtes: écrire à marie.curie@exemple.fr — tél +33 6 12 34 56 78", ["marie.curie@exemple.fr", "+33 6 12 34 56 78"]),
]

# Text that holds no PII but looks like it to a careless detector.
CLEAN_CORPUS = [
    "Order ORD-2024-000123 shipped 2024-01-15T10:30:00Z, invoice INV-20240115-0042",
    "timestamp 2024-01-15 10:30:00.123456+00 and compact 20240115103000123",
    "upgraded from v1.2.3 to 10.4.12 (Python 3.11.7, build 2024.01.15)",
    "price $1,234.56, EUR 1 234,56, total 1234567.89, qty 3 x 250g",
    "connect to 192.168.1.100 or 10.0.0.1:5432, mask 255.255.255.0",
    "uuid 123e4567-e89b-12d3-a456-426614174000, sha 4f2a9c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39",
    "ticket #48213 in room 101, ISBN 978-3-16-148410-0, tracking 1Z999AA10123456784",
    "dates 15/01/2024 and 01.02.2024, call at 10:30, ext 555-1234",
    "order id 1234567890123456789 and 41111111111111112",
    "not a card 4111 1111 1111 1112, not an ssn 000-12-3456 666-12-3456 912-34-5678",
    "bad iban DE00 3704 0044 0532 0130 00, unknown country ZZ89 3704 0044 0532 0130 00",
    "the email field is required; write to user at example dot com; @mention in chat",
    "AKIA short, eyJ alone, xoxb- prefix only, BEGIN PUBLIC KEY is not private",
    "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----",
    "coordinates 48.8566, 2.3522; ratio 3:2; score 98.6%; port 8080-8090",
    "phone number format is +X XXX XXX XXXX; enter digits only",
    "",
]


def scanner(strategy: str = "redact", keep_last: int = 4, kinds=ALL_DETECTORS) -> Scanner:
    return Scanner({k: DetectorStrategy(strategy, keep_last) for k in kinds}, Hasher(KEY))


@pytest.mark.parametrize("strategy", ["redact", "partial", "hash"])
@pytest.mark.parametrize(("text", "secrets"), PII_CORPUS)
def test_no_clear_text_pii_remains(text: str, secrets: list[str], strategy: str) -> None:
    masked = scanner(strategy).mask(text)
    assert masked is not None and masked != text
    for secret in secrets:
        assert secret not in masked, f"{secret!r} survived as {masked!r}"


@pytest.mark.parametrize("text", CLEAN_CORPUS)
def test_text_without_pii_is_untouched(text: str) -> None:
    assert scanner().mask(text) == text
    assert find_all(text, ALL_DETECTORS) == []


def test_surrounding_text_is_kept() -> None:
    text = "call me at +1 415 555 0100 or mail bob@example.com."
    assert scanner().mask(text) == "call me at [phone] or mail [email]."


def test_partial_keeps_separators_and_the_last_digits() -> None:
    masked = scanner("partial").mask("card 4111 1111 1111 1111, ssn 078-05-1120, bob@example.com")
    assert masked == "card **** **** **** 1111, ssn ***-**-1120, ***@example.com"


def test_partial_never_shows_more_than_half() -> None:
    # keep_last 16 on a 16-digit card would show it whole: half is the cap.
    masked = scanner("partial", keep_last=16).mask("4111111111111111")
    assert masked.count("*") == 8


def test_partial_never_shows_part_of_a_secret() -> None:
    assert scanner("partial").mask(f"token {AWS_KEY}") == "token [secret]"


def test_hash_is_stable_keyed_and_ignores_separators() -> None:
    spaced = scanner("hash").mask("4111 1111 1111 1111")
    assert spaced == scanner("hash").mask("4111-1111-1111-1111") == scanner("hash").mask("4111111111111111")
    assert spaced.startswith("h:") and len(spaced) == 18
    other = Scanner({"card": DetectorStrategy("hash", 4)}, Hasher(b"x" * 32)).mask("4111111111111111")
    assert other != spaced
    assert scanner("hash").mask("4111 1111 1111 1111") != scanner("hash").mask("5500 0000 0000 0004")


def test_null_strategy_nulls_the_value() -> None:
    assert scanner("null").mask("mail bob@example.com") is None
    assert scanner("null").mask("nothing here") == "nothing here"


def test_unchanged_text_is_the_same_object() -> None:
    text = "nothing to see at 2024-01-15 10:30"
    assert scanner().mask(text) is text


def test_checksums() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89370400440532013000") and not iban_valid("DE88370400440532013000")


def test_overlapping_detections_are_masked_as_one() -> None:
    spans = detectors.merge_overlaps([(0, 10, "phone"), (5, 20, "card"), (30, 35, "email")])
    assert spans == [(0, 20, "card"), (30, 35, "email")]


def test_over_long_email_local_part_is_still_masked() -> None:
    local = "a" * 70
    masked = scanner().mask(f"to {local}@example.com")
    assert "example.com" not in masked and "a" * 64 not in masked


# The prefilter must never hide a detection: for any text, what the detectors find with
# the prefilter's answer equals what they find without it.
_PII_ALPHABET = st.sampled_from(
    list("0123456789 -.()+@abcxyzABDEGKISJ_:/\"\\\n") + ["4111", "DE89", "AKIA", "eyJ", "@ex.com", "xoxb-", "é"]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_PII_ALPHABET, max_size=60).map("".join))
def test_prefilter_never_hides_a_detection(text: str) -> None:
    everything = find_all(text, ALL_DETECTORS)
    families = detectors.Prefilter(ALL_DETECTORS).families(text.encode("utf-8", "surrogatepass"))
    if families is None:
        assert everything == []
    else:
        assert find_all(text, ALL_DETECTORS, families) == everything


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([c for c, _ in PII_CORPUS]), st.text(max_size=20), st.text(max_size=20))
def test_pii_is_found_whatever_surrounds_it(text: str, before: str, after: str) -> None:
    # Glued to a word character a number is an identifier, so pad with spaces.
    masked = scanner().mask(f"{before} {text} {after}")
    for secret in dict(PII_CORPUS)[text]:
        assert secret not in masked


# Inputs built to make a backtracking regex go quadratic or worse. A value can be
# megabytes long; each of these 100 KB texts must take well under a second of CPU on
# a normal machine (the bound is generous for shared CI runners).
ADVERSARIAL = {
    "digit groups": "1 " * 50000 + "x",
    "dashed groups": "4-" * 50000 + "x",
    "dotted domains": ("a@" + "b." * 200) * 250,
    "BEGIN without END": "-----BEGIN PRIVATE KEY-----\nabc " * 2000,
    "plus signs": "+1 " * 50000,
    "JWT openings": "eyJ" * 30000,
    "IBAN openings": "DE89" * 25000,
    "SSN fragments": "123-45-" * 15000,
    "digits": "4" * 100000,
    "local part without end": "a" * 100000 + "@b.com",
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_input_takes_linear_time(name: str) -> None:
    import time

    started = time.process_time()
    scanner().mask(ADVERSARIAL[name])
    assert time.process_time() - started < 15
