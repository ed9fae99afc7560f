"""Classify shell command lines (SSH exec/PTY lines, kubectl exec argv) into guardrail classes.

``classify_command(text_or_argv)`` parses a command line with tree-sitter-bash
(a real bash grammar) and walks every command the parse tree holds, at any
depth: lists, pipelines, subshells, groups, loops, ``if``/``case``, function
bodies, command and process substitutions, here-documents and here-strings.
Scripts given as strings (``bash -c``, ``eval``, ``su -c``, ``ssh host 'cmd'``,
a here-document fed to a shell) are parsed the same way, recursively, and
wrappers that run their arguments (``time``, ``sudo``, ``env``, ``xargs``,
``find -exec``, ``systemd-run``, ``tmux new-session`` ...) are looked through.
Class names are those of ``jitgate.policy.EXEC_CLASSES``.

Why tree-sitter-bash (pinned in requirements.txt) and not bashlex: it is the
grammar GitHub and editors use, kept up to date with bash, written in C (a
100 KB command parses in milliseconds, bashlex's pure-Python port of bash's
2014 yacc grammar takes seconds and refuses ``case``, arithmetic and many
here-document forms). Parsing belongs to the library; what a command does is
decided here.

Words are evaluated the way bash expands them before judging paths: quotes
removed, ``$'...'`` decoded, brace expansion (``rm -rf {/,}`` is ``rm -rf /``),
``~`` and well-known or statically assigned variables (``D=/etc; rm -rf $D``).
A value only known at run time (another variable, ``$(...)``, a glob over a
system path) is judged as the worst thing it could be.

Fail closed: text the grammar does not accept, a command name only known at
run time, inline interpreter code (``python -c``), a script read from a pipe,
and anything beyond the size and work caps are ``unclassified``.

What it cannot see: the working directory (``cd /etc && rm -rf nginx`` only
sees ``nginx``), what an ordinary program or script file does when it runs, and
``PATH`` tricks. That is why agents get an allow-list (``commands.mode:
allowlist``): only commands on the read-only list run without a human.
"""
from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import tree_sitter_bash
from tree_sitter import Language, Node, Parser

from jitgate.guardrails.readonly import is_read_only
from jitgate.guardrails.sql import Classification, StatementVerdict

__all__ = ["classify_command", "ShellClassification", "MAX_COMMAND_BYTES", "MAX_WORK"]

# Nesting of bash -c 'sudo sh -c "..."' beyond this is refused rather than followed.
_MAX_DEPTH = 8
# Commands longer than this are not parsed (unclassified, decided by policy). A real
# exec command line is a few hundred bytes; 64 KiB leaves room for a here-document
# script while keeping one classification to a few milliseconds.
MAX_COMMAND_BYTES = 64 * 1024
# Syntax nodes and commands examined per classification, nested scripts included.
# Bounds the work of any input (brace bombs, 10,000 ``ls;``) whatever its size.
MAX_WORK = 30_000
# Syntax nesting ($( $( $( ...) beyond this is refused: no real command nests so deep,
# and the walk below is recursive.
_MAX_TREE_DEPTH = 150
# Brace expansion beyond this many words counts as an unknown value.
_MAX_BRACE_WORDS = 256

_BASH = Language(tree_sitter_bash.language())


# Every byte >= 0x80 parsed as the letter "a": tree-sitter-bash 0.25.1 crashes the process
# (SIGSEGV) on some non-ASCII input (found by fuzzing: about 1 in 100,000 random UTF-8 strings;
# 1.2 million ASCII strings parse cleanly). Non-ASCII characters are never shell syntax, so
# the tree is the same; byte offsets are kept, and values are read from the original bytes.
_ASCII_ONLY = bytes(range(128)) + b"a" * 128


def _parse(source: bytes):
    # A fresh Parser per parse (5 us): a Parser is not safe to share between threads.
    return Parser(_BASH).parse(source.translate(_ASCII_ONLY))


@dataclass(frozen=True)
class ShellClassification(Classification):
    """A shell verdict, plus what an allow-list must look at."""

    # Commands (at any depth) that are not on the read-only list, with why; empty when
    # everything that runs is read-only. ``commands.mode: allowlist`` holds the others.
    unlisted: tuple[str, ...] = field(default=(), kw_only=True)


class _OverBudget(Exception):
    pass


@dataclass
class _Context:
    """Shared by every nested parse of one classification."""

    allow: tuple[tuple[str, ...], ...] = ()  # extra read-only entries from the policy (word prefixes)
    work_left: int = MAX_WORK
    unlisted: list[str] = field(default_factory=list)

    def spend(self, amount: int = 1) -> None:
        self.work_left -= amount
        if self.work_left < 0:
            raise _OverBudget

    def not_read_only(self, why: str) -> None:
        if why not in self.unlisted and len(self.unlisted) < 50:
            self.unlisted.append(why)


# --- words ---------------------------------------------------------------------------
#
# A word is evaluated to an "escaped" string first: every literal character that
# came from quotes (or a backslash) is preceded by a backslash, so brace
# expansion, globbing and tilde expansion only see the characters bash would
# treat as special. ``_unescape`` then gives the value the command receives.

_SPECIAL = set("\\{},*?[]~")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _escape(text: str) -> str:
    return "".join("\\" + c if c in _SPECIAL else c for c in text)


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text, flags=re.S)


def _unquoted_has(text: str, chars: str) -> bool:
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] in chars:
            return True
        i += 1
    return False


@dataclass
class _Arg:
    """One argument as a command will see it."""

    value: str
    unknown: bool = False  # only known at run time (expansion, substitution, stdin of xargs)
    glob: bool = False
    tilde: bool = False
    substitution: bool = False


@dataclass
class _Value:
    escaped: str = ""
    unknown: bool = False
    substitution: bool = False

    def add(self, other: "_Value") -> None:
        self.escaped += other.escaped
        self.unknown |= other.unknown
        self.substitution |= other.substitution


def _brace_expand(text: str, limit: int = _MAX_BRACE_WORDS) -> list[str] | None:
    """Bash brace expansion over an escaped string; None when it makes too many words."""
    results = [text]
    done: list[str] = []
    while results:
        current = results.pop()
        expanded = _expand_first_brace(current)
        if expanded is None:
            done.append(current)
        else:
            results.extend(reversed(expanded))
        if len(done) + len(results) > limit:
            return None
    return done


def _expand_first_brace(text: str) -> list[str] | None:
    i = 0
    n = len(text)
    while i < n:
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == "{":
            depth, j, commas = 0, i, []
            while j < n:
                c = text[j]
                if c == "\\":
                    j += 2
                    continue
                if c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                    if depth == 0:
                        break
                elif c == "," and depth == 1:
                    commas.append(j)
                j += 1
            if j >= n:
                return None
            head, body, tail = text[:i], text[i + 1 : j], text[j + 1 :]
            if commas:
                parts, start = [], i + 1
                for comma in commas:
                    parts.append(text[start:comma])
                    start = comma + 1
                parts.append(text[start:j])
                return [head + p + tail for p in parts]
            sequence = _sequence(body)
            if sequence is not None:
                return [head + _escape(p) + tail for p in sequence]
            i += 1
            continue
        i += 1
    return None


def _sequence(body: str) -> list[str] | None:
    match = re.fullmatch(r"(-?\d+|[A-Za-z])\.\.(-?\d+|[A-Za-z])(?:\.\.(-?\d+))?", body)
    if not match:
        return None
    a, b, step = match.group(1), match.group(2), abs(int(match.group(3) or 1)) or 1
    if a.lstrip("-").isdigit() != b.lstrip("-").isdigit():
        return None
    if a.lstrip("-").isdigit():
        lo, hi = int(a), int(b)
        if abs(hi - lo) // step > _MAX_BRACE_WORDS:
            return ["*"] * (_MAX_BRACE_WORDS + 1)
        values = range(lo, hi + (1 if hi >= lo else -1), step if hi >= lo else -step)
        return [str(v) for v in values]
    lo, hi = ord(a), ord(b)
    values = range(lo, hi + (1 if hi >= lo else -1), step if hi >= lo else -step)
    return [chr(v) for v in values]


_ANSI_C = re.compile(r"\\(x[0-9A-Fa-f]{1,2}|u[0-9A-Fa-f]{1,4}|U[0-9A-Fa-f]{1,8}|[0-7]{1,3}|c.|.)", re.S)
_ANSI_SIMPLE = {"a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
                "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?"}  # fmt: skip


def _ansi_c(body: str) -> str:
    """The value of ``$'...'`` (bash's ANSI-C quoting): ``$'\\x72m'`` is ``rm``."""

    def one(match: re.Match) -> str:
        code = match.group(1)
        if code[0] in "xuU" and len(code) > 1:
            return chr(min(int(code[1:], 16), 0x10FFFF))
        if code[0] in "01234567":
            return chr(int(code, 8) & 0xFF)
        if code[0] == "c":
            return chr(ord(code[1].upper()) ^ 0x40) if len(code) > 1 else ""
        return _ANSI_SIMPLE.get(code, "\\" + code)

    return _ANSI_C.sub(one, body)


# Variables whose value is known well enough to judge a path: $HOME is the home
# directory (as ~), $PWD the current directory.
_WELL_KNOWN = {"HOME": "~", "PWD": "."}
_DOUBLE_QUOTE_ESCAPES = re.compile(r'\\([$`"\\\n])')


