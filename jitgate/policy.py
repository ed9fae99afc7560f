"""The policy file: one YAML document that says who may reach what, and on what terms.

Loading validates everything up front and reports problems as
``policy.yaml:12: targets.demo.allow.gruops: unknown field (did you mean 'groups'?)``
so that a typo never silently widens or narrows access.

Both the broker and the functions load the same file through ``load_policy``.
"""
from __future__ import annotations

import difflib
import fnmatch
import functools
import hashlib
import logging
import re
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Guardrail classes. SQL classes come from jitgate.guardrails.sql, shell/exec classes
# from jitgate.guardrails.shell; the policy only needs the names.
SQL_CLASSES = (
    "read",
    "dml_bounded",
    "dml_unbounded",
    "ddl",
    "drop_database",
    "privilege",
    "copy_program",
    "server_admin",
    "procedural",
    "side_effect_function",
    "transaction",
    "session",
    "unclassified",
    "pinned_setting",
)
# -- masking (set by the masking lineage step, broker/pg/masking_step.masking_verdict, not by the
# classifier): a WHERE/JOIN/ORDER BY/GROUP BY that reads a masked column (default allow, recorded);
# a value read from a masked column written into a table (default approve: masking follows it
# back within the writing session only) --
MASKING_CLASSES = ("sensitive_predicate", "sensitive_write")
EXEC_CLASSES = (
    "command",
    "privilege",
    "destructive",
    "service_control",
    "package_change",
    "system_write",
    "shell",
    "unclassified",
)
ALL_CLASSES = tuple(dict.fromkeys(SQL_CLASSES + EXEC_CLASSES + MASKING_CLASSES))

Action = Literal["allow", "deny", "approve"]

# What a target does with each class when the policy says nothing. Reads and
# ordinary writes pass; anything that changes shape, privileges or the server
# waits for a human; what cannot be classified is refused (fail closed).
DEFAULT_GUARDRAILS: dict[str, str] = {
    "read": "allow",
    "dml_bounded": "allow",
    "transaction": "allow",
    "session": "allow",
    "command": "allow",
    "shell": "allow",
    "dml_unbounded": "approve",
    "ddl": "approve",
    "drop_database": "approve",
    "privilege": "approve",
    "copy_program": "deny",
    "server_admin": "approve",
    "procedural": "approve",
    "side_effect_function": "approve",
    "destructive": "approve",
    "service_control": "approve",
    "package_change": "approve",
    "system_write": "approve",
    "unclassified": "deny",
    "pinned_setting": "deny",
    "sensitive_predicate": "allow",
    "sensitive_write": "approve",
}

# --- classes no policy can open ---------------------------------------------------
# pinned_setting: a change of a setting that decides how PostgreSQL reads SQL text
# (standard_conforming_strings, client_encoding, backslash_quote). The SQL guardrails
# are only right while these keep the values the gateway pins, so it is always refused.
ALWAYS_DENIED = {
    "pinned_setting": "the SQL guardrails read statements under the pinned lexing settings "
                      "(standard_conforming_strings, client_encoding, backslash_quote), so changing them is always refused",
}


def _check_not_always_denied(value: dict[str, str]) -> None:
    for klass, action in value.items():
        if klass in ALWAYS_DENIED and action != "deny":
            raise ValueError(f"guardrail class {klass!r} cannot be set to {action!r}: {ALWAYS_DENIED[klass]}")

