"""Masker: turns a target's masking rules into per-result plans and masks free text.

How rules combine (policy order matters, the first match wins):

- A rule with ``columns`` and no ``detectors`` is a *column rule*: the whole
  value of a matching column is masked with its strategy. The first column rule
  that matches a column decides; detectors are not run on that column.
- A rule with ``detectors`` and no ``columns`` scans every text-like column.
- A rule with both scans only the columns it matches (e.g. detectors in
  ``notes`` only).
- When several detector rules name the same detector for a column, the first
  one's strategy is used.

A column matches a pattern by its name in the RowDescription (the alias, if the
query renamed it) and, when the broker passes ``column_names``, also by the
table column it comes from, so ``SELECT email AS e FROM users`` is still
masked. Table-qualified patterns (``customers.email``) match the unqualified
table name and the ``schema.table`` name.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import replace
from typing import Mapping, Protocol, Sequence

from jitgate.masking import columns as column_maskers
from jitgate.masking.copy import BinaryCopyPlan, CopyPlan
from jitgate.masking.errors import MaskingRefused
from jitgate.masking.lineage import StatementLineage
from jitgate.masking.rows import RowPlan
from jitgate.masking.scanner import DetectorStrategy, Scanner
from jitgate.masking.strategies import COLUMN_MARKER, Hasher, render_whole_text
from jitgate.policy import MaskingConfig, MaskingRule, compile_column_pattern

TEXT_OID = 25
# Which strategy shows least of a value: a derived value takes the strongest of its sources'.
STRATEGY_STRENGTH = {"partial": 0, "hash": 1, "redact": 2, "null": 3}


# Another session's statement text, literals included (`... WHERE email = 'ada@...'`), which
# PostgreSQL shows to every session of the same role in pg_stat_activity: every session through a
# target uses the target's held role, so without this rule any identity could read what another
# (even one in clear_groups) is sending right now. On targets with column rules, where values are
# masked by where they come from, it is masked like a column rule's column. The extension view
# pg_stat_statements shows them too: it replaces constants by $n in plannable statements, not in
# utility ones (SET, COPY, CREATE ...).
OTHER_SESSIONS_STATEMENTS = MaskingRule(columns=["pg_stat_activity.query", "pg_stat_statements.query"],
                                        strategy="redact")


def derived_strategy(strategy: str) -> str:
    """A derived value cannot be partially masked meaningfully: partial becomes redact."""
    return "redact" if strategy == "partial" else strategy


def _unknown_notice(reason: str) -> str:
    return (f"jitgate: the source columns of this result cannot be followed ({reason}); "
            "every column is masked (policy masking.unknown_lineage: mask_all)")


class FieldLike(Protocol):
    """What ``plan`` reads of ``broker.pg.codec.FieldDescription``."""

    name: str
    table_oid: int
    column_attr: int
    type_oid: int
    type_modifier: int
    format: int


# "Key (email)=(bob@example.com) already exists." and its siblings in constraint errors: the
# values end at the first ")" followed by one of these (scanned in one pass, see _key_details).
_KEY_OPEN = "Key ("
_KEY_VALUE_ENDS = (" already exists", " is not present", " is still referenced", " conflicts with", ".")
# "Failing row contains (1, bob@example.com, ...)." (NOT NULL and CHECK violations).
_FAILING_ROW = "Failing row contains ("
# Free text (error and notice fields) longer than this is masked up to here and cut: text
# a client can make the server echo must not cost unbounded work.
MAX_FREE_TEXT = 64 * 1024
# A double-quoted fragment of an error message (linear: no nested quantifiers).
_QUOTED = re.compile(r'"[^"]*"')
_DIGITS = re.compile(r"\d+")
ERROR_TEXT_WITHHELD = ("[withheld by jitgate: the statement reads masked columns, and this text may quote "
                       "what it read; the SQLSTATE says what failed]")
TRUNCATED_MARKER = "[truncated by jitgate]"
# Sets of lineage sources whose sensitive columns a Masker keeps (Masker.sensitive).
SENSITIVE_CACHE_SIZE = 1024


class Masker:
    """The masking engine of one target. Pure: no I/O, safe to share between sessions."""

    def __init__(self, config: MaskingConfig, hmac_key: bytes):
        # What a worker process rebuilds this masker from (broker/sql_worker.py: long free text).
        self.spec = (config.model_dump_json(), hmac_key)
        self._rules: tuple[MaskingRule, ...] = tuple(config.rules)
        self._hasher = Hasher(hmac_key) if self._rules else None
        self._column_rules = tuple(r for r in self._rules if r.columns and not r.detectors)
        self._detector_rules = tuple(r for r in self._rules if r.detectors)
        # Decides a whole result when its lineage is unknown: the policy's own rules only (its
        # column rules when it has some: they say how strongly this target hides a value).
        decisive = self._column_rules or self._detector_rules
        self._strongest_rule = self._strongest(decisive) if decisive else None
        if self._column_rules:
            self._column_rules += (OTHER_SESSIONS_STATEMENTS,)
        self._scanners: dict[tuple, Scanner] = {}
        self._sensitive: dict[frozenset, tuple[str, ...]] = {}
        free_text = _first_strategy_per_detector(self._detector_rules)
        # Free text has no column, so every detector of every rule applies to it.
        self._free_text_scanner = (
            Scanner(free_text, self._hasher, null_as_redact=True) if free_text and self._hasher else None
        )

    @property
    def active(self) -> bool:
        return bool(self._rules)

    # --- result sets ---

    def plan(
        self,
        fields: Sequence[FieldLike],
        table_names: Mapping[int, str],
        column_names: Mapping[tuple[int, int], str] | None = None,
        lineage: StatementLineage | None = None,
    ) -> RowPlan | None:
        """A plan for the DataRows that follow this RowDescription; None when nothing can need masking.

        ``table_names``: table OID -> 'table' or 'schema.table' from the catalog.
        ``column_names`` (optional): (table OID, attribute number) -> the table column's
        name, so that renaming a column in the query does not escape a column rule.
        ``lineage`` (from ``lineage.follow``): where each result column comes from. A column
        derived from a column under a column rule is masked whole with the strongest strategy
        of its sources; when the lineage is unknown, or does not fit these fields, every
        column is (``fail_closed``). Without ``lineage`` only names and detectors count.
        The fields' ``format`` must be the one the DataRows use (see ``apply_result_formats``).
        """
        if not self._rules:
            return None
        columns = None
        unknown = None
        if lineage is not None:
            if lineage.unknown:
                unknown = lineage.unknown
            elif lineage.columns is None or len(lineage.columns) != len(fields):
                unknown = "the result's columns do not match the statement as the gateway parsed it"
            else:
                columns = lineage.columns
        steps = []
        masked = []
        reasons = {}
        for index, field in enumerate(fields):
            binary = column_maskers.check_format(field.format, field.name)
            if unknown is not None:
                rule = self._strongest_rule
                strategy = derived_strategy(rule.strategy)
                steps.append((index, column_maskers.whole_value_masker(
                    field.type_oid, field.type_modifier, binary, strategy, rule.keep_last, self._hasher)))
                masked.append(field.name)
                reasons[index] = f"lineage unknown ({unknown}): every column masked, {strategy}"
                continue
            candidates = [(table_names.get(field.table_oid), [field.name])]
            if column_names and field.table_oid:
                source = column_names.get((field.table_oid, field.column_attr))
                if source and source != field.name:
                    candidates[0][1].append(source)
            column = columns[index] if columns is not None else None
            if column is not None:
                candidates += [(table, [name] if name else None) for table, name in sorted(column.sources, key=str)]
            if column is not None and not column.direct:
                masker, reason = self._derived_masker(column, candidates, field, binary, lineage.non_text_sources)
            else:
                masker, reason = self._masker_for(candidates, field.type_oid, field.type_modifier, binary)
            if masker is not None:
                steps.append((index, masker))
                masked.append(field.name)
                reasons[index] = reason
        if not steps:
            return None
        return RowPlan(len(fields), steps, masked, reasons=reasons,
                       notice=_unknown_notice(unknown) if unknown is not None else None)

    def _derived_masker(self, column, candidates, field, binary: bool, non_text: frozenset = frozenset()):
        """A value computed from sensitive columns cannot be partially masked: whole, strongest.

        Sensitive here means under a column rule, or scanned by a detector rule: a detector sees
        only a value's shape, and ``translate(notes, '0123456789', '０１２３４５６７８９')`` or
        ``regexp_replace(notes, '(\\d)', '\\1-', 'g')`` changes the shape, not the value. So a
        value derived from a column detectors scan (any type that may hold text) is masked whole
        too; one derived only from numbers, dates or booleans (``non_text``) is scanned as usual.
        """
        rules = [r for r in self._column_rules if any(self._rule_matches(r, table, names) for table, names in candidates)]
        scanned = self._scanned_sources(column.sources, non_text)
        detector_rules = [r for r in self._detector_rules if any(self._detector_applies(r, t, c) for t, c in scanned)]
        if not rules and not detector_rules:
            return self._masker_for(candidates, field.type_oid, field.type_modifier, binary)
        rule = self._strongest(rules + detector_rules)
        strategy = derived_strategy(rule.strategy)
        named = sorted({f"{t}.{c}" if c else f"{t}.*" for t, c in column.sources
                        if any(self._rule_matches(r, t, [c] if c else None) for r in rules)}
                       | {f"{t}.{c}" if c else f"{t}.*" for t, c in scanned
                          if any(self._detector_applies(r, t, c) for r in detector_rules)})
        what = (f"column rule {', '.join(rule.columns)}" if not rule.detectors
                else f"scanned by detectors {', '.join(rule.detectors)}")
        reason = f"derived from {', '.join(named) or field.name} ({what}: {rule.strategy}): whole value, {strategy}"
        return column_maskers.whole_value_masker(field.type_oid, field.type_modifier, binary, strategy,
                                                 rule.keep_last, self._hasher), reason

    def _scanned_sources(self, sources, non_text: frozenset) -> list:
        """The sources detectors would scan if read directly: a type that may hold text, and no
        column rule (which masks them whole anyway)."""
        if not self._detector_rules:
            return []
        return [(t, c) for t, c in sources if (t, c) not in non_text
                and not any(self._rule_matches(r, t, [c] if c else None) for r in self._column_rules)]

    def _detector_applies(self, rule: MaskingRule, table: str | None, column: str | None) -> bool:
        if not rule.columns:
            return True
        if column is None:
            return self._rule_may_apply(rule, table)
        return _matches(rule.columns, [column], table)

    def _rule_matches(self, rule: MaskingRule, table: str | None, names: list[str] | None) -> bool:
        if names is None:  # every column of a table whose columns are unknown
            return self._rule_may_apply(rule, table)
        return _matches(rule.columns, names, table)

    @staticmethod
    def _strongest(rules: Sequence[MaskingRule]) -> MaskingRule:
        return max(rules, key=lambda r: STRATEGY_STRENGTH[r.strategy])

    def reads_masked(self, lineage: StatementLineage | None) -> bool:
        """Does this statement read a column under a column rule (or can that not be ruled out)?
        Its error and notice texts then hide what PostgreSQL quotes from the values it read."""
        if lineage is None or not self._rules:
            return False
        if lineage.unknown:
            return True
        sources = set(lineage.predicate_sources)
        for column in lineage.columns or ():
            sources |= column.sources
        return bool(self.sensitive(sources, lineage.non_text_sources))

    def error_fields(self, fields: dict, sql: str, lineage: StatementLineage | None) -> dict:
        """The fields of an ErrorResponse or NoticeResponse that answers ``sql``, with what may
        carry a value it read taken out, when the statement reads masked columns.

        What PostgreSQL writes into an error at run time is data: quoted (``SELECT
        reverse(email)::int``: 'invalid input syntax for type integer: "moc.elpmaxe@ada"'; a
        ``::regclass`` cast: 'relation "ada#example,com" does not exist', class 42 though raised
        at run time), after a colon and unquoted ('date field value out of range: 100-13-01'
        from ``make_date(ascii(substr(email, 2, 1)), 13, 1)``, a character a call), or in the
        detail and context (a JSON error's 'JSON data, line 1: ada...'). The SQLSTATE cannot
        tell them from the caller's own mistakes; the position can: an error PostgreSQL raises
        while it reads the statement points into its text (``P``), one raised by a value does not.

        - With a position (syntax, an undefined column or function, a type mismatch): the text
          stays, but a quoted fragment only when it is what the position points at.
        - Without one: the message is kept up to its first ': ', with every quoted fragment and
          every number in it redacted; detail, hint and context are withheld.
        - Code the gateway cannot see (``runs_user_code``: RAISE can write any text, with any
          SQLSTATE and position): the message is withheld whole.
        The SQLSTATE and the position always stay, so a client still tells failures apart and
        shows where a statement went wrong. Keeping what "the statement holds" would be an oracle:
        a statement can list every short candidate value."""
        if not self.reads_masked(lineage):
            return fields
        redacted = '"' + COLUMN_MARKER + '"'
        out = dict(fields)
        if lineage is not None and lineage.runs_user_code:
            for key in ("M", "D", "H", "W"):
                if out.get(key):
                    out[key] = ERROR_TEXT_WITHHELD
            return out
        position = out.get("P", "")
        if position.isdigit() and 0 < int(position) <= len(sql or ""):
            pointed = sql[int(position) - 1:].lstrip('"').lower()

            def keep_if_pointed(match) -> str:
                inner = match.group(0)[1:-1]
                return match.group(0) if inner and pointed.startswith(inner.lower()) else redacted

            for key in ("M", "D", "H", "W", "q"):
                if out.get(key):
                    out[key] = _QUOTED.sub(keep_if_pointed, out[key])
            return out
        head, colon, _ = out.get("M", "").partition(": ")
        out["M"] = _DIGITS.sub(COLUMN_MARKER, _QUOTED.sub(redacted, head)) + (": " + redacted if colon else "")
        for key in ("D", "H", "W"):
            if out.get(key):
                out[key] = ERROR_TEXT_WITHHELD
        if out.get("q"):
            out["q"] = _QUOTED.sub(redacted, out["q"])
        return out

    def sensitive(self, sources, non_text: frozenset = frozenset()) -> list[str]:
        """The table columns among ``sources`` (lineage Sources) that masking protects: a column
        rule masks them, or a detector rule scans them (``non_text``: the sources whose type
        never holds text, which detectors do not scan).

        Asked for every statement (its predicate sources): the answer depends only on the
        sources, their types and this masker's rules, so it is kept per set of sources (bounded)."""
        sources = sources if isinstance(sources, frozenset) else frozenset(sources)
        key = (sources, non_text)
        found = self._sensitive.get(key)
        if found is None:
            ruled = {(table, column) for table, column in sources
                     if any(self._rule_matches(r, table, [column] if column else None) for r in self._column_rules)}
            ruled |= {(t, c) for t, c in self._scanned_sources(sources, non_text)
                      if any(self._detector_applies(r, t, c) for r in self._detector_rules)}
            found = tuple(sorted({f"{table}.{column}" if column else f"{table}.*" for table, column in ruled}))
            if len(self._sensitive) >= SENSITIVE_CACHE_SIZE:
                self._sensitive.clear()
            self._sensitive[key] = found
        return list(found)

    def fail_closed_notice(self, reason: str) -> str:
        return _unknown_notice(reason)

    @property
    def has_column_rules(self) -> bool:
        return bool(self._column_rules)

    @property
    def follows_lineage(self) -> bool:
        """Does a result need its statement's lineage? Column rules do (an expression escapes a
        name), and so do detector rules (an expression escapes a shape)."""
        return bool(self._column_rules or self._detector_rules)

    def plan_copy(
        self,
        column_names: Sequence[str] | None,
        table: str | None,
        *,
        format: str = "text",
        type_oids: Sequence[int] | None = None,
        delimiter: str | None = None,
        null: str | None = None,
        header: bool = False,
        quote: str | None = None,
        escape: str | None = None,
    ) -> CopyPlan | None:
        """A plan for the rows of ``COPY ... TO STDOUT``; None when nothing can need masking.

        ``column_names``: the copied columns in order, when the broker knows them (from
        the statement's column list or the catalog); ``table``: the copied table.
        ``type_oids`` (optional, same order) lets hashes of non-text columns keep their
        type; without it every field is treated as text. ``delimiter``/``null``/``header``
        are the COPY options (defaults: tab and ``\\N`` for text, ',' and '' for CSV).
        """
        if not self._rules:
            return None
        if format == "binary":
            raise MaskingRefused(
                "COPY ... TO STDOUT (FORMAT binary) cannot be masked without the columns' types: "
                "use FORMAT text or FORMAT csv, or SELECT the rows"
            )
        text_options = _copy_text_options(format, delimiter, null, quote, escape)
        if type_oids is not None and (column_names is None or len(type_oids) != len(column_names)):
            raise ValueError("type_oids must give one type per copied column")
        maskers: dict[int, column_maskers.ValueMasker] = {}
        every_field = None
        if column_names is None:
            if self._column_rules_may_apply(table):
                raise MaskingRefused(
                    "this COPY does not name its columns, so column masking rules cannot be applied; "
                    "list the columns (COPY t (a, b) TO STDOUT) or use SELECT"
                )
            # Detector rules scoped to some columns are applied to every field: over-masking
            # a little is the safe side of not knowing which field is which.
            if self._detector_rules:
                every_field = column_maskers.detector_masker(
                    TEXT_OID, -1, False, self._scanner_for(list(self._detector_rules))
                )
        else:
            for index, name in enumerate(column_names):
                type_oid = type_oids[index] if type_oids is not None else TEXT_OID
                masker, _ = self._masker_for([(table, [name])], type_oid, -1, False)
                if masker is not None:
                    maskers[index] = masker
        if not maskers and every_field is None:
            return None
        return CopyPlan(maskers, every_field, header=header, **text_options)

    def plan_copy_fields(
        self,
        fields: Sequence[FieldLike],
        table_names: Mapping[int, str],
        column_names: Mapping[tuple[int, int], str] | None,
        lineage: StatementLineage | None,
        *,
        format: str = "text",
        delimiter: str | None = None,
        null: str | None = None,
        header: bool = False,
        quote: str | None = None,
        escape: str | None = None,
    ) -> CopyPlan | BinaryCopyPlan | None:
        """A COPY TO STDOUT plan from the copied columns as the catalog (or a Describe) knows
        them: the same decisions as ``plan`` makes for a result with these columns, lineage
        included, applied to text, CSV or binary COPY data."""
        if not self._rules:
            return None
        binary = format == "binary"
        text_options = None if binary else _copy_text_options(format, delimiter, null, quote, escape)
        fields = [replace(f, format=1 if binary else 0) for f in fields]
        rows = self.plan(fields, table_names, column_names, lineage)
        if rows is None:
            return None
        maskers = dict(rows.steps)
        if binary:
            return BinaryCopyPlan(maskers, len(fields))
        return CopyPlan(maskers, None, header=header, **text_options)

    # --- free text ---

    def mask_text(self, text: str, *, table: str | None = None, limit: int = MAX_FREE_TEXT) -> str:
        """Masks free text: ErrorResponse/NoticeResponse fields, log lines, statement parameters.

        Text longer than ``limit`` characters is masked up to it and cut (TRUNCATED_MARKER). The
        recording passes a larger limit for what the client sent (broker/session.MAX_RECORDED_TEXT).

        Values in a constraint error's ``Key (col)=(value)`` are masked by the column rule of
        their column; a ``Failing row contains (...)`` tuple is redacted whole when a column
        rule could apply (its columns are not named). The null strategy redacts here.
        """
        if not self._rules or not text:
            return text
        if len(text) > limit:
            text = text[:limit] + TRUNCATED_MARKER
        if self._column_rules:
            if _KEY_OPEN in text:
                text = self._mask_key_details(text, table)
            start = text.find(_FAILING_ROW)
            if start >= 0 and self._column_rules_may_apply(table):
                # Greedy, as PostgreSQL prints it: the tuple runs to the last ")" of the text.
                body = start + len(_FAILING_ROW)
                close = text.rfind(")")
                if close >= body:
                    text = text[:body] + COLUMN_MARKER + text[close:]
        if self._free_text_scanner is not None:
            masked = self._free_text_scanner.mask(text)
            if masked is not None:
                text = masked
        return text

    def _mask_key_details(self, text: str, table: str | None) -> str:
        """Every ``Key (cols)=(values)`` with its values masked by their columns' rules.

        Linear in the text: the possible ends of a values list (a ")" followed by one of
        _KEY_VALUE_ENDS or the end of the text) are found in one pass, and each "Key ("
        takes the first end after it (what a lazy regex would find, without rescanning).
        """
        ends = [i for i in _find_all(text, ")")
                if i + 1 == len(text) or any(text.startswith(tail, i + 1) for tail in _KEY_VALUE_ENDS)]
        out = []
        last = 0
        pos = text.find(_KEY_OPEN)
        while pos >= 0:
            names_start = pos + len(_KEY_OPEN)
            # The column list holds no parentheses: look for ")" only up to the next "(", so
            # the scans of successive "Key (" never overlap.
            opening = text.find("(", names_start)
            close = text.find(")", names_start, opening if opening >= 0 else len(text))
            if close < 0 or not text.startswith("=(", close + 1):
                pos = text.find(_KEY_OPEN, pos + 1)
                continue
            values_start = close + 3
            k = bisect.bisect_left(ends, values_start)
            if k == len(ends):
                break
            end = ends[k]
            out.append(text[last:pos])
            out.append(self._mask_key_detail(text[names_start:close], text[values_start:end], table))
            last = end + 1
            pos = text.find(_KEY_OPEN, last)
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)

    def _mask_key_detail(self, columns: str, values_text: str, table: str | None) -> str:
        names = [n.strip().strip('"') for n in columns.split(",")]
        values = values_text.split(", ")
        rules = [self._column_rule_for([n], table) for n in names]
        if not any(rules):
            return f"Key ({columns})=({values_text})"
        if len(values) != len(names):
            # A value holds ", ": no way to tell the values apart, so hide them all.
            return f"Key ({columns})=({COLUMN_MARKER})"
        shown = []
        for value, rule in zip(values, rules):
            if rule is None:
                shown.append(value)
            else:
                strategy = "redact" if rule.strategy == "null" else rule.strategy
                shown.append(render_whole_text(value, strategy, rule.keep_last, self._hasher))
        return f"Key ({columns})=({', '.join(shown)})"

    # --- rule resolution ---

    def _masker_for(
        self, candidates: list, type_oid: int, type_modifier: int, binary: bool
    ) -> tuple[column_maskers.ValueMasker | None, str]:
        """``candidates``: (table, column names) the value is known by; the first column rule in
        policy order that matches any of them decides, else the detector rules that apply."""
        for rule in self._column_rules:
            if any(self._rule_matches(rule, table, names) for table, names in candidates):
                return column_maskers.whole_value_masker(
                    type_oid, type_modifier, binary, rule.strategy, rule.keep_last, self._hasher
                ), f"column rule {', '.join(rule.columns)}: {rule.strategy}"
        applicable = [r for r in self._detector_rules
                      if not r.columns or any(names is not None and _matches(r.columns, names, table)
                                              for table, names in candidates)]
        if not applicable:
            return None, ""
        scanner = self._scanner_for(applicable)
        reason = "detectors " + ", ".join(sorted(scanner.kinds))
        return column_maskers.detector_masker(type_oid, type_modifier, binary, scanner), reason

    def _column_rule_for(self, names: list[str], table: str | None) -> MaskingRule | None:
        for rule in self._column_rules:
            if _matches(rule.columns, names, table):
                return rule
        return None

    def _column_rules_may_apply(self, table: str | None) -> bool:
        """Could a column rule match some column of this table (whose columns we do not know)?"""
        return any(self._rule_may_apply(rule, table) for rule in self._column_rules)

    @staticmethod
    def _rule_may_apply(rule: MaskingRule, table: str | None) -> bool:
        tables = _table_candidates(table)
        for pattern in rule.columns:
            if not pattern.rpartition(".")[0] or table is None:
                return True
            table_match = compile_column_pattern(pattern)[0]
            if any(table_match(t) is not None for t in tables if t is not None):
                return True
        return False

    def _scanner_for(self, rules: list[MaskingRule]) -> Scanner:
        strategies = _first_strategy_per_detector(rules)
        key = tuple(sorted((k, s.strategy, s.keep_last) for k, s in strategies.items()))
        scanner = self._scanners.get(key)
        if scanner is None:
            scanner = self._scanners[key] = Scanner(strategies, self._hasher)
        return scanner