class _Walker:
    """Walks one parse tree; ``sink(node)`` says where a command's findings go."""

    def __init__(self, source: bytes, situation: "_Situation", sink: Callable[[Node], "_Findings"]):
        self.source = source
        self.situation = situation
        self.ctx = situation.ctx
        self.sink = sink
        self.variables: dict[str, str | None] = {}

    def text(self, node: Node) -> str:
        return self.source[node.start_byte : node.end_byte].decode("utf-8", "replace")

    # -- statements --------------------------------------------------------------------

    def walk(self, node: Node, stdin: str | None = None, heredoc: str | None = None) -> None:
        """``stdin``: None (the session's input), "pipe" (unknown), or "heredoc" with its text."""
        self.ctx.spend()
        kind = node.type
        if kind == "command":
            self.command(node, [], stdin, heredoc)
        elif kind == "redirected_statement":
            self.redirected(node, stdin, heredoc)
        elif kind == "pipeline":
            first = True
            for child in node.named_children:
                self.walk(child, stdin if first else "pipe", heredoc if first else None)
                first = False
        elif kind in ("variable_assignment", "variable_assignments"):
            self.assignments(node)
        elif kind == "declaration_command":
            self.declaration(node)
        elif kind == "unset_command":
            for child in node.named_children:
                self.variables[self.text(child)] = None
                self.substitutions(child)
        elif kind == "function_definition":
            self.sink(node).add("unclassified", "defines a shell function (its body runs later under another name)")
            for child in node.named_children:
                self.walk(child)
        elif kind in ("command_substitution", "process_substitution"):
            for child in node.named_children:
                self.walk(child)
        elif kind == "for_statement":
            variable = node.child_by_field_name("variable")
            if variable is not None:
                self.variables[self.text(variable)] = None
            for child in node.named_children:
                if child.type in ("do_group", "compound_statement"):
                    self.walk(child, stdin)
                else:
                    self.substitutions(child)
        elif kind in ("word", "string", "raw_string", "concatenation", "simple_expansion", "expansion", "number",
                      "test_command", "arithmetic_expansion", "binary_expression", "unary_expression",
                      "parenthesized_expression", "ternary_expression", "postfix_expression", "array",
                      "translated_string", "ansi_c_string", "heredoc_body", "brace_expression", "regex",
                      "extglob_pattern"):
            self.substitutions(node)
        elif kind in ("comment", "heredoc_start", "heredoc_end", "file_descriptor", "variable_name",
                      "special_variable_name"):
            return
        else:  # program, list, subshell, compound_statement, if/while/case, do_group, negated_command...
            for child in node.named_children:
                self.walk(child, stdin)

    def substitutions(self, node: Node) -> None:
        """Commands that run while a word is expanded ($(...), `...`, <(...))."""
        self.ctx.spend()
        if node.type in ("command_substitution", "process_substitution"):
            self.walk(node)
            return
        for child in node.named_children:
            self.substitutions(child)

    def assignments(self, node: Node) -> None:
        targets = [node] if node.type == "variable_assignment" else [c for c in node.named_children
                                                                    if c.type == "variable_assignment"]
        for assignment in targets:
            name_node = assignment.child_by_field_name("name")
            value_node = assignment.child_by_field_name("value")
            name = self.text(name_node) if name_node is not None else ""
            value = self.value(value_node) if value_node is not None else _Value()
            first = name not in self.variables and name not in self.situation.poisoned
            operator = next((c.type for c in assignment.children if c.type in ("=", "+=")), "=")
            self.variables[name] = value.escaped if first and operator == "=" and not value.unknown else None

    def declaration(self, node: Node) -> None:
        for child in node.named_children:
            if child.type == "variable_assignment":
                self.assignments(child)
            else:
                if child.type == "variable_name":
                    self.variables[self.text(child)] = None
                self.substitutions(child)

    def redirected(self, node: Node, stdin: str | None, heredoc: str | None) -> None:
        body = node.child_by_field_name("body")
        redirects = [c for c in node.children if c.type.endswith("_redirect")]
        if body is not None and body.type == "command":
            self.command(body, redirects, stdin, heredoc, statement=node)
            return
        out = self.sink(node)
        stdin, heredoc = self.redirect_effects(redirects, out, stdin, heredoc)
        if body is not None:
            self.walk(body, stdin, heredoc)

    def redirect_effects(self, redirects: list[Node], out: "_Findings", stdin, heredoc):
        """Check written paths; return what the command's stdin becomes."""
        for redirect in redirects:
            self.ctx.spend()
            kind = redirect.type
            if kind == "heredoc_redirect":
                stdin, heredoc = self.heredoc(redirect, out)
                continue
            if kind == "herestring_redirect":
                stdin, heredoc = "pipe", None
                for child in redirect.named_children:
                    self.substitutions(child)
                continue
            operator = next((c.type for c in redirect.children if not c.is_named), "")
            destination = redirect.child_by_field_name("destination")
            targets = [c for c in redirect.named_children if c.type != "file_descriptor"]
            target_node = destination or (targets[0] if targets else None)
            if target_node is None:
                continue
            for args in (self.args(target_node),):
                target = args[0] if args else _Arg("", unknown=True)
                if operator in ("<", "<&", "<&-"):
                    if operator == "<":
                        stdin, heredoc = "pipe", None
                    continue
                _check_redirect(operator, target, out)
                if operator in _OUTPUT_REDIRECTS and not (operator in (">&", "<&") and (target.value.isdigit() or target.value == "-")):
                    if not _is_harmless_device(target):
                        self.ctx.not_read_only(f"writes to {target.value} (redirection {operator})")
        return stdin, heredoc

    def heredoc(self, redirect: Node, out: "_Findings") -> tuple[str, str | None]:
        start = next((c for c in redirect.named_children if c.type == "heredoc_start"), None)
        body = next((c for c in redirect.named_children if c.type == "heredoc_body"), None)
        quoted = start is not None and any(q in self.text(start) for q in "'\"\\")
        content = self.text(body) if body is not None else ""
        for child in redirect.named_children:
            if child.type == "pipeline":  # cat <<EOF | sh: everything after the pipe reads a pipe
                for command in child.named_children:
                    self.walk(command, "pipe")
            elif child.type not in ("heredoc_start", "heredoc_body", "heredoc_end"):
                self.walk(child)
        if body is not None and not quoted:
            self.substitutions(body)
            if any(c.type in ("command_substitution", "expansion", "simple_expansion") for c in body.named_children):
                return "pipe", None  # the script is only known once expanded
        if redirect.children and redirect.children[0].type == "<<-":
            content = "\n".join(line.lstrip("\t") for line in content.split("\n"))
        return "heredoc", content

    # -- simple commands ---------------------------------------------------------------

    def command(self, node: Node, redirects: list[Node], stdin, heredoc, statement: Node | None = None) -> None:
        out = self.sink(statement or node)
        own_redirects = [c for c in node.children if c.type.endswith("_redirect")]
        stdin, heredoc = self.redirect_effects(own_redirects + redirects, out, stdin, heredoc)
        args: list[_Arg] = []
        for child in node.named_children:
            if child.type == "variable_assignment":
                value = child.child_by_field_name("value")
                if value is not None:
                    self.substitutions(value)
                continue
            if child.type.endswith("_redirect"):
                continue
            if child.type == "command_name":
                child = child.named_children[0] if child.named_children else child
            args.extend(self.args(child))
        if not args:
            return
        situation = _Situation(self.situation.depth, self.ctx, stdin=stdin, heredoc=heredoc,
                               poisoned=self.situation.poisoned, walker=self)
        _classify_argv(args, out, situation)

    def args(self, node: Node) -> list[_Arg]:
        value = self.value(node)
        words = _brace_expand(value.escaped)
        if words is None:
            return [_Arg(_unescape(value.escaped), unknown=True, glob=True, substitution=value.substitution)]
        result = []
        for word in words:
            if not word and len(words) > 1:
                continue  # {/,} gives "/" and an empty word, which bash drops
            result.append(_Arg(_unescape(word), value.unknown, _unquoted_has(word, "*?["),
                               word.startswith("~"), value.substitution))
        return result

    def value(self, node: Node) -> _Value:
        self.ctx.spend()
        kind = node.type
        text = self.text(node)
        if kind in ("word", "number"):
            return _Value(text)  # unquoted: its backslashes already escape what follows
        if kind == "raw_string":
            return _Value(_escape(text[1:-1]))
        if kind == "ansi_c_string":
            return _Value(_escape(_ansi_c(text[2:-1])))
        if kind == "string":
            return self.double_quoted(node)
        if kind == "translated_string":
            inner = next((c for c in node.named_children if c.type == "string"), None)
            return self.double_quoted(inner) if inner is not None else _Value(_escape(text), unknown=True)
        if kind == "concatenation":
            result = _Value()
            children = node.children
            for i, child in enumerate(children):
                if not child.is_named:
                    if child.type == "$" and i + 1 < len(children) and children[i + 1].type == "string":
                        continue  # $"..." (translated string)
                    result.add(_Value(self.text(child)))
                    continue
                result.add(self.value(child))
            return result
        if kind == "simple_expansion":
            return self.variable(node, quoted=False)
        if kind == "expansion":
            return self.expansion(node, quoted=False)
        if kind in ("command_substitution", "process_substitution"):
            self.walk(node)
            return _Value(_escape(text), unknown=True, substitution=True)
        if kind == "brace_expression":
            return _Value(text)
        self.substitutions(node)
        return _Value(_escape(text), unknown=True)

    def double_quoted(self, node: Node) -> _Value:
        result = _Value()
        pos = node.start_byte + 1
        for child in node.named_children:
            if child.type == "string_content":
                continue
            literal = self.source[pos : child.start_byte].decode("utf-8", "replace")
            result.add(_Value(_escape(_DOUBLE_QUOTE_ESCAPES.sub(lambda m: "" if m.group(1) == "\n" else m.group(1), literal))))
            if child.type == "simple_expansion":
                result.add(self.variable(child, quoted=True))
            elif child.type == "expansion":
                result.add(self.expansion(child, quoted=True))
            elif child.type in ("command_substitution", "process_substitution"):
                self.walk(child)
                result.add(_Value(_escape(self.text(child)), unknown=True, substitution=True))
            else:
                self.substitutions(child)
                result.add(_Value(_escape(self.text(child)), unknown=True))
            pos = child.end_byte
        literal = self.source[pos : max(pos, node.end_byte - 1)].decode("utf-8", "replace")
        result.add(_Value(_escape(_DOUBLE_QUOTE_ESCAPES.sub(lambda m: "" if m.group(1) == "\n" else m.group(1), literal))))
        return result

    def variable(self, node: Node, quoted: bool) -> _Value:
        name = self.text(node).lstrip("$").strip("{}")
        return self.lookup(name, self.text(node), quoted)

    def expansion(self, node: Node, quoted: bool) -> _Value:
        self.substitutions(node)
        inner = self.text(node)[2:-1]
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", inner):
            return self.lookup(inner, self.text(node), quoted)
        return _Value(_escape(self.text(node)), unknown=True)

    def lookup(self, name: str, written: str, quoted: bool) -> _Value:
        if name in _WELL_KNOWN and name not in self.variables and name not in self.situation.poisoned:
            return _Value(_WELL_KNOWN[name])
        known = self.variables.get(name)
        if known is None or name in self.situation.poisoned:
            return _Value(_escape(written), unknown=True)
        return _Value(_escape(_unescape(known)) if quoted else known)