# Rows a statement may change before it waits for a human (Target.max_rows_changed).
DEFAULT_MAX_ROWS_CHANGED = 100

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> int:
    """'90s', '15m', '1h', '2d' or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '15m' or '1h'")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError("a duration must be positive")
        return int(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration; write it like '30s', '15m', '1h' or '2d'")
    seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IdentityConfig(_Strict):
    """Which OIDC issuer the gateway trusts."""

    issuer: str
    audience: str | list[str]
    groups_claim: str = "groups"
    # Claims tried in order to name the person (the first present wins).
    username_claims: list[str] = Field(default_factory=lambda: ["email", "preferred_username", "sub"])
    # The one identity per person where approvals apply (requester and approver are compared by it):
    # the verified email (email_verified must be true), or another claim the IdP guarantees unique.
    identity_claim: str = "email"
    leeway_seconds: int = Field(default=30, ge=0, le=300)
    algorithms: list[Literal["RS256", "ES256"]] = Field(default_factory=lambda: ["RS256", "ES256"])

    @property
    def audiences(self) -> list[str]:
        return [self.audience] if isinstance(self.audience, str) else list(self.audience)


class AccessRule(_Strict):
    groups: list[str] = Field(default_factory=list)
    users: list[str] = Field(default_factory=list)

    def admits(self, username: str, groups: frozenset[str]) -> bool:
        user = username.lower()
        return any(u.lower() == user for u in self.users) or bool(groups.intersection(self.groups))


# --- shell commands and shells (SSH exec, kubectl exec, the agent exec tool) ----------

ShellsAction = Literal["allow", "approve", "deny"]
_ACTION_RANK = {"deny": 0, "approve": 1, "allow": 2}


class CommandsPolicy(_Strict):
    """``commands``: which shell commands run without a human.

    ``denylist`` (the default): every command runs unless a guardrail class
    (``destructive``, ``privilege`` ...) says otherwise. ``allowlist``: only
    commands on the built-in read-only list (``jitgate.guardrails.readonly``,
    shown in README.md) and the ``allow`` entries run; every other command is
    held for approval (``approve_others: true``) or refused. The guardrail
    classes still apply on top, and name what a held command would do.
    """

    mode: Literal["denylist", "allowlist"] = "denylist"
    # Extra read-only entries: a command name ("uptime") or a word prefix ("git fetch").
    allow: list[str] = Field(default_factory=list)
    approve_others: bool = True

    @field_validator("allow")
    @classmethod
    def _entries(cls, value: list[str]) -> list[str]:
        for entry in value:
            words = entry.split()
            if not words:
                raise ValueError("an allow entry is empty; write a command name such as 'uptime' or 'git fetch'")
            bad = next((c for c in entry if c in ";|&<>$`()\\*?[]{}'\"\n"), None)
            if bad is not None:
                raise ValueError(f"allow entry {entry!r} contains {bad!r}; entries are plain words (a command name "
                                 "and optionally its first arguments), matched against the parsed command")
        return value

    @model_validator(mode="after")
    def _allow_needs_allowlist(self) -> "CommandsPolicy":
        if self.allow and self.mode != "allowlist":
            raise ValueError("'allow' entries only apply with mode: allowlist")
        return self

    def permissiveness(self) -> tuple[int, int]:
        return (1 if self.mode == "denylist" else 0, 1 if self.approve_others else 0)


class GuardrailOverride(_Strict):
    """Per-group exceptions, e.g. the dba group may run DDL without approval,
    people may open shells while agents get an allow-list."""

    groups: list[str]
    guardrails: dict[str, Action] = Field(default_factory=dict)
    # Measured blast radius: a different row limit for these groups (see Target.max_rows_changed).
    max_rows_changed: int | None = Field(default=None, ge=0)
    commands: CommandsPolicy | None = None
    shells: ShellsAction | None = None

    @field_validator("guardrails")
    @classmethod
    def _known_classes(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_classes(value)

    @model_validator(mode="after")
    def _says_something(self) -> "GuardrailOverride":
        if not self.guardrails and self.commands is None and self.shells is None and self.max_rows_changed is None:
            raise ValueError("an override needs 'guardrails', 'commands', 'shells' or 'max_rows_changed'")
        return self


class ApprovalConfig(_Strict):
    approver_groups: list[str] = Field(default_factory=list)
    approver_users: list[str] = Field(default_factory=list)
    required: int = Field(default=1, ge=1, le=10)
    ttl: int = 3600
    # How long the broker holds a statement waiting for a decision before it gives up.
    wait: int = 300
    # After an approval, the same statement may run again within this window without a new prompt.
    grant_window: int = 900
    slack_channel: str | None = None
    # JIT: an approval unlocks the whole session for this long instead of one statement.
    session_access: int | None = None

    @field_validator("ttl", "wait", "session_access", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @field_validator("grant_window", mode="before")
    @classmethod
    def _grant_window(cls, value: Any) -> Any:
        # 0 means a one-time grant: the approved statement runs once, then the approval is consumed.
        return 0 if value in (0, "0", "0s") else parse_duration(value)


class MaskingRule(_Strict):
    # Column name patterns (fnmatch, case-insensitive) or "table.column".
    columns: list[str] = Field(default_factory=list)
    detectors: list[Literal["email", "card", "iban", "ssn", "phone", "secret"]] = Field(default_factory=list)
    strategy: Literal["redact", "partial", "hash", "null"] = "redact"
    keep_last: int = Field(default=4, ge=0, le=16)

    @model_validator(mode="after")
    def _something_to_match(self) -> "MaskingRule":
        if not self.columns and not self.detectors:
            raise ValueError("a masking rule needs 'columns' or 'detectors'")
        return self


class MaskingConfig(_Strict):
    clear_groups: list[str] = Field(default_factory=list)
    rules: list[MaskingRule] = Field(default_factory=list)
    # -- column lineage (masking) --
    # A statement whose result columns cannot be traced to table columns (a function that
    # is not built in, a temporary table, FETCH...): mask every column of its result
    # (mask_all), or hold it for an approver first (approve; its result is masked all the same).
    unknown_lineage: Literal["mask_all", "approve"] = "mask_all"


class Target(_Strict):
    kind: Literal["postgres", "ssh", "kubernetes"]
    address: str
    description: str = ""
    # postgres
    database: str | None = None
    # the upstream account the broker logs in as, and where its secret lives
    username: str | None = None
    credential: str | None = None
    tls: Literal["disable", "prefer", "require", "verify-full"] = "prefer"
    # ssh: the upstream host key (OpenSSH public key line) the broker expects
    host_key: str | None = None
    allow_port_forwarding: bool = False
    allow_agent_forwarding: bool = False
    allow_x11: bool = False
    allow_file_transfer: bool = True
    # kubernetes
    namespaces: list[str] = Field(default_factory=list)
    protected_namespaces: list[str] = Field(default_factory=list)
    ca_certificate: str | None = None

    allow: AccessRule
    guardrails: dict[str, Action] = Field(default_factory=dict)
    overrides: list[GuardrailOverride] = Field(default_factory=list)
    approvals: ApprovalConfig = Field(default_factory=ApprovalConfig)
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    # Time-boxed access: every session needs an approval before it starts.
    session_approval: bool = False
    # --- measured blast radius (broker/pg/measure.py) ---
    # A statement that changes rows runs inside a savepoint; if it changed more rows than
    # this (counted by PostgreSQL, triggers and functions included), it is rolled back and
    # held for approval. 0: every change needs approval.
    max_rows_changed: int = Field(default=DEFAULT_MAX_ROWS_CHANGED, ge=0)
    # Shell commands (ssh, kubernetes): deny-list of classes, or an allow-list of read-only commands.
    commands: CommandsPolicy = Field(default_factory=CommandsPolicy)
    # Shells that are not one exec command: interactive PTY sessions, `ssh host` fed on stdin,
    # `kubectl exec -it pod -- sh`. approve holds the session for a human (time-boxed by
    # approvals.session_access when it is set).
    shells: ShellsAction = "allow"
    # stdin of non-PTY sessions is recorded up to this many bytes; beyond, its SHA-256 and size.
    record_stdin_bytes: int = Field(default=64 * 1024, ge=0, le=16 * 1024 * 1024)

    @field_validator("guardrails")
    @classmethod
    def _known_classes(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_classes(value)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not host:port")
        return value

    @model_validator(mode="after")
    def _kind_fields(self) -> "Target":
        if self.kind == "postgres":
            missing = [f for f in ("database", "username", "credential") if not getattr(self, f)]
            if missing:
                raise ValueError(f"a postgres target needs {', '.join(missing)}")
        if self.kind == "ssh":
            missing = [f for f in ("username", "credential", "host_key") if not getattr(self, f)]
            if missing:
                raise ValueError(f"an ssh target needs {', '.join(missing)} (host_key: never trust on first use)")
        if self.credential:
            _check_secret_ref(self.credential)
        return self

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def action_for(self, klass: str, groups: frozenset[str]) -> str:
        """allow / deny / approve for one guardrail class, for a caller in these groups.

        Overrides apply when the caller is in one of their groups; the most
        permissive matching override wins (allow > approve > deny).
        """
        if klass in ALWAYS_DENIED:
            return "deny"
        base = self.guardrails.get(klass, DEFAULT_GUARDRAILS.get(klass, "deny"))
        best = None
        rank = {"deny": 0, "approve": 1, "allow": 2}
        for override in self.overrides:
            if groups.intersection(override.groups) and klass in override.guardrails:
                action = override.guardrails[klass]
                if best is None or rank[action] > rank[best]:
                    best = action
        return best or base

    def decide(self, classes: frozenset[str] | set[str], groups: frozenset[str]) -> tuple[str, list[str]]:
        """The strictest action over all classes of a statement, and the classes that caused it."""
        rank = {"allow": 0, "approve": 1, "deny": 2}
        worst, why = "allow", []
        for klass in sorted(classes):
            action = self.action_for(klass, groups)
            if rank[action] > rank[worst]:
                worst, why = action, [klass]
            elif action == worst and action != "allow":
                why.append(klass)
        return worst, why

    def row_limit(self, groups: frozenset[str]) -> int:
        """max_rows_changed for a caller in these groups: the largest matching override, else the target's."""
        limits = [o.max_rows_changed for o in self.overrides
                  if o.max_rows_changed is not None and groups.intersection(o.groups)]
        return max(limits) if limits else self.max_rows_changed

    def commands_for(self, groups: frozenset[str]) -> CommandsPolicy:
        """The ``commands`` setting for a caller: the most permissive matching override, else the target's."""
        matching = [o.commands for o in self.overrides if o.commands is not None and groups.intersection(o.groups)]
        if not matching:
            return self.commands
        best = max(matching, key=CommandsPolicy.permissiveness)
        if best.mode == "allowlist":
            allow = list(dict.fromkeys(e for c in matching if c.mode == "allowlist" for e in c.allow))
            best = CommandsPolicy(mode="allowlist", allow=allow, approve_others=best.approve_others)
        return best

    def shells_for(self, groups: frozenset[str]) -> str:
        """``shells`` for a caller: the most permissive matching override, else the target's."""
        matching = [o.shells for o in self.overrides if o.shells is not None and groups.intersection(o.groups)]
        return max(matching, key=_ACTION_RANK.__getitem__) if matching else self.shells

    def decide_command(self, classes: frozenset[str] | set[str], unlisted: tuple[str, ...],
                       groups: frozenset[str]) -> tuple[str, list[str]]:
        """The action for a classified shell command: its classes, the ``shells`` setting for the
        ``shell`` class, and in allow-list mode whether everything it runs is read-only."""
        action, why = self.decide(set(classes) - {"shell"}, groups)
        rank = {"allow": 0, "approve": 1, "deny": 2}
        if "shell" in classes:
            shell_action = max(self.action_for("shell", groups), self.shells_for(groups), key=rank.__getitem__)
            if rank[shell_action] > rank[action]:
                action, why = shell_action, ["shell"]
            elif shell_action == action and action != "allow":
                why.append("shell")
        commands = self.commands_for(groups)
        if commands.mode == "allowlist" and unlisted:
            listed_action = "approve" if commands.approve_others else "deny"
            if rank[listed_action] > rank[action]:
                action, why = listed_action, ["not_read_only"]
            elif listed_action == action and action != "allow":
                why.append("not_read_only")
        return action, why

    def sees_clear_text(self, groups: frozenset[str]) -> bool:
        return bool(groups.intersection(self.masking.clear_groups))