def _first_strategy_per_detector(rules: Sequence[MaskingRule]) -> dict[str, DetectorStrategy]:
    strategies: dict[str, DetectorStrategy] = {}
    for rule in rules:
        for kind in rule.detectors:
            strategies.setdefault(kind, DetectorStrategy(rule.strategy, rule.keep_last))
    return strategies


def _table_candidates(table: str | None) -> list[str | None]:
    if table is None:
        return [None]
    table = table.lower()
    if "." in table:
        return [table, table.rpartition(".")[2]]
    return [table]


def _matches(patterns: Sequence[str], names: Sequence[str], table: str | None) -> bool:
    """``column_matches`` for any pattern, table candidate and name, with each name lowered once."""
    tables = None
    lowered = [n.lower() for n in names]
    for pattern in patterns:
        table_match, column_match = compile_column_pattern(pattern)
        if table_match is not None:
            if tables is None:
                tables = [t for t in _table_candidates(table) if t is not None]
            if not any(table_match(t) is not None for t in tables):
                continue
        if any(column_match(n) is not None for n in lowered):
            return True
    return False


def _find_all(text: str, needle: str):
    i = text.find(needle)
    while i >= 0:
        yield i
        i = text.find(needle, i + 1)


def _copy_text_options(format: str, delimiter, null, quote, escape) -> dict:
    """CopyPlan's options for text or CSV COPY, checked as PostgreSQL checks them."""
    if format not in ("text", "csv"):
        raise MaskingRefused(f"unknown COPY format {format!r}; use text, csv or binary")
    csv = format == "csv"
    if not csv and (quote is not None or escape is not None):
        raise MaskingRefused("COPY QUOTE and ESCAPE are only available in CSV mode")
    delimiter_b = (delimiter if delimiter is not None else ("," if csv else "\t")).encode()
    null_b = (null if null is not None else ("" if csv else "\\N")).encode()
    quote_b = (quote if quote is not None else '"').encode()
    escape_b = escape.encode() if escape is not None else quote_b
    for name, value in (("DELIMITER", delimiter_b), ("QUOTE", quote_b), ("ESCAPE", escape_b)):
        if len(value) != 1:
            raise MaskingRefused(f"COPY {name} must be a single one-byte character")
    if delimiter_b in (b"\n", b"\r") or (not csv and delimiter_b == b"\\"):
        raise MaskingRefused("COPY DELIMITER cannot be newline, carriage return or (text) backslash")
    if csv and (delimiter_b == quote_b or delimiter_b in null_b or quote_b in null_b):
        raise MaskingRefused("COPY DELIMITER, QUOTE and NULL must not overlap")
    return {"csv": csv, "delimiter": delimiter_b, "null": null_b, "quote": quote_b, "escape": escape_b}
