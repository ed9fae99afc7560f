"""Builders shared by the masking tests."""
from __future__ import annotations

from broker.pg.codec import FieldDescription
from jitgate.masking import Masker
from jitgate.policy import MaskingConfig, MaskingRule

KEY = b"test-masking-key-0123456789abcdef"
OTHER_KEY = b"another-masking-key-0123456789ab"
ALL_DETECTORS = ["email", "card", "iban", "ssn", "phone", "secret"]

# type OIDs used in the tests
TEXT, VARCHAR, BPCHAR, NAME, JSON, JSONB, XML = 25, 1043, 1042, 19, 114, 3802, 142
INT2, INT4, INT8, UUID, NUMERIC, BYTEA, DATE, FLOAT8, TEXT_ARRAY = 21, 23, 20, 2950, 1700, 17, 1082, 701, 1009
CITEXT = 16500  # any user-defined OID


def field(name: str, type_oid: int = TEXT, *, fmt: int = 0, table_oid: int = 0, attr: int = 0, typmod: int = -1):
    return FieldDescription(name, table_oid, attr, type_oid, -1, typmod, fmt)


def masker(*rules: MaskingRule, key: bytes = KEY) -> Masker:
    return Masker(MaskingConfig(rules=list(rules)), key)


def detectors(strategy: str = "redact", keep_last: int = 4, kinds=ALL_DETECTORS) -> MaskingRule:
    return MaskingRule(detectors=list(kinds), strategy=strategy, keep_last=keep_last)


def columns(*patterns: str, strategy: str = "redact", keep_last: int = 4) -> MaskingRule:
    return MaskingRule(columns=list(patterns), strategy=strategy, keep_last=keep_last)