class ReviewConfig(_Strict):
    """Who may use the review console for recordings (approvers get in for approvals only)."""

    groups: list[str] = Field(default_factory=list)
    users: list[str] = Field(default_factory=list)

    def admits(self, username: str, groups: frozenset[str]) -> bool:
        return username.lower() in {u.lower() for u in self.users} or bool(groups.intersection(self.groups))


class Policy(_Strict):
    version: Literal[1] = 1
    identity: IdentityConfig
    targets: dict[str, Target]
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    # Where the policy came from and a digest of its bytes, for recordings and grants.
    source: str = ""
    digest: str = ""

    @field_validator("targets")
    @classmethod
    def _target_names(cls, value: dict[str, Target]) -> dict[str, Target]:
        for name in value:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", name):
                raise ValueError(
                    f"target name {name!r} must be lower-case letters, digits, '-', '_' or '.' (it is typed as a database or host name)"
                )
        return value

    def target(self, name: str) -> Target | None:
        return self.targets.get(name)

    def reachable(self, username: str, groups: frozenset[str]) -> dict[str, Target]:
        return {n: t for n, t in self.targets.items() if t.allow.admits(username, groups)}


@dataclass(frozen=True)
class PolicyProblem:
    line: int | None
    path: str
    message: str


class PolicyError(ValueError):
    """The policy file cannot be used; ``problems`` says where and why."""

    def __init__(self, source: str, problems: list[PolicyProblem]):
        self.source = source
        self.problems = problems
        lines = [
            f"{source}:{p.line if p.line else '?'}: {p.path + ': ' if p.path else ''}{p.message}" for p in problems
        ]
        super().__init__("invalid policy\n  " + "\n  ".join(lines))


