"""Rewrites text so that no detection is left in clear: free text, JSON text, raw bytes.

A ``Scanner`` is built once per set of (detector -> strategy) and reused for
every value; its prefilter (``detectors.Prefilter``) runs a few C-speed checks
over a value's raw bytes and rejects most values without decoding them or
running any detector.
"""
from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass

from jitgate.masking import detectors
from jitgate.masking.errors import MalformedRow
from jitgate.masking.strategies import Hasher, render_detection


@dataclass(frozen=True)
class DetectorStrategy:
    strategy: str  # redact | partial | hash | null
    keep_last: int


# One string literal of JSON text (with its quotes), escapes included. An unterminated one
# runs to the end of the text instead of failing: a failed match would be retried from the
# next quote, and '"\\"\\"\\...' would cost quadratic time. Callers reject it.
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\Z)', re.S)
# A bare JSON number that could be a card number (cards stored as numbers).
_JSON_LONG_NUMBER = re.compile(r"(?<![\w.])[0-9]{13,19}(?![\w.])")
# JSON keys whose string value is a credential (Google service-account key files).
_SECRET_JSON_KEYS = frozenset({"private_key", "private_key_id"})
_JSON_COLON = re.compile(r"\s*:\s*")


class Scanner:
    """Masks every detection in a text according to the strategy of its detector."""

    __slots__ = ("_strategies", "_kinds", "_hasher", "prefilter", "_null_as_redact")

    def __init__(self, strategies: dict[str, DetectorStrategy], hasher: Hasher, *, null_as_redact: bool = False):
        if not strategies:
            raise ValueError("a scanner needs at least one detector")
        self._strategies = dict(strategies)
        self._kinds = frozenset(strategies)
        self._hasher = hasher
        self.prefilter = detectors.Prefilter(self._kinds)
        # Free text (error messages, logs) has no NULL: there the null strategy redacts.
        self._null_as_redact = null_as_redact

    @property
    def kinds(self) -> frozenset[str]:
        return self._kinds

    @property
    def hasher(self) -> Hasher:
        return self._hasher

    def strategy_of(self, kind: str) -> DetectorStrategy | None:
        """The strategy of one detector, as ``mask`` applies it (None: the detector is off).
        With ``null_as_redact`` a null strategy reads as redact."""
        choice = self._strategies.get(kind)
        if choice is not None and choice.strategy == "null" and self._null_as_redact:
            return DetectorStrategy("redact", choice.keep_last)
        return choice

    def families(self, raw: bytes) -> tuple[bool, bool, bool, bool] | None:
        """None when no detector can match these bytes (see ``detectors.Prefilter``)."""
        return self.prefilter.families(raw)

    def finds_any(self, text: str) -> bool:
        families = self.prefilter.families(text.encode("utf-8", "surrogatepass"))
        return families is not None and bool(detectors.find_all(text, self._kinds, families))

    def mask(self, text: str, families: tuple[bool, bool, bool, bool] | None = None) -> str | None:
        """The text with every detection replaced; the same object when nothing was found;
        None when a detection's strategy is null (the whole value becomes SQL NULL).

        ``families``: the prefilter's answer for this text's bytes, when the caller has it.
        """
        if families is None:
            families = self.prefilter.families(text.encode("utf-8", "surrogatepass"))
            if families is None:
                return text
        spans = detectors.find_all(text, self._kinds, families)
        if not spans:
            return text
        return self._replace(text, spans)

    def _replace(self, text: str, spans: list[detectors.Span]) -> str | None:
        out = []
        last = 0
        for start, end, kind in spans:
            choice = self._strategies[kind]
            strategy = choice.strategy
            if strategy == "null":
                if not self._null_as_redact:
                    return None
                strategy = "redact"
            out.append(text[last:start])
            out.append(render_detection(kind, text[start:end], strategy, choice.keep_last, self._hasher))
            last = end
        out.append(text[last:])
        return "".join(out)

    def mask_json(self, text: str, families: tuple[bool, bool, bool, bool] | None = None) -> str | None:
        """Masks inside JSON string values (and card numbers stored as JSON numbers) so the
        result stays valid JSON with the same structure, key order and number precision.

        Without backslashes a string's text is its value, and no detector can match
        across a quote (none of them matches '"'), so the document is scanned as one
        text and each detection is replaced where it is: inside a string by the bare
        replacement (markers, tokens and partials never need escaping), outside (a card
        number written as a JSON number) by a JSON string. With backslashes, escapes could
        hide a value (``\\u0040``, ``\\n`` in a PEM key), so each string is decoded,
        scanned and re-encoded.
        """
        if "\\" in text:
            return self._mask_json_strings(text)
        if families is None:
            families = self.prefilter.families(text.encode("utf-8", "surrogatepass"))
            if families is None:
                return text
        spans = detectors.find_all(text, self._kinds, families)
        if not spans:
            return text
        strings = [m.span() for m in _JSON_STRING.finditer(text)]
        if strings and (strings[-1][1] - strings[-1][0] < 2 or text[strings[-1][1] - 1] != '"'):
            raise MalformedRow("a JSON value has an unterminated string")
        string_starts = [start for start, _ in strings]
        out = []
        last = 0
        for start, end, kind in spans:
            choice = self._strategies[kind]
            strategy = choice.strategy
            if strategy == "null":
                if not self._null_as_redact:
                    return None
                strategy = "redact"
            replacement = render_detection(kind, text[start:end], strategy, choice.keep_last, self._hasher)
            index = bisect.bisect_right(string_starts, start) - 1
            inside_string = index >= 0 and end < strings[index][1]
            out.append(text[last:start])
            out.append(replacement if inside_string else _json_string(replacement))
            last = end
        out.append(text[last:])
        return "".join(out)

    def _mask_json_strings(self, text: str) -> str | None:
        out = []
        last = 0
        changed = False
        secret_choice = self._strategies.get("secret")
        pending_secret_key = False
        for m in _JSON_STRING.finditer(text):
            start, end = m.span()
            gap = text[last:start]
            if gap:
                masked_gap = self._mask_json_gap(gap)
                if masked_gap is None:
                    return None
                changed |= masked_gap is not gap
                out.append(masked_gap)
            token = m.group()
            if len(token) < 2 or not token.endswith('"') or (token.endswith('\\"') and _escaped_quote(token)):
                raise MalformedRow("a JSON value has an unterminated string")
            try:
                value = json.loads(token) if "\\" in token else token[1:-1]
            except ValueError as exc:  # a bad escape: not JSON as PostgreSQL would send it
                raise MalformedRow(f"a JSON value has an invalid string: {exc.args[0] if exc.args else exc}") from None
            is_key = _is_object_key(text, end)
            if pending_secret_key and not is_key and secret_choice is not None:
                masked = self._render_whole("secret", value, secret_choice)
            else:
                masked = self.mask(value)
            pending_secret_key = is_key and value in _SECRET_JSON_KEYS
            if masked is None:
                return None
            if masked is not value:
                changed = True
                out.append(_json_string(masked))
            else:
                out.append(token)
            last = end
        tail = text[last:]
        if tail:
            masked_tail = self._mask_json_gap(tail)
            if masked_tail is None:
                return None
            changed |= masked_tail is not tail
            out.append(masked_tail)
        return "".join(out) if changed else text

    def _render_whole(self, kind: str, value: str, choice: DetectorStrategy) -> str | None:
        if not value:
            return value
        if choice.strategy == "null":
            if not self._null_as_redact:
                return None
            return render_detection(kind, value, "redact", choice.keep_last, self._hasher)
        return render_detection(kind, value, choice.strategy, choice.keep_last, self._hasher)

    def _mask_json_gap(self, gap: str) -> str | None:
        """Outside strings only numbers live; a Luhn-valid card number becomes a JSON string."""
        choice = self._strategies.get("card")
        if choice is None or len(gap) < 13:
            return gap
        spans = [
            (m.start(), m.end(), "card")
            for m in _JSON_LONG_NUMBER.finditer(gap)
            if detectors.find_cards(m.group())
        ]
        if not spans:
            return gap
        out = []
        last = 0
        for start, end, kind in spans:
            if choice.strategy == "null" and not self._null_as_redact:
                return None
            strategy = "redact" if choice.strategy == "null" else choice.strategy
            out.append(gap[last:start])
            out.append(_json_string(render_detection(kind, gap[start:end], strategy, choice.keep_last, self._hasher)))
            last = end
        out.append(gap[last:])
        return "".join(out)


def _is_object_key(text: str, end: int) -> bool:
    """A string followed by ':' is an object key (a value is followed by ',', '}' or ']')."""
    m = _JSON_COLON.match(text, end)
    return m is not None and m.group().strip() == ":"


def _json_string(value: str) -> str:
    encoded = json.dumps(value, ensure_ascii=False)
    try:
        encoded.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate from a "\ud800" escape cannot be written as UTF-8; keep it escaped.
        encoded = json.dumps(value, ensure_ascii=True)
    return encoded


def _escaped_quote(token: str) -> bool:
    """True when the closing quote of a token is itself escaped (an odd run of backslashes)."""
    run = len(token) - 1 - len(token[:-1].rstrip("\\"))
    return run % 2 == 1