class _TooDeep(Exception):
    pass


def _poisoned_names(root: Node, source: bytes) -> frozenset[str]:
    """Variables written some way other than one plain NAME=value (read, for, ${X:=...},
    declare -n, printf -v...): their value is unknown wherever they are used.

    Also the guard for the recursive walk: a tree nested deeper than _MAX_TREE_DEPTH
    raises _TooDeep, one with more nodes than the work cap _OverBudget."""
    counts: dict[str, int] = {}
    poisoned: set[str] = set()
    stack = [(root, 0)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > 4 * MAX_WORK:
            raise _OverBudget
        if depth > _MAX_TREE_DEPTH:
            raise _TooDeep
        if node.type == "variable_assignment":
            name = node.child_by_field_name("name")
            if name is not None:
                key = source[name.start_byte : name.end_byte].decode("utf-8", "replace")
                counts[key] = counts.get(key, 0) + 1
        elif node.type == "expansion" and len(node.named_children) > 1:
            name = node.named_children[0]
            poisoned.add(source[name.start_byte : name.end_byte].decode("utf-8", "replace"))
        elif node.type == "word":
            poisoned.add(source[node.start_byte : node.end_byte].decode("utf-8", "replace").split("=")[0])
        elif node.type == "variable_name" and node.parent is not None and node.parent.type not in (
            "variable_assignment", "simple_expansion", "expansion"):
            poisoned.add(source[node.start_byte : node.end_byte].decode("utf-8", "replace"))
        stack.extend((child, depth + 1) for child in node.children)
    poisoned.update(name for name, count in counts.items() if count > 1)
    return frozenset(poisoned)


# --- classification ------------------------------------------------------------------


@dataclass
class _Findings:
    classes: set[str] = field(default_factory=set)
    reasons: list[str] = field(default_factory=list)

    def add(self, klass: str, reason: str) -> None:
        self.classes.add(klass)
        if reason not in self.reasons:
            self.reasons.append(reason)


@dataclass
class _Situation:
    """What surrounds a command: nesting depth, the shared budget and where its stdin comes from."""

    depth: int = 0
    ctx: _Context = field(default_factory=_Context)
    stdin: str | None = None  # None: the session's input; "pipe": unknown; "heredoc": readable text
    heredoc: str | None = None
    poisoned: frozenset[str] = frozenset()
    walker: _Walker | None = None

    @property
    def stdin_script(self) -> str | None:
        return self.heredoc if self.stdin == "heredoc" else None

    @property
    def stdin_unknown(self) -> bool:
        return self.stdin == "pipe"

    @property
    def stdin_from_client(self) -> bool:
        """Whether the command reads what the client sends (a shell or interpreter fed on stdin)."""
        return self.stdin is None and self.depth == 0

    def deeper(self) -> "_Situation":
        return _Situation(self.depth + 1, self.ctx, stdin=self.stdin, heredoc=self.heredoc, poisoned=self.poisoned)


def classify_command(command: str | Sequence[str], allow: Sequence[str] = ()) -> ShellClassification:
    """Classify a command; never raises (a failure inside the classifier is ``unclassified``)."""
    try:
        return _classify(command, allow)
    except Exception as exc:  # noqa: BLE001 - fail closed, and say so
        error = f"the shell guardrail could not classify this command ({type(exc).__name__}); it is refused"
        text = command if isinstance(command, str) else " ".join(map(str, command))
        verdict = StatementVerdict(text[:200], _UNCLASSIFIED, (error,))
        return ShellClassification(_UNCLASSIFIED, (verdict,), error, unlisted=(error,))


def _classify(command: str | Sequence[str], allow: Sequence[str] = ()) -> ShellClassification:
    """Classify a shell command line (str) or an exec argv (list of str).

    An empty command (an SSH session without a command, ``kubectl exec -it``
    with no argv) asks for an interactive shell: ``{"shell"}``. Each simple
    command becomes one ``StatementVerdict``. ``allow``: extra read-only entries
    from the policy's allow-list ("uptime", "git log"), for ``unlisted``.
    """
    ctx = _Context(allow=tuple(tuple(entry.split()) for entry in allow if entry.split()))
    if not isinstance(command, str):
        argv = [str(a) for a in command]
        text = shlex.join(argv)
        refused = _refuse_text(argv, text)
        if refused is not None:
            return refused
        if not any(a.strip() for a in argv):
            return _interactive_shell("")
        out = _Findings()
        try:
            # An argv list runs without a shell: no operators, no expansion.
            _classify_argv([_Arg(a) for a in argv], out, _Situation(ctx=ctx))
        except _OverBudget:
            return _over_budget(text)
        verdict = _verdict(text, out)
        return ShellClassification(verdict.classes, (verdict,), None, unlisted=tuple(ctx.unlisted))

    refused = _refuse_text([command], command)
    if refused is not None:
        return refused
    if not command.strip():
        return _interactive_shell(command)
    # bash removes backslash-newline before it splits words; the grammar does not.
    source = command.replace("\\\n", "").encode("utf-8", "surrogatepass")
    tree = _parse(source)
    if tree.root_node.has_error:
        error = _syntax_error(tree.root_node, source)
        verdict = StatementVerdict(command, _UNCLASSIFIED, (f"cannot parse: {error}",))
        return ShellClassification(_UNCLASSIFIED, (verdict,), error, unlisted=("the command does not parse",))
    statements: dict[int, tuple[Node, _Findings]] = {}  # by node id: one verdict per command

    def sink(node: Node) -> _Findings:
        if node.id not in statements:
            statements[node.id] = (node, _Findings())
        return statements[node.id][1]

    walker = None
    try:
        situation = _Situation(ctx=ctx, poisoned=_poisoned_names(tree.root_node, source))
        walker = _Walker(source, situation, sink)
        walker.walk(tree.root_node)
    except _OverBudget:
        return _over_budget(command)
    except (_TooDeep, RecursionError):
        error = f"the command nests deeper than {_MAX_TREE_DEPTH} levels; it is not classified"
        verdict = StatementVerdict(command[:200], _UNCLASSIFIED, (error,))
        return ShellClassification(_UNCLASSIFIED, (verdict,), error, unlisted=(error,))
    if not statements:
        verdict = StatementVerdict(command.strip(), frozenset({"command"}), ("only comments",))
        return ShellClassification(verdict.classes, (verdict,), None, unlisted=())
    ordered = sorted(statements.values(), key=lambda s: s[0].start_byte)
    verdicts = [_verdict(walker.text(node), findings) for node, findings in ordered]
    classes = frozenset().union(*(v.classes for v in verdicts))
    return ShellClassification(classes, tuple(verdicts), None, unlisted=tuple(ctx.unlisted))


_UNCLASSIFIED = frozenset({"unclassified"})


def _refuse_text(parts: Sequence[str], shown: str) -> ShellClassification | None:
    """Inputs that are not parsed at all: NUL bytes and commands over the size cap."""
    error = None
    size = sum(len(p.encode("utf-8", "surrogatepass")) for p in parts)
    if any("\0" in p for p in parts):
        error = "the command contains a NUL byte, which no shell command line can hold; remove it"
    elif size > MAX_COMMAND_BYTES:
        error = (f"the command is {size} bytes; the shell guardrail parses at most {MAX_COMMAND_BYTES} "
                 "(copy a long script to the machine as a file and run that, or ask for approval)")
    if error is None:
        return None
    verdict = StatementVerdict(shown[:200], _UNCLASSIFIED, (error,))
    return ShellClassification(_UNCLASSIFIED, (verdict,), error, unlisted=(error,))


def _over_budget(text: str) -> ShellClassification:
    error = f"the command holds more than {MAX_WORK} syntax elements to examine; it is not classified"
    verdict = StatementVerdict(text[:200], _UNCLASSIFIED, (error,))
    return ShellClassification(_UNCLASSIFIED, (verdict,), error, unlisted=(error,))


def _syntax_error(root: Node, source: bytes) -> str:
    stack = [root]
    while stack:
        node = stack.pop()
        if node.is_missing:
            return f"missing {node.type!r} at byte {node.start_byte}"
        if node.type == "ERROR":
            snippet = source[node.start_byte : node.start_byte + 40].decode("utf-8", "replace")
            return f"unexpected text at byte {node.start_byte}: {snippet!r}"
        stack.extend(reversed(node.children))
    return "the grammar does not accept it"


def _interactive_shell(text: str) -> ShellClassification:
    verdict = StatementVerdict(text, frozenset({"shell"}), ("interactive shell",))
    # Not "unlisted": an interactive shell is decided by the ``shells`` setting alone.
    return ShellClassification(verdict.classes, (verdict,), None, unlisted=())


def _verdict(text: str, out: _Findings) -> StatementVerdict:
    if not out.classes:
        out.add("command", "ordinary command")
    return StatementVerdict(text.strip(), frozenset(out.classes), tuple(out.reasons))


def _classify_script(script: str, out: _Findings, situation: _Situation, origin: str) -> None:
    """A script given as a string (bash -c, su -c, ssh host 'cmd', a here-document)."""
    if situation.depth >= _MAX_DEPTH:
        out.add("unclassified", f"{origin}: nested too deeply to follow")
        return
    situation.ctx.spend(1 + len(script) // 64)
    source = script.replace("\\\n", "").encode("utf-8", "surrogatepass")
    tree = _parse(source)
    if tree.root_node.has_error:
        out.add("unclassified", f"{origin}: cannot parse: {_syntax_error(tree.root_node, source)}")
        situation.ctx.not_read_only(f"{origin}: does not parse")
        return
    try:
        poisoned = _poisoned_names(tree.root_node, source)
    except _TooDeep:
        out.add("unclassified", f"{origin}: nested too deeply to follow")
        return
    inner = _Situation(situation.depth + 1, situation.ctx, stdin=situation.stdin, heredoc=None, poisoned=poisoned)
    _Walker(source, inner, lambda node: out).walk(tree.root_node, "pipe" if situation.stdin else None)


# --- paths ------------------------------------------------------------------------

# Writing under these changes the machine itself rather than someone's files.
_SYSTEM_DIRS = (
    "/etc",
    "/boot",
    "/usr",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/bin",
    "/sbin",
    "/root",
    "/var/spool/cron",
    "/proc",
    "/sys",
)
# Files whose change grants access; writing them is also a privilege change.
_ACCESS_FILES = ("/etc/sudoers", "/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow")
# Top-level directories whose direct children are themselves broad (a user's
# home, /var/log, /usr/local ...).
_BROAD_PARENTS = {"home", "etc", "var", "usr", "boot", "lib", "lib64", "bin", "sbin", "opt", "srv", "root", "snap"}
# Device files that are safe to write to.
_HARMLESS_DEVICES = ("/dev/null", "/dev/zero", "/dev/stdout", "/dev/stderr", "/dev/tty", "/dev/fd/", "/dev/pts/")


def _absolute(path: str) -> str | None:
    """The absolute path a word names, if it can be told without the cwd."""
    if path.startswith("/"):
        normalized = posixpath.normpath(path)
        return "/" + normalized.lstrip("/")  # normpath keeps a leading '//'
    parts = posixpath.normpath(path).split("/")
    if parts and parts[0] == "..":
        # ../../etc/passwd climbs to an unknown depth; assume it reaches the root.
        rest = [p for p in parts if p != ".."]
        return "/" + "/".join(rest)
    return None


def _is_system_path(arg: _Arg) -> bool:
    """Whether the path is (or, for a glob, could be) under a system directory."""
    if arg.unknown:
        return False
    if ".ssh/" in arg.value or arg.value.endswith((".ssh", "authorized_keys")):
        return True  # someone's authorized_keys is a way in
    value = arg.value
    if arg.glob:
        # /e*/passwd could be /etc/passwd: judge the fixed part before the first wildcard.
        head = value[: min((value.index(c) for c in "*?[" if c in value), default=len(value))]
        path = _absolute(head) if head.startswith("/") or head.startswith("..") else None
        if path is None:
            return False
        prefix = head if head.startswith("/") else path
        return any(d.startswith(prefix) or prefix.startswith(d + "/") or prefix == d for d in _SYSTEM_DIRS)
    path = _absolute(value)
    return path is not None and any(path == d or path.startswith(d + "/") for d in _SYSTEM_DIRS)


def _is_access_file(arg: _Arg) -> bool:
    path = _absolute(arg.value) or ""
    return any(path == f or path.startswith(f + ".") or path.startswith(f + "/") for f in _ACCESS_FILES)


def _is_device(arg: _Arg) -> bool:
    path = _absolute(arg.value) or ""
    return path.startswith("/dev/") and not (
        path in _HARMLESS_DEVICES or path.startswith(tuple(d for d in _HARMLESS_DEVICES if d.endswith("/")))
    )


def _is_broad(arg: _Arg) -> bool:
    """Whether deleting (recursively) this path would take out far more than a project.

    Broad: /, top-level directories, their direct children for system and home
    trees, /var/lib/<anything> (databases live there), ~ and ~user, the
    current or a parent directory, a bare wildcard in any of those, and any
    path only known at run time (``rm -rf "$DIR"/`` with DIR empty is ``/``).
    """
    if arg.unknown:
        return True
    value = arg.value
    if arg.glob:
        cut = min((value.index(c) for c in "*?[{" if c in value), default=len(value))
        head, pattern = value[:cut], value[cut:]
        parent = head.rpartition("/")[0] if "/" in head else ""
        if not parent and not head.startswith("/"):
            # a pattern in the current directory: broad when it matches everything
            component = (head + pattern).split("/")[0]
            return set(component) <= set("*?.") or arg.tilde
        return _is_broad(_Arg(parent or "/", tilde=arg.tilde))
    if arg.tilde:
        return "/" not in value.rstrip("/")  # ~, ~/, ~alice
    if value == "":
        return False
    path = _absolute(value)
    if path is None:
        normalized = posixpath.normpath(value)
        return normalized in (".", "..")
    parts = [p for p in path.split("/") if p]
    if len(parts) <= 1:
        return True
    if len(parts) == 2 and parts[0] in _BROAD_PARENTS:
        return True
    return len(parts) == 3 and parts[:2] == ["var", "lib"]


_OUTPUT_REDIRECTS = {">", ">>", ">|", "<>", ">&", "&>", "&>>"}


def _is_harmless_device(arg: _Arg) -> bool:
    path = _absolute(arg.value) or ""
    return not arg.unknown and (path in _HARMLESS_DEVICES or path.startswith(tuple(d for d in _HARMLESS_DEVICES if d.endswith("/"))))


def _check_redirect(operator: str, target: _Arg, out: _Findings) -> None:
    if operator not in _OUTPUT_REDIRECTS:
        return
    if operator == ">&" and (target.value.isdigit() or target.value == "-"):
        return  # 2>&1: a file descriptor, not a file
    if target.substitution:
        out.add("unclassified", f"redirection to {target.value!r}, a command substitution")
    elif target.unknown:
        out.add("system_write", f"redirection to {target.value!r}, a path only known at run time")
    else:
        _check_written_path(target, out, f"redirection {operator} {target.value}")


def _check_written_path(arg: _Arg, out: _Findings, what: str) -> None:
    if arg.unknown:
        out.add("system_write", f"{what}: a path only known at run time (judged as a system path)")
        return
    path = _absolute(arg.value) or ""
    if path == "/proc/sysrq-trigger" or (arg.glob and _is_system_path(arg) and path.startswith("/proc")):
        out.add("destructive", f"{what}: the kernel's SysRq trigger (reboots, crashes or kills at once)")
        out.add("service_control", f"{what} can reboot the machine")
    if _is_device(arg):
        out.add("destructive", f"{what} writes to a device")
    elif _is_system_path(arg):
        out.add("system_write", f"{what} writes to a system path")
        if _is_access_file(arg):
            out.add("privilege", f"{what} changes who may log in or use sudo")


# --- per-command rules -----------------------------------------------------------------

_Rule = Callable[[list[_Arg], _Findings, _Situation], None]


def _operands(args: list[_Arg], with_value: frozenset[str] = frozenset()) -> list[_Arg]:
    """Non-option arguments (after the command name), honouring ``--``."""
    result = []
    options_done = False
    skip = False
    for arg in args[1:]:
        if skip:
            skip = False
            continue
        if not options_done and arg.value == "--":
            options_done = True
        elif not options_done and arg.value.startswith("-") and len(arg.value) > 1:
            skip = arg.value in with_value
        else:
            result.append(arg)
    return result


def _short_flags(args: list[_Arg]) -> set[str]:
    flags: set[str] = set()
    for arg in args[1:]:
        if arg.value == "--":
            break
        if arg.value.startswith("-") and not arg.value.startswith("--"):
            flags.update(arg.value[1:])
    return flags


def _long_flags(args: list[_Arg]) -> set[str]:
    return {a.value.split("=")[0] for a in args[1:] if a.value.startswith("--") and a.value != "--"}


def _inner_command(args: list[_Arg], with_value: frozenset[str], positional: int = 0) -> list[_Arg]:
    """The command a wrapper runs: skip its options and ``positional`` leading operands."""
    i = 1
    while i < len(args):
        value = args[i].value
        if value == "--":
            i += 1
            break
        if value.startswith("-") and len(value) > 1:
            i += 2 if value in with_value else 1
            continue
        if _NAME.match(value) and "=" in value and value.split("=")[0].isidentifier():
            i += 1  # env NAME=value
            continue
        break
    return args[i + positional :]


def _classify_argv(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    # Leading NAME=value assignments set the environment of the command.
    while args and "=" in args[0].value and args[0].value.split("=")[0].isidentifier() and not args[0].glob:
        args = args[1:]
    if not args:
        return
    situation.ctx.spend()
    name_arg = args[0]
    if name_arg.unknown or name_arg.glob:
        out.add("unclassified", f"the command name {name_arg.value!r} is only known at run time")
        situation.ctx.not_read_only(f"the command name {name_arg.value!r} is only known at run time")
        return
    name = posixpath.basename(name_arg.value)
    why = is_read_only([a.value for a in args], situation.ctx.allow)
    if why is not None:
        situation.ctx.not_read_only(why)
    rule = _RULES.get(name)
    if rule is None:
        rule = _RULES.get(re.sub(r"[0-9.]+$", "", name))  # python3.11, pip3, mkfs.ext4 -> family
    if rule is None and name.startswith("mkfs"):
        rule = _destructive_tool
    if rule is not None:
        rule(args, out, situation)
    _check_common(args, out)


def _check_common(args: list[_Arg], out: _Findings) -> None:
    """Checks that apply to every command: writing into system paths."""
    name = posixpath.basename(args[0].value)
    if name in _WRITES_LAST_OPERAND:
        operands = _operands(args, _WRITES_LAST_OPERAND[name])
        target_dir = next((a.value.split("=", 1)[1] for a in args if a.value.startswith("--target-directory=")), None)
        flag_target = next((args[i + 1] for i, a in enumerate(args[:-1]) if a.value == "-t"), None)
        destination = (
            _Arg(target_dir) if target_dir else flag_target if flag_target else operands[-1] if len(operands) >= 2 else None
        )
        if destination is not None:
            _check_written_path(destination, out, f"{name} into {destination.value}")
    elif name in _WRITES_OPERANDS or (name in _WRITES_OPERANDS_IN_PLACE and _in_place(args)):
        for operand in _operands(args):
            _check_written_path(operand, out, f"{name} {operand.value}")


def _in_place(args: list[_Arg]) -> bool:
    return any(a.value.startswith("-i") or a.value.startswith("--in-place") for a in args[1:])



# name -> options that take a value (so the value is not taken for a path)
_WRITES_LAST_OPERAND: dict[str, frozenset[str]] = {
    "cp": frozenset({"-t", "-S"}),
    "mv": frozenset({"-t", "-S"}),
    "install": frozenset({"-t", "-m", "-o", "-g", "-S"}),
    "ln": frozenset({"-t", "-S"}),
    "rsync": frozenset({"-e", "--rsh"}),
    "scp": frozenset({"-P", "-i", "-o", "-F", "-c", "-l", "-S", "-J"}),
    "uniq": frozenset({"-f", "-s", "-w", "--skip-fields", "--skip-chars", "--check-chars"}),
}
_WRITES_OPERANDS = {
    "tee", "touch", "mkdir", "rmdir", "rm", "unlink", "chmod", "chown", "chgrp", "chattr", "setfacl",
    "truncate", "vi", "vim", "nvim", "nano", "emacs", "ed", "sudoedit",
}  # fmt: skip
_WRITES_OPERANDS_IN_PLACE = {"sed", "perl"}


def _ordinary(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    """A command that is itself harmless; only the common checks apply."""


def _rm(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    flags = _short_flags(args)
    long_flags = _long_flags(args)
    recursive = bool(flags & {"r", "R"}) or "--recursive" in long_flags
    if "--no-preserve-root" in long_flags:
        out.add("destructive", "rm --no-preserve-root")
    for operand in _operands(args):
        if recursive and (_is_broad(operand) or _is_system_path(operand)):
            out.add("destructive", f"rm -r on a broad path: {operand.value}")
        elif recursive and (_absolute(operand.value) or "").startswith("/var/lib/"):
            out.add("destructive", f"rm -r under /var/lib, where databases and services keep their state: {operand.value}")
        elif operand.unknown:
            # xargs rm, rm $(cat list), rm "$F": the worst case is any file at all.
            out.add("destructive", f"rm of paths only known at run time: {operand.value}")


def _find(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    starts = []
    for arg in args[1:]:
        if arg.value.startswith(("-", "(", "!")):
            break
        starts.append(arg)
    values = [a.value for a in args]
    if "-delete" in values and (not starts or any(_is_broad(s) or _is_system_path(s) for s in starts)):
        out.add("destructive", f"find -delete under {', '.join(s.value for s in starts) or '.'}")
    for i, arg in enumerate(args[:-1]):
        if arg.value in ("-fprint", "-fprint0", "-fprintf", "-fls"):
            _check_written_path(args[i + 1], out, f"find {arg.value} {args[i + 1].value}")
    # {} stands for every file found: anything under the starting points, judged as
    # such (find / -exec rm {} + is rm of everything under /).
    found = [_Arg(posixpath.join(s.value, "*"), s.unknown, True, s.tilde) for s in starts] or [_Arg("./*", glob=True)]
    i = 0
    while i < len(args):
        if args[i].value in ("-exec", "-execdir", "-ok", "-okdir"):
            j = i + 1
            inner = []
            while j < len(args) and args[j].value not in (";", "+"):
                if args[j].value == "{}":
                    inner.extend(found)
                elif "{}" in args[j].value:
                    inner.append(_Arg(args[j].value, unknown=True))
                else:
                    inner.append(args[j])
                j += 1
            if j >= len(args):
                out.add("unclassified", "find -exec without a terminating ';' or '+'")
                return
            _nested_argv(inner, out, situation, f"find {args[i].value}")
            i = j
        i += 1


def _xargs_free(situation: _Situation) -> _Situation:
    return situation


def _nested_argv(inner: list[_Arg], out: _Findings, situation: _Situation, origin: str) -> None:
    if situation.depth >= _MAX_DEPTH:
        out.add("unclassified", f"{origin}: nested too deeply to follow")
        return
    if not inner:
        return
    _classify_argv(inner, out, situation.deeper())


def _wrapper(with_value: frozenset[str] = frozenset(), positional: int = 0) -> _Rule:
    """A command that runs the rest of its arguments as another command."""

    def rule(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
        inner = _inner_command(args, with_value, positional)
        _nested_argv(inner, out, situation, args[0].value)

    return rule


def _privileged_wrapper(with_value: frozenset[str], shell_flags: frozenset[str] = frozenset()) -> _Rule:
    """sudo, doas, pkexec: a privilege change, then the command they run."""

    def rule(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
        name = posixpath.basename(args[0].value)
        out.add("privilege", f"{name} runs a command as another user")
        inner = _inner_command(args, with_value)
        wants_shell = any(a.value in shell_flags for a in args[1 : len(args) - len(inner)])
        if not inner:
            if wants_shell:
                out.add("shell", f"{name} opens a root shell")
            return
        _nested_argv(inner, out, situation, name)

    return rule


def _su(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    name = posixpath.basename(args[0].value)
    out.add("privilege", f"{name} switches user")
    for i, arg in enumerate(args[1:], start=1):
        script = None
        if arg.value in ("-c", "--command", "--session-command") and i + 1 < len(args):
            script = args[i + 1]
        elif arg.value.startswith(("--command=", "--session-command=")):
            script = _Arg(arg.value.split("=", 1)[1], arg.unknown)
        if script is not None:
            if script.unknown:
                out.add("unclassified", f"{name} -c with a script only known at run time")
            else:
                _classify_script(script.value, out, situation, f"{name} -c")
            return
    if name == "runuser" and "-u" in (a.value for a in args):
        # runuser -u user -- command: the command runs directly, without a shell
        _nested_argv(_inner_command(args, frozenset({"-u", "-g", "-G", "-w"})), out, situation, name)
        return
    _stdin_script(name, out, situation)


_SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "csh", "tcsh", "rbash"}


def _shell(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    name = posixpath.basename(args[0].value)
    i = 1
    command_mode = False
    while i < len(args):
        value = args[i].value
        if value in ("-o", "+o", "-O", "+O", "--rcfile", "--init-file"):
            i += 2
            continue
        if value == "--":
            i += 1
            break
        if value.startswith(("-", "+")) and len(value) > 1:
            if not value.startswith("--") and "c" in value[1:]:
                command_mode = True
            i += 1
            continue
        break
    operands = args[i:]
    if command_mode:
        if not operands:
            out.add("unclassified", f"{name} -c without a script")
        elif operands[0].unknown:
            out.add("unclassified", f"{name} -c with a script only known at run time")
        else:
            _classify_script(operands[0].value, out, situation, f"{name} -c")
    elif operands:
        # a script file: its content is not in the request, like any program's
        out.add("command", f"{name} runs the script file {operands[0].value}")
    else:
        _stdin_script(name, out, situation)


def _stdin_script(name: str, out: _Findings, situation: _Situation) -> None:
    """A shell (or at, ssh host) that reads the commands it runs from its input."""
    if situation.stdin_script is not None:
        _classify_script(situation.stdin_script, out, situation, f"{name} here-document")
    elif situation.stdin_unknown:
        out.add("unclassified", f"{name} reads a script from its input (a pipe or a file)")
    else:
        out.add("shell", f"{name} reads commands from the client (an interactive or stdin-fed shell)")


def _refuse(reason: str) -> _Rule:
    def rule(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
        out.add("unclassified", f"{posixpath.basename(args[0].value)} {reason}")

    return rule


_INLINE_CODE_FLAGS = {
    "python": {"-c"},
    "perl": {"-e", "-E"},
    "ruby": {"-e"},
    "node": {"-e", "-p", "--eval", "--print"},
    "nodejs": {"-e", "-p", "--eval", "--print"},
    "php": {"-r"},
    "lua": {"-e"},
}


def _interpreter(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    name = re.sub(r"[0-9.]+$", "", posixpath.basename(args[0].value))
    values = [a.value for a in args[1:]]
    if name == "python" and "-m" in values:
        module_args = args[values.index("-m") + 2 :]  # values starts at args[1]
        if module_args and module_args[0].value in ("pip", "pip3"):
            _package_manager(module_args, out, situation)
            return
    flags = _INLINE_CODE_FLAGS.get(name, set())
    operands = _operands(args, frozenset({"-m", "-W", "-X", "-I", "-M", "-r"}))
    if any(v in flags or (len(v) > 2 and v[:2] in flags and not v.startswith("--")) for v in values):
        out.add("unclassified", f"{name} runs inline code that cannot be classified")
    elif "-m" in values:
        return
    elif not operands or operands[0].value in ("-", "/dev/stdin", "/proc/self/fd/0"):
        if situation.stdin_script is not None:
            out.add("unclassified", f"{name} runs code from a here-document (not shell code: cannot be classified)")
        elif situation.stdin_unknown:
            out.add("unclassified", f"{name} runs code read from its input")
        else:
            out.add("shell", f"{name} reads a program from the client (an interactive or stdin-fed interpreter)")


def _awk(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    program = " ".join(a.value for a in _operands(args, frozenset({"-F", "-v", "-f"}))[:1])
    if "system" in program or "|" in program or ">" in program:
        out.add("unclassified", "awk program runs commands or writes files")


def _xargs(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    with_value = frozenset({"-a", "-d", "-E", "-I", "-L", "-n", "-P", "-s", "--arg-file", "--delimiter", "--max-args",
                            "--max-procs", "--max-chars", "--max-lines", "--replace", "--eof"})  # fmt: skip
    inner = _inner_command(args, with_value) or [_Arg("echo")]
    # The arguments come from stdin: unknown, and possibly anything.
    inner = [_Arg(a.value, unknown=True) if "{}" in a.value else a for a in inner] + [_Arg("<stdin>", unknown=True)]
    _nested_argv(inner, out, situation, "xargs")


def _env(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    for i, arg in enumerate(args[1:], start=1):
        if arg.value in ("-S", "--split-string") and i + 1 < len(args):
            _classify_script(args[i + 1].value, out, situation, "env -S")
            return
        if arg.value.startswith("--split-string="):
            _classify_script(arg.value.split("=", 1)[1], out, situation, "env -S")
            return
    inner = _inner_command(args, frozenset({"-u", "-C", "--unset", "--chdir"}))
    _nested_argv(inner, out, situation, "env")


def _string_command(with_value: frozenset[str], positional: int = 0) -> _Rule:
    """watch 'cmd', ssh host 'cmd', trap 'cmd' SIG: the rest is a script."""

    def rule(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
        rest = _inner_command(args, with_value, positional)
        name = posixpath.basename(args[0].value)
        if not rest:
            if name == "ssh":
                _stdin_script(name, out, situation)
            return
        if name == "trap":
            rest = rest[:1]
        if any(a.unknown for a in rest):
            out.add("unclassified", f"{name} runs a command only known at run time")
            return
        _classify_script(" ".join(a.value for a in rest), out, situation, name)

    return rule


def _eval(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    """eval 'text': the text is parsed like any other command line."""
    rest = args[1:]
    if any(a.unknown for a in rest):
        out.add("unclassified", "eval of text only known at run time")
        return
    _classify_script(" ".join(a.value for a in rest), out, situation, "eval")


def _source(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    operands = _operands(args)
    if not operands or operands[0].unknown or operands[0].value in ("/dev/stdin", "/proc/self/fd/0", "-"):
        out.add("unclassified", f"{args[0].value} runs a script that is only known at run time")


def _at(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    """at/batch run a script read from their input (or -f file) later, as a job."""
    name = posixpath.basename(args[0].value)
    flags = _short_flags(args)
    if name == "at" and flags & {"l", "r", "d", "c"}:
        return  # list, remove or show jobs
    if "f" in flags:
        out.add("unclassified", f"{name} -f runs a script file later")
        return
    _stdin_script(name, out, situation)


_SYSTEMD_RUN_OPTIONS = frozenset({"-u", "--unit", "-p", "--property", "--description", "--slice", "-E", "--setenv",
                                  "--uid", "--gid", "-M", "--machine", "-H", "--host", "--on-active", "--on-boot",
                                  "--on-startup", "--on-unit-active", "--on-unit-inactive", "--on-calendar",
                                  "--on-timezone-change", "--timer-property", "--path-property",
                                  "--socket-property", "--working-directory", "-C", "--capsule"})  # fmt: skip


def _systemd_run(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    out.add("service_control", "systemd-run starts a transient service unit (it outlives the session)")
    inner = _inner_command(args, _SYSTEMD_RUN_OPTIONS)
    if not inner:
        _stdin_script("systemd-run", out, situation)
        return
    _nested_argv(inner, out, situation, "systemd-run")


def _script(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    """script -c 'cmd' [file]: runs cmd (or a shell) under a pseudo-terminal."""
    for i, arg in enumerate(args[1:], start=1):
        script = None
        bundled_c = arg.value.startswith("-") and not arg.value.startswith("--") and arg.value.endswith("c")
        if (arg.value == "--command" or bundled_c) and i + 1 < len(args):
            script = args[i + 1]
        elif arg.value.startswith("--command="):
            script = _Arg(arg.value.split("=", 1)[1], arg.unknown)
        elif arg.value.startswith("-") and not arg.value.startswith("--") and "c" in arg.value:
            script = _Arg(arg.value[arg.value.index("c") + 1 :], arg.unknown)  # -c'cmd'
        if script is not None:
            if script.unknown:
                out.add("unclassified", "script -c with a command only known at run time")
            else:
                _classify_script(script.value, out, situation, "script -c")
            return
    out.add("shell", "script starts an interactive shell")


_TMUX_RUNS = {"new-session", "new", "new-window", "neww", "split-window", "splitw", "respawn-pane", "respawnp",
              "respawn-window", "respawnw", "run-shell", "run", "display-popup", "popup", "if-shell", "if",
              "pipe-pane", "pipep"}  # fmt: skip
_TMUX_TYPES = {"send-keys", "send", "paste-buffer", "pasteb", "set-buffer", "setb", "load-buffer", "loadb",
               "source-file", "source", "command-prompt", "confirm-before", "bind-key", "bind", "set-hook",
               "set-option", "set", "setw", "set-window-option"}  # fmt: skip
_TMUX_VALUE_OPTIONS = frozenset({"-s", "-n", "-t", "-c", "-x", "-y", "-F", "-e", "-l", "-w", "-h", "-L", "-S", "-f",
                                 "-T", "-d", "-b", "-E", "-M"}) - {"-d", "-E", "-M"}  # fmt: skip


def _tmux(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    rest = args[1:]
    i = 0
    while i < len(rest) and rest[i].value.startswith("-"):
        if rest[i].value == "-c" and i + 1 < len(rest):  # tmux -c 'cmd': a shell command, like sh -c
            _classify_script(rest[i + 1].value, out, situation, "tmux -c")
            return
        i += 2 if rest[i].value in ("-L", "-S", "-f", "-T") else 1
    rest = rest[i:]
    if not rest:
        out.add("shell", "tmux starts an interactive shell")
        return
    # tmux runs several commands separated by ';'
    commands: list[list[_Arg]] = [[]]
    for arg in rest:
        if arg.value in (";", "\\;"):
            commands.append([])
        else:
            commands[-1].append(arg)
    for command in commands:
        if not command:
            continue
        verb = command[0].value
        if verb in _TMUX_TYPES:
            out.add("unclassified", f"tmux {verb} types or configures commands that cannot be classified")
        elif verb in _TMUX_RUNS:
            j = 1
            while j < len(command) and command[j].value.startswith("-") and command[j].value != "--":
                j += 2 if command[j].value in _TMUX_VALUE_OPTIONS else 1
            if j < len(command) and command[j].value == "--":
                j += 1
            operands = command[j:]
            if not operands:
                out.add("shell", f"tmux {verb} starts an interactive shell")
            elif verb in ("if-shell", "if") or len(operands) == 1:
                # one argument is a shell command line; if-shell's are all command lines
                for operand in operands:
                    if operand.unknown:
                        out.add("unclassified", f"tmux {verb} runs a command only known at run time")
                    else:
                        _classify_script(operand.value, out, situation, f"tmux {verb}")
            else:
                _nested_argv(operands, out, situation, f"tmux {verb}")  # several: run as an argv
        elif verb in ("attach-session", "attach", "a", "at"):
            out.add("shell", "tmux attach joins an interactive shell")


_SCREEN_VALUE_OPTIONS = frozenset({"-S", "-c", "-p", "-t", "-e", "-h", "-L", "-Logfile", "-T", "-s"})


def _screen(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    i = 1
    while i < len(args) and args[i].value.startswith("-"):
        value = args[i].value
        # -S name, -dmS name: a bundle that ends in an option taking a value takes the next word
        takes_value = value in _SCREEN_VALUE_OPTIONS or (len(value) > 2 and value[-1] in "Scpteh")
        i += 2 if takes_value else 1
    inner = args[i:]
    values = [a.value for a in args[1 : len(args) - len(inner)]]  # screen's own options
    if "-X" in values or "-x" in values or any(v.startswith(("-r", "-R", "-x")) for v in values):
        if "-X" in values:
            out.add("unclassified", "screen -X sends commands (such as stuff) into a running session")
        else:
            out.add("shell", "screen reattaches to an interactive shell")
        return
    if "-ls" in values or "-list" in values:
        return
    if not inner:
        out.add("shell", "screen starts an interactive shell")
        return
    _nested_argv(inner, out, situation, "screen")


_NSENTER_VALUE_OPTIONS = frozenset({"-t", "--target", "-S", "--setuid", "-G", "--setgid", "-r", "-w", "--root",
                                    "--wd", "--env"})  # fmt: skip


def _nsenter(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    out.add("privilege", "nsenter enters another process's namespaces (a container, or the host)")
    inner = _inner_command(args, _NSENTER_VALUE_OPTIONS)
    if not inner:
        out.add("shell", "nsenter starts a shell in the namespaces")
        return
    _nested_argv(inner, out, situation, "nsenter")


def _chroot(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    out.add("privilege", "chroot runs a command under another root directory")
    inner = _inner_command(args, frozenset({"--userspec", "--groups"}), positional=1)
    if not inner:
        out.add("shell", "chroot starts a shell")
        return
    _nested_argv(inner, out, situation, "chroot")


# git -c keys whose value is a program git runs.
_GIT_PROGRAM_KEYS = re.compile(r"(?i)^(alias\.|core\.(pager|sshcommand|editor|fsmonitor|hookspath|gitproxy)|"
                               r"diff\..*\.(command|textconv)|diff\.external|sequence\.editor|credential\.|"
                               r"filter\.|merge\..*\.driver|gpg\.program|uploadpack|receivepack|protocol\.)")


def _git(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    i = 1
    while i < len(args) and args[i].value.startswith("-"):
        value = args[i].value
        if value in ("-c", "--config-env") and i + 1 < len(args):
            key = args[i + 1].value
            if args[i + 1].unknown or _GIT_PROGRAM_KEYS.match(key) or "!" in key:
                out.add("unclassified", f"git -c {key} makes git run a program")
            i += 2
            continue
        if value.startswith("--exec-path=") or value.startswith("--upload-pack") or value == "--exec-path":
            out.add("unclassified", f"git {value} makes git run a program")
        i += 2 if value in ("-C", "--git-dir", "--work-tree", "--namespace") else 1
    rest = args[i:]
    if not rest:
        return
    verb = rest[0].value
    values = {a.value for a in rest[1:]}
    flags = _short_flags(rest)
    if verb == "clean" and ("f" in flags or "--force" in values):
        out.add("destructive", "git clean -f deletes untracked (and with -x ignored) files")
    elif verb == "reset" and "--hard" in values:
        out.add("destructive", "git reset --hard discards uncommitted changes")
    elif verb == "restore" or (verb == "checkout" and values & {"-f", "--force", "."}):
        out.add("destructive", f"git {verb} discards uncommitted changes")
    elif verb == "push" and (values & {"-f", "--force", "--mirror", "--delete", "-d"} or any(v.startswith("--force") or v.startswith(":") or v.startswith("+") for v in values)):
        out.add("destructive", "git push rewrites or deletes remote history")


def _rsync(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    for arg in args[1:]:
        value = arg.value
        if value.startswith("--delete") or value in ("--remove-source-files", "--del"):
            out.add("destructive", f"rsync {value} deletes files")
        elif value.startswith(("--rsh=", "--rsync-path=")) or value in ("-e", "--rsh", "--rsync-path"):
            pass  # the transport command: ssh with options, checked below when it is not plain ssh
    for i, arg in enumerate(args[:-1]):
        if arg.value in ("-e", "--rsh", "--rsync-path") and not re.fullmatch(r"ssh( -[a-zA-Z]+( [^;&|$`<>]+)?)*", args[i + 1].value):
            out.add("unclassified", f"rsync {arg.value} {args[i + 1].value!r} runs a program that cannot be classified")


def _tar(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    values = [a.value for a in args[1:]]
    first = values[0] if values else ""
    bundle = first if first and not first.startswith("-") else ""
    flags = _short_flags(args) | set(bundle)
    long_flags = _long_flags(args)
    extracting = "x" in flags or long_flags & {"--extract", "--get"}
    for value in values:
        if value.startswith(("--to-command", "--checkpoint-action", "--use-compress-program", "--info-script",
                             "--new-volume-script", "--rsh-command", "-I", "-F")) and value != "-I-":
            out.add("unclassified", f"tar {value.split('=')[0]} runs a program that cannot be classified")
    if not extracting:
        return
    directories = []
    for i, arg in enumerate(args[1:], start=1):
        if arg.value == "-C" or arg.value == "--directory":
            if i + 1 < len(args):
                directories.append(args[i + 1])
        elif arg.value.startswith("--directory="):
            directories.append(_Arg(arg.value.split("=", 1)[1], arg.unknown))
        elif arg.value.startswith("-C") and len(arg.value) > 2 and not arg.value.startswith("--"):
            directories.append(_Arg(arg.value[2:], arg.unknown))
    for directory in directories:
        _check_written_path(directory, out, f"tar extracts into {directory.value}")
        if _is_broad(directory) and not directory.unknown and _absolute(directory.value) == "/":
            out.add("system_write", "tar extracts into /")
    if "P" in flags or "--absolute-names" in long_flags:
        out.add("system_write", "tar -P extracts absolute paths anywhere")


def _output_option(options: tuple[str, ...]) -> _Rule:
    """sort -o FILE, curl -o FILE, wget -O FILE: the named file is written."""

    def rule(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
        name = posixpath.basename(args[0].value)
        for i, arg in enumerate(args[1:], start=1):
            target = None
            for option in options:
                if arg.value == option and i + 1 < len(args):
                    target = args[i + 1]
                elif option.startswith("--") and arg.value.startswith(option + "="):
                    target = _Arg(arg.value.split("=", 1)[1], arg.unknown, arg.glob)
                elif not option.startswith("--") and arg.value.startswith(option) and len(arg.value) > len(option):
                    target = _Arg(arg.value[len(option):], arg.unknown, arg.glob)
                if target is not None:
                    _check_written_path(target, out, f"{name} {option} {target.value}")
                    break

    return rule


def _destructive_tool(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    name = posixpath.basename(args[0].value)
    values = {a.value for a in args[1:]}
    if name in ("fdisk", "sfdisk", "parted", "gdisk", "sgdisk") and values & {"-l", "--list", "print", "-p"}:
        return  # listing partitions
    out.add("destructive", f"{name} erases or repartitions disks")


def _dd(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    for arg in args[1:]:
        if arg.value.startswith("of="):
            _check_written_path(_Arg(arg.value[3:], arg.unknown), out, f"dd {arg.value}")


def _permissions(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    name = posixpath.basename(args[0].value)
    operands = _operands(args, frozenset({"--reference"}))
    recursive = "R" in _short_flags(args) or "--recursive" in _long_flags(args)
    if name == "chmod" and operands:
        mode = operands[0].value
        if re.search(r"[+=][rwxXt]*s", mode) or re.fullmatch(r"0*[2-7][0-7]{3}", mode):
            out.add("privilege", f"chmod {mode} sets the setuid/setgid bit")
    if name in ("chown", "chgrp") and operands:
        owner = operands[0].value
        if re.fullmatch(r"(root|0)([:.].*)?|[:.](root|0)", owner) or (name == "chgrp" and owner in ("root", "0")):
            out.add("privilege", f"{name} {owner} hands files to root")
    if recursive:
        for operand in operands[1:]:
            if _is_broad(operand):
                out.add("destructive", f"{name} -R over a broad path: {operand.value}")


def _kill(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    targets = []
    i = 1
    signal_seen = False
    while i < len(args):
        value = args[i].value
        if value == "--":
            targets.extend(a.value for a in args[i + 1 :])
            break
        if value in ("-s", "-n") and not signal_seen:
            signal_seen = True
            i += 2
            continue
        if value.startswith("-") and not signal_seen and not targets:
            signal_seen = True  # -9, -KILL, -SIGTERM (the first dash-word is the signal)
            i += 1
            continue
        targets.append(value)
        i += 1
    if "1" in targets or "-1" in targets:
        out.add("service_control", "kill of init (1) or of every process (-1)")


def _service_control(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    out.add("service_control", f"{posixpath.basename(args[0].value)} stops or restarts the machine or its services")


def _init(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    if len(args) > 1:
        out.add("service_control", f"init {args[1].value} changes the runlevel")


_SYSTEMCTL_READ = {
    "status", "show", "cat", "list-units", "list-unit-files", "list-sockets", "list-timers", "list-jobs",
    "list-dependencies", "list-machines", "list-automounts", "list-paths", "is-active", "is-enabled", "is-failed",
    "is-system-running", "help", "get-default", "show-environment",
}  # fmt: skip


def _systemctl(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    operands = _operands(args, frozenset({"-H", "-M", "-t", "-p", "-P", "-s", "-n", "-o", "--host", "--machine",
                                          "--type", "--property", "--signal", "--lines", "--output", "--state"}))  # fmt: skip
    verb = operands[0].value if operands else "list-units"
    if verb not in _SYSTEMCTL_READ or (operands and operands[0].unknown):
        out.add("service_control", f"systemctl {verb}")


def _service(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    operands = _operands(args)
    if "--status-all" in [a.value for a in args] or (len(operands) >= 2 and operands[1].value == "status"):
        return
    out.add("service_control", "service " + " ".join(a.value for a in operands))


# Package managers: the subcommands that only look. Anything else changes the
# machine's software (fail closed: an unknown subcommand is a change).
_PACKAGE_READ_VERBS = {
    "apt": {"list", "show", "search", "policy", "depends", "rdepends", "madison", "changelog", "help", "showsrc",
            "download", "source", "moo"},
    "apt-get": {"check", "download", "source", "changelog", "help", "moo"},
    "aptitude": {"search", "show", "why", "why-not", "versions", "help"},
    "yum": {"list", "info", "search", "provides", "whatprovides", "repolist", "repoinfo", "check-update", "deplist",
            "repoquery", "help", "history"},
    "dnf": {"list", "info", "search", "provides", "whatprovides", "repolist", "repoinfo", "check-update", "deplist",
            "repoquery", "help", "history"},
    "microdnf": {"repolist", "help"},
    "zypper": {"search", "se", "info", "if", "list-updates", "lu", "patches", "repos", "lr", "packages", "pa",
               "products", "help"},
    "apk": {"info", "search", "list", "policy", "dot", "stats", "audit", "version"},
    "pip": {"list", "show", "freeze", "check", "search", "help", "config", "debug", "inspect", "index", "hash",
            "cache"},
    "pipx": {"list", "environment", "help"},
    "gem": {"list", "search", "query", "info", "specification", "contents", "dependency", "environment", "help",
            "outdated", "which"},
    "snap": {"list", "info", "find", "search", "changes", "change", "connections", "services", "logs", "version",
             "help"},
    "flatpak": {"list", "info", "search", "remotes", "history", "ps", "help"},
    "conda": {"list", "info", "search", "env", "config", "help"},
    "brew": {"list", "ls", "info", "search", "outdated", "deps", "uses", "config", "doctor", "help", "leaves"},
    "cargo": {"build", "check", "test", "run", "bench", "doc", "fmt", "clippy", "metadata", "tree", "search",
              "help", "version", "new", "init"},
}  # fmt: skip
# npm-style tools run project scripts as their everyday job; list what installs.
_PACKAGE_CHANGE_VERBS = {
    "npm": {"install", "i", "in", "ins", "inst", "insta", "instal", "isnt", "isntall", "add", "ci", "clean-install",
            "install-clean", "update", "up", "upgrade", "udpate", "uninstall", "un", "unlink", "remove", "rm", "r",
            "link", "ln", "dedupe", "prune", "rebuild", "publish", "unpublish", "deprecate"},
    "pnpm": {"add", "install", "i", "remove", "rm", "uninstall", "update", "up", "upgrade", "link", "unlink",
             "prune", "rebuild", "publish"},
    "yarn": {"add", "remove", "install", "upgrade", "up", "global", "link", "unlink", "publish"},
}  # fmt: skip
_PACKAGE_MANAGER_OPTIONS_WITH_VALUE = frozenset({"-o", "-c", "-t", "-a", "--target-release", "--prefix", "-C",
                                                 "--root", "--config", "--index-url", "-i", "-r", "-e"})  # fmt: skip


def _package_manager(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    name = re.sub(r"[0-9.]+$", "", posixpath.basename(args[0].value))
    operands = _operands(args, _PACKAGE_MANAGER_OPTIONS_WITH_VALUE)
    verb = operands[0].value if operands else ""
    if name in _PACKAGE_CHANGE_VERBS:
        changes = verb in _PACKAGE_CHANGE_VERBS[name] or (name == "yarn" and not verb)
        changes = changes or (verb == "audit" and any(a.value == "fix" for a in operands))
        if changes:
            out.add("package_change", f"{name} {verb}".strip())
        return
    if not verb:
        if _long_flags(args) & {"--version", "--help"} or _short_flags(args) & {"v", "h", "V"}:
            return
    if verb not in _PACKAGE_READ_VERBS.get(name, set()):
        out.add("package_change", f"{name} {verb}".strip())


def _dpkg(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    changing_long = {"--install", "--remove", "--purge", "--unpack", "--configure", "--set-selections",
                     "--clear-selections", "--update-avail", "--merge-avail", "--triggers-only"}  # fmt: skip
    changing_short = {"i", "r", "P", "a"}
    if _long_flags(args) & changing_long or _short_flags(args) & changing_short:
        out.add("package_change", "dpkg installs or removes packages")


def _rpm(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    for arg in args[1:]:
        value = arg.value
        if value in ("--install", "--upgrade", "--freshen", "--erase", "--reinstall", "--import") or (
            value.startswith("-") and not value.startswith("--") and value[1:2] in ("i", "U", "F", "e")
        ):
            out.add("package_change", f"rpm {value}")
            return


def _crontab(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    flags = _short_flags(args)
    operands = _operands(args, frozenset({"-u"}))
    if flags & {"e", "r"} or operands or "l" not in flags:
        out.add("system_write", "crontab installs, edits or removes a crontab")


_PRIVILEGED_GROUPS = {"sudo", "wheel", "admin", "root", "docker", "adm", "lxd", "disk"}


def _account_admin(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    name = posixpath.basename(args[0].value)
    out.add("system_write", f"{name} changes users, groups or passwords")
    groups = {g for a in args[1:] for g in a.value.split(",")}
    if name in ("visudo", "vipw", "vigr") or groups & _PRIVILEGED_GROUPS:
        out.add("privilege", f"{name} grants administrative access")


def _mount(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    name = posixpath.basename(args[0].value)
    if name in ("mount",) and len(args) == 1:
        return  # lists mounts
    out.add("system_write", f"{name} changes the machine's mounts or swap")


def _sysctl(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    if "w" in _short_flags(args) or "p" in _short_flags(args) or any("=" in a.value for a in _operands(args)):
        out.add("system_write", "sysctl changes kernel parameters")


def _kernel_modules(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    if "n" not in _short_flags(args) and "--dry-run" not in _long_flags(args):
        out.add("system_write", f"{posixpath.basename(args[0].value)} loads or unloads kernel modules")


def _privilege_tool(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    out.add("privilege", f"{posixpath.basename(args[0].value)} changes privileges or capabilities")


def _mv(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    operands = _operands(args, frozenset({"-t", "-S"}))
    for source in operands[:-1]:
        if _is_broad(source):
            out.add("destructive", f"mv of a broad path: {source.value}")


_SUDO_OPTIONS = frozenset({"-u", "-g", "-p", "-C", "-D", "-r", "-t", "-T", "-U", "-h", "--user", "--group",
                           "--prompt", "--close-from", "--chdir", "--role", "--type", "--command-timeout",
                           "--other-user", "--host"})  # fmt: skip

_RULES: dict[str, _Rule] = {
    # wrappers: look at what they run
    "sudo": _privileged_wrapper(_SUDO_OPTIONS, frozenset({"-i", "-s", "--login", "--shell"})),
    "doas": _privileged_wrapper(frozenset({"-u", "-C"}), frozenset({"-s"})),
    "pkexec": _privileged_wrapper(frozenset({"--user"})),
    "su": _su,
    "runuser": _su,
    "env": _env,
    "nice": _wrapper(frozenset({"-n", "--adjustment"})),
    "nohup": _wrapper(),
    "time": _wrapper(frozenset({"-f", "-o", "--format", "--output"})),
    "timeout": _wrapper(frozenset({"-s", "-k", "--signal", "--kill-after"}), positional=1),
    "stdbuf": _wrapper(frozenset({"-i", "-o", "-e"})),
    "ionice": _wrapper(frozenset({"-c", "-n", "-t", "--class", "--classdata"})),
    "setsid": _wrapper(),
    "unbuffer": _wrapper(),
    "command": _wrapper(),
    "builtin": _wrapper(),
    "exec": _wrapper(frozenset({"-a"})),
    "busybox": _wrapper(),
    "chrt": _wrapper(frozenset(), positional=1),
    "taskset": _wrapper(frozenset(), positional=1),
    "flock": _wrapper(frozenset({"-w", "-E", "--timeout", "--conflict-exit-code"}), positional=1),
    "strace": _wrapper(frozenset({"-o", "-e", "-p", "-s", "-u", "-E"})),
    "xargs": _xargs,
    "find": _find,
    "watch": _string_command(frozenset({"-n", "-d", "--interval", "--differences"})),
    "ssh": _string_command(frozenset({"-b", "-c", "-D", "-E", "-e", "-F", "-I", "-i", "-J", "-L", "-l", "-m", "-O",
                                      "-o", "-p", "-Q", "-R", "-S", "-W", "-w", "-B"}), positional=1),  # fmt: skip
    "trap": _string_command(frozenset()),
    # code we cannot read
    "eval": _eval,
    "source": _source,
    ".": _source,
    "at": _at,
    "batch": _at,
    "systemd-run": _systemd_run,
    "script": _script,
    "tmux": _tmux,
    "screen": _screen,
    "nsenter": _nsenter,
    "git": _git,
    "rsync": _rsync,
    "tar": _tar,
    "sort": _output_option(("-o", "--output")),
    "curl": _output_option(("-o", "--output")),
    "wget": _output_option(("-O", "--output-document", "-P", "--directory-prefix")),
    "coproc": _wrapper(),
    "alias": _refuse("defines a name that later commands run"),
    "python": _interpreter,
    "perl": _interpreter,
    "ruby": _interpreter,
    "node": _interpreter,
    "nodejs": _interpreter,
    "php": _interpreter,
    "lua": _interpreter,
    "awk": _awk,
    "gawk": _awk,
    "mawk": _awk,
    # shells
    **{name: _shell for name in _SHELLS},
    # destructive
    "rm": _rm,
    "mv": _mv,
    "dd": _dd,
    "truncate": _ordinary,  # the common write check covers devices and system paths
    **{name: _destructive_tool for name in ("mkfs", "mke2fs", "mkswap", "wipefs", "shred", "fdisk", "sfdisk", "cfdisk",
                                            "gdisk", "sgdisk", "parted", "blkdiscard")},  # fmt: skip
    # permissions
    "chmod": _permissions,
    "chown": _permissions,
    "chgrp": _permissions,
    "setcap": _privilege_tool,
    "setpriv": _privilege_tool,
    "capsh": _privilege_tool,
    "newgrp": _privilege_tool,
    "sg": _privilege_tool,
    "chroot": _chroot,
    # services and power
    "systemctl": _systemctl,
    "service": _service,
    "kill": _kill,
    "killall": _service_control,
    "killall5": _service_control,
    "pkill": _service_control,
    "shutdown": _service_control,
    "reboot": _service_control,
    "halt": _service_control,
    "poweroff": _service_control,
    "telinit": _init,
    "init": _init,
    # packages
    **{name: _package_manager for name in (*_PACKAGE_READ_VERBS, *_PACKAGE_CHANGE_VERBS)},
    "dpkg": _dpkg,
    "rpm": _rpm,
    # the system's configuration
    "crontab": _crontab,
    **{name: _account_admin for name in ("useradd", "userdel", "usermod", "groupadd", "groupdel", "groupmod",
                                         "passwd", "chpasswd", "chage", "gpasswd", "adduser", "deluser", "addgroup",
                                         "delgroup", "newusers", "vipw", "vigr", "visudo")},  # fmt: skip
    "mount": _mount,
    "umount": _mount,
    "swapon": _mount,
    "swapoff": _mount,
    "sysctl": _sysctl,
    "modprobe": _kernel_modules,
    "insmod": _kernel_modules,
    "rmmod": _kernel_modules,
}