def _check_classes(value: dict[str, str]) -> dict[str, str]:
    _check_not_always_denied(value)
    for klass in value:
        if klass not in ALL_CLASSES:
            hint = difflib.get_close_matches(klass, ALL_CLASSES, n=1)
            raise ValueError(
                f"unknown guardrail class {klass!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else f"; known classes: {', '.join(ALL_CLASSES)}")
            )
    return value


SECRET_SCHEMES = ("env:", "file:", "gcp-secret:")


def _check_secret_ref(ref: str) -> None:
    if not ref.startswith(SECRET_SCHEMES):
        raise ValueError(
            f"credential {ref!r} must be a reference, not a secret: env:VAR, file:/path or "
            "gcp-secret:projects/P/secrets/NAME/versions/V"
        )


# --- YAML with line numbers -------------------------------------------------------


class _LineDict(dict):
    """A mapping that remembers the line of each key (1-based)."""

    lines: dict[Any, int]
    line: int


class _LineList(list):
    lines: list[int]
    line: int


# A real policy nests about eight levels deep. PyYAML composes and constructs recursively, so
# without a bound a few thousand '[' exhaust the interpreter's stack (RecursionError).
MAX_YAML_DEPTH = 64
# Values after aliases are expanded. Nine levels of nine aliases ('billion laughs') expand a
# 300-byte file to 43 million values, which validation and error messages then walk for minutes;
# at a million, a 1 KB file still took 1.6 s to refuse (fuzzing). A policy of 2,000 targets is
# about 60,000 values.
MAX_YAML_VALUES = 200_000


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph that aliases expand beyond MAX_YAML_VALUES values or MAX_YAML_DEPTH
    levels, or that refers to itself. Iterative, so the check cannot itself overflow the stack."""
    expanded: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) once finished
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]

    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return node.value
        if isinstance(node, yaml.MappingNode):
            return [part for pair in node.value for part in pair]
        return []

    while stack:
        node, finished = stack.pop()
        if finished:
            open_nodes.discard(id(node))
            kids = [expanded[id(c)] for c in children(node)]
            values = 1 + sum(v for v, _ in kids)
            depth = 1 + max((d for _, d in kids), default=0)
            if values > MAX_YAML_VALUES or depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"aliases expand this to more than {MAX_YAML_VALUES} values or {MAX_YAML_DEPTH} "
                    "levels; write the values out or use fewer aliases", node.start_mark)
            expanded[id(node)] = (values, depth)
            continue
        if id(node) in expanded:
            continue
        if id(node) in open_nodes:
            raise yaml.composer.ComposerError(None, None, "an alias refers to a value that contains it", node.start_mark)
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children(node) if id(c) not in expanded)


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records line numbers, bounds nesting, and reports every bad value
    as a YAML error with its position (never a bare TypeError/ValueError/AttributeError)."""

    _depth = 0

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return self.construct_document(node)

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            # PyYAML's own constructors fail this way on e.g. "!!timestamp 2001-12-p4" or an
            # integer of 5000 digits.
            raise yaml.constructor.ConstructorError(
                None, None, f"{str(node.value)[:40]!r} is not a valid {node.tag.rpartition(':')[2] or 'value'}",
                node.start_mark) from None


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _LineDict:
    loader.flatten_mapping(node)
    result = _LineDict()
    result.lines = {}
    result.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable):
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark,
                "a key must be a plain name, not a list, set or mapping", key_node.start_mark)
        if key in result:
            raise yaml.MarkedYAMLError(
                "while reading a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> _LineList:
    result = _LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.lines = [child.start_mark.line + 1 for child in node.value]
    result.line = node.start_mark.line + 1
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _line_of(raw: Any, loc: tuple) -> int | None:
    """Deepest line known along a pydantic error location."""
    line = getattr(raw, "line", None)
    node = raw
    for part in loc:
        if isinstance(node, _LineDict) and part in node:
            line = node.lines.get(part, line)
            node = node[part]
        elif isinstance(node, _LineList) and isinstance(part, int) and part < len(node):
            line = node.lines[part]
            node = node[part]
        else:
            break
    return line


def _friendly(err: dict, raw: Any) -> PolicyProblem:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal["))))
    path = ".".join(str(p) for p in loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        model_fields = _fields_for(loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), model_fields, n=1) if model_fields else []
        message = "unknown field" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        if model_fields and not hint:
            message += f"; allowed here: {', '.join(sorted(model_fields))}"
    elif kind == "missing":
        message = "required field is missing"
    elif kind == "literal_error":
        message = f"got {err.get('input')!r}; {err['msg'].lower()}"
    else:
        message = err["msg"].removeprefix("Value error, ")
    return PolicyProblem(_line_of(raw, loc), path, message)


def _fields_for(loc: tuple) -> list[str]:
    """Field names of the model found at a location, for 'did you mean' hints."""
    model: Any = Policy
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            # A key of dict[str, Model] (a target name): _model_of already resolved the value type.
            continue
        model = _model_of(field.annotation)
    return list(model.model_fields) if hasattr(model, "model_fields") else []


def _model_of(annotation: Any) -> Any:
    args = getattr(annotation, "__args__", None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if args:
        for arg in reversed(args):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def parse_policy(text: str | bytes, source: str = "<policy>") -> Policy:
    data = text.encode() if isinstance(text, str) else text
    try:
        raw = yaml.load(data, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise PolicyError(
            source, [PolicyProblem(mark.line + 1 if mark else None, "", f"YAML syntax: {exc.problem or exc.context}")]
        ) from None
    except yaml.YAMLError as exc:
        raise PolicyError(source, [PolicyProblem(None, "", f"YAML syntax: {exc}")]) from None
    if not isinstance(raw, dict):
        raise PolicyError(source, [PolicyProblem(1, "", "the policy must be a mapping with 'identity' and 'targets'")])
    try:
        policy = Policy.model_validate(
            {**raw, "source": source, "digest": hashlib.sha256(data).hexdigest()[:16]}
        )
    except ValidationError as exc:
        problems = [_friendly(e, raw) for e in exc.errors()]
        problems.sort(key=lambda p: (p.line or 0, p.path))
        raise PolicyError(source, problems) from None
    return policy


def _gcs_blob(uri: str):
    from google.cloud import storage  # noqa: PLC0415 - only deployments that keep the policy in GCS need it

    bucket, _, name = uri.removeprefix("gs://").partition("/")
    return storage.Client().bucket(bucket).blob(name)


def read_policy_bytes(location: str | Path) -> bytes:
    if isinstance(location, str) and location.startswith("gs://"):
        try:
            return _gcs_blob(location).download_as_bytes()
        except Exception as exc:  # noqa: BLE001 - NotFound, Forbidden, transport errors
            raise PolicyError(location, [PolicyProblem(None, "", f"cannot read the policy object: {type(exc).__name__}: {exc}")]) from None
    path = Path(location)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PolicyError(str(path), [PolicyProblem(None, "", f"cannot read the policy file: {exc.strerror}")]) from None


def load_policy(path: str | Path) -> Policy:
    return parse_policy(read_policy_bytes(path), str(path))


class PolicyHolder:
    """The current policy, reloaded when its file changes (new sessions see the new one).

    A reload that fails validation keeps the previous policy and reports the error,
    so a typo pushed to a running gateway never opens or closes everything at once.
    """

    # How often a policy kept in Cloud Storage is checked for a new generation.
    GCS_CHECK_SECONDS = 10.0

    def __init__(self, path: str | Path, *, on_error=None):
        self.path = path if isinstance(path, str) and path.startswith("gs://") else Path(path)
        self._on_error = on_error
        self._checked = 0.0
        self._stamp = self._stat()
        self._policy = load_policy(self.path)

    def _stat(self):
        if isinstance(self.path, str):  # gs://: the object's generation, checked at most every few seconds
            import time

            now = time.monotonic()
            if self._checked and now - self._checked < self.GCS_CHECK_SECONDS:
                return self._stamp
            self._checked = now
            try:
                blob = _gcs_blob(self.path)
                blob.reload()
                return blob.generation
            except Exception:  # noqa: BLE001 - storage unreachable: keep the policy in force
                return self._stamp if hasattr(self, "_stamp") else None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    @property
    def policy(self) -> Policy:
        stamp = self._stat()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._policy = load_policy(self.path)
            except Exception as exc:  # noqa: BLE001 - whatever went wrong, the last good policy stays in force
                error = exc if isinstance(exc, PolicyError) else PolicyError(
                    str(self.path), [PolicyProblem(None, "", f"cannot load the policy: {type(exc).__name__}: {exc}")])
                if self._on_error:
                    self._on_error(error)
                else:
                    logging.getLogger(__name__).error("policy reload refused; the last good policy stays in force: %s", error)
        return self._policy


def column_matches(pattern: str, table: str | None, column: str) -> bool:
    """Masking column patterns: 'email', '*card*', or 'customers.email'."""
    table_match, column_match = compile_column_pattern(pattern)
    if table_match is not None and (table is None or table_match(table.lower()) is None):
        return False
    return column_match(column.lower()) is not None


@functools.lru_cache(maxsize=4096)
def compile_column_pattern(pattern: str):
    """(table matcher or None, column matcher) of a column pattern, compiled once: each is a
    regex ``match`` taking a lower-case name, as ``fnmatch.fnmatchcase`` would match it."""
    pattern = pattern.lower()
    want_table, dot, want_column = pattern.rpartition(".")
    compiled = lambda p: re.compile(fnmatch.translate(p)).match  # noqa: E731
    return (compiled(want_table) if dot else None), compiled(want_column)
