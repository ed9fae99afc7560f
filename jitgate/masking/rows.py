"""RowPlan: masks DataRow messages of one result, with every decision taken in advance.

Wire format of a DataRow payload (after the 5-byte 'D' + int32 length header):
``int16 column count``, then per column ``int32 length`` (-1 for NULL) and that
many bytes. ``mask_row`` walks the lengths with ``struct.unpack_from`` (no copy
of the payload), calls the masker of each affected column, and builds a new
message from the column values: runs of unaffected columns are carried over as
their (length, value) encodings, byte for byte what ``build_data_row`` would
produce for them, and every masked column is written with its new length.
Nothing is patched in place, so a value whose length changes can never shift or
corrupt its neighbours.

``_rowcore.c`` is the same walk compiled (built by pip from this source with the
machine's compiler). This module's ``mask_row`` is the reference: the masking tests run
against both, and a property test checks they give identical bytes. Without the built
extension, or with ``JITGATE_MASKING_CORE=python``, plans use the reference.
"""
from __future__ import annotations

import os
import struct
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from jitgate.masking import fold
from jitgate.masking.columns import MAX_SCANNED_VALUE, ValueMasker
from jitgate.masking.errors import MalformedRow
from jitgate.native import load_compiled


def load_core():
    """(the compiled core, "") ready to use, or (None, why): not built, or built from an older
    source (the reference serves then, jitgate/native.py)."""
    module, why = load_compiled("jitgate.masking._rowcore", Path(__file__).with_name("_rowcore.c"))
    if module is not None:
        # The characters whose values go to the Python scan (it detects on their folded view).
        module.set_fold_table(fold.bitmap())
    return module, why


_rowcore, _ROWCORE_MISSING = load_core()

IMPLEMENTATIONS = ("compiled", "python")
# Which mask_row new plans use; tests switch it to run the same cases against both.
implementation = "python" if _rowcore is None or os.environ.get("JITGATE_MASKING_CORE") == "python" else "compiled"


def core_status() -> str:
    """One line for the broker's start-up log: which row masking core serves, and why."""
    if implementation == "compiled":
        return "compiled row masking core (jitgate/masking/_rowcore.c)"
    if _rowcore is None:
        return (f"pure-Python row masking core: the compiled one is not used: {_ROWCORE_MISSING}; "
                "`pip install -e .` (needs gcc and python3-dev) builds it")
    return "pure-Python row masking core (JITGATE_MASKING_CORE=python)"


_VALUE_ERRORS = (ValueError, struct.error, IndexError, OverflowError)  # a value not valid for its type

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_NULL_LENGTH = b"\xff\xff\xff\xff"


class RowPlan:
    """How to mask each DataRow of one RowDescription (see ``Masker.plan``)."""

    __slots__ = ("column_count", "_steps", "masked_columns", "reasons", "notice", "changed", "_core")

    def __init__(self, column_count: int, maskers: Sequence[tuple[int, ValueMasker]], column_names: Sequence[str] = (),
                 *, reasons: dict[int, str] | None = None, notice: str | None = None):
        self.column_count = column_count
        # (column index, masker), ascending: one forward walk over the row serves them all.
        self._steps = tuple(sorted(maskers, key=lambda step: step[0]))
        # Names of the columns that may be masked, in step order, for debugging.
        self.masked_columns = tuple(column_names)
        # Why each masked column is masked (column index -> the rule), and a NOTICE for the client
        # when the plan fails closed.
        self.reasons = dict(reasons or {})
        self.notice = notice
        # Column indexes whose value some row actually changed: what ``masked_columns`` reports.
        self.changed: set[int] = set()
        self._core = _compiled_core(column_count, self._steps, self.changed) if implementation == "compiled" else None

    @property
    def steps(self) -> tuple:
        """(column index, masker) per masked column."""
        return self._steps

    def report(self, names: Sequence[str]) -> list[dict]:
        """The columns whose values were masked, each with the rule that masked it."""
        return [{"column": names[i], "rule": self.reasons.get(i, "")} for i in sorted(self.changed) if i < len(names)]

    def mask_row(self, payload: bytes) -> bytes:
        """A DataRow payload in, a complete DataRow message (with header) out."""
        if not isinstance(payload, bytes):
            payload = bytes(payload)
        if self._core is not None:
            return self._core.mask_row(payload)
        return self.mask_row_reference(payload)

    def mask_rows(self, data: bytes, begin: int, stop: int) -> tuple[bytes, int]:
        """A run of whole DataRow messages ``data[begin:stop]`` in: (the masked messages, how many)."""
        if self._core is not None:
            return self._core.mask_rows(data, begin, stop)
        out = []
        pos = begin
        unpack = _I32.unpack_from
        while pos < stop:
            length = unpack(data, pos + 1)[0] if pos + 5 <= stop else 0
            if pos + 5 > stop or data[pos] != 0x44 or length < 4 or length > stop - pos - 1:
                raise MalformedRow("a run of DataRows holds another message or a partial one")
            out.append(self.mask_row_reference(bytes(data[pos + 5 : pos + 1 + length])))
            pos += 1 + length
        return b"".join(out), len(out)

    def mask_row_reference(self, payload: bytes) -> bytes:
        """``mask_row`` in Python: what the compiled core must do, byte for byte."""
        size = len(payload)
        if size < 2:
            raise MalformedRow("DataRow is shorter than its column count")
        (count,) = _I16.unpack_from(payload, 0)
        if count != self.column_count:
            raise MalformedRow(f"DataRow has {count} columns but its RowDescription announced {self.column_count}")
        unpack = _I32.unpack_from
        parts: list[bytes] = []
        carried_from = 0  # start of the run of columns copied over unchanged
        pos = 2
        column = 0
        for target, masker in self._steps:
            while column < target:  # skip to the next affected column
                if pos + 4 > size:
                    raise MalformedRow("DataRow ends inside a column length")
                (length,) = unpack(payload, pos)
                pos += 4
                if length > 0:
                    pos += length
                elif length < -1:
                    raise MalformedRow(f"DataRow column {column} has invalid length {length}")
                column += 1
            if pos + 4 > size:
                raise MalformedRow("DataRow ends inside a column length")
            (length,) = unpack(payload, pos)
            value_end = pos + 4 + length
            if length == -1:  # NULL stays NULL under every strategy
                pos += 4
                column += 1
                continue
            if length < -1 or value_end > size:
                raise MalformedRow(f"DataRow column {column} has invalid length {length}")
            value = payload[pos + 4 : value_end]
            try:
                masked = masker(value)
            except MalformedRow:
                raise
            except _VALUE_ERRORS as exc:
                # A value that is not a valid value of its announced type (a hostile upstream).
                raise MalformedRow(f"DataRow column {column} is not a valid value of its type: {exc}") from None
            if masked is not value:
                if masked is None or masked != value:
                    self.changed.add(column)
                parts.append(payload[carried_from:pos])
                if masked is None:
                    parts.append(_NULL_LENGTH)
                else:
                    parts.append(_I32.pack(len(masked)))
                    parts.append(masked)
                carried_from = value_end
            pos = value_end
            column += 1
        # The columns after the last affected one are checked, not only copied: a row whose
        # lengths do not add up to its message is refused as a whole.
        while column < count:
            if pos + 4 > size:
                raise MalformedRow("DataRow ends inside a column length")
            (length,) = unpack(payload, pos)
            pos += 4
            if length > 0:
                pos += length
            elif length < -1:
                raise MalformedRow(f"DataRow column {column} has invalid length {length}")
            column += 1
        if pos != size:
            raise MalformedRow("DataRow lengths do not add up to its message length")
        if carried_from == 0:
            body = payload
        else:
            parts.append(payload[carried_from:])
            body = b"".join(parts)
        return b"D" + _I32.pack(len(body) + 4) + body


_STRATEGIES = {"redact": 0, "partial": 1, "hash": 2, "null": 3}
# The detectors the compiled core runs itself (on ASCII values), in the order of its step tuple.
_COMPILED_DETECTORS = ("email", "card", "ssn", "phone")


def _compiled_core(column_count: int, steps: tuple, changed: set):
    """The compiled core for these steps: a column masker that says how (``.compiled``) is done
    in C; any other is called from C as it is."""
    core_steps = []
    for column, masker in steps:
        how = getattr(masker, "compiled", None)
        kind, hmac, families, scan = _rowcore.STEP_PYTHON, None, 0, None
        strategies = (-1, 0) * len(_COMPILED_DETECTORS)
        if how is not None and how[0] == "hash_text":
            kind, hmac = _rowcore.STEP_HASH_TEXT, how[1].compiled(_rowcore)
        elif how is not None and how[0] == "detect_text":
            scanner, scan = how[1], how[2]
            kind = _rowcore.STEP_DETECT_TEXT
            prefilter = scanner.prefilter
            families = ((_rowcore.FAMILY_EMAIL if prefilter.email else 0) | (_rowcore.FAMILY_NUMERIC if prefilter.numeric else 0)
                        | (_rowcore.FAMILY_IBAN if prefilter.iban else 0) | (_rowcore.FAMILY_SECRET if prefilter.secret else 0))
            # Each detector's strategy as Scanner.mask applies it (strategy_of: null may read as redact).
            choices = [scanner.strategy_of(detector) for detector in _COMPILED_DETECTORS]
            strategies = tuple(value for choice in choices
                               for value in ((-1, 0) if choice is None else (_STRATEGIES[choice.strategy], choice.keep_last)))
            if any(choice is not None and choice.strategy == "hash" for choice in choices):
                hmac = scanner.hasher.compiled(_rowcore)
        core_steps.append((column, kind, masker, hmac, families, strategies, MAX_SCANNED_VALUE, scan))
    return _rowcore.RowCore(column_count, tuple(core_steps), changed, MalformedRow, _VALUE_ERRORS)


def apply_result_formats(fields: list, result_formats: Sequence[int]) -> list:
    """The fields as DataRows will carry them after a Bind with these result format codes.

    A RowDescription answering Describe of a *statement* reports format 0 for every
    column because formats are only chosen at Bind; plan with the Bind's codes
    (none: all text; one: all columns; else one per column), or describe the portal.
    """
    if not result_formats:
        formats = [0] * len(fields)
    elif len(result_formats) == 1:
        formats = [result_formats[0]] * len(fields)
    elif len(result_formats) == len(fields):
        formats = list(result_formats)
    else:
        raise MalformedRow(f"Bind has {len(result_formats)} result formats for {len(fields)} columns")
    return [f if f.format == fmt else replace(f, format=fmt) for f, fmt in zip(fields, formats)]
