"""Classify shell command lines (SSH exec/PTY lines, kubectl exec argv) into guardrail classes.

``classify_command(text_or_argv)`` splits a command line into simple commands
(at ``;``, ``&&``, ``||``, ``|``, ``&``, newlines and subshell parentheses),
looks through wrappers that run another command (``sudo``, ``env``,
``timeout``, ``xargs``, ``find -exec``, ``bash -c '...'`` ...) and names what
each simple command does. Class names are those of
``jitgate.policy.EXEC_CLASSES``.

Why not ``shlex`` alone: after ``shlex`` has removed the quotes it can no
longer tell ``'$(id)'`` (a literal) from ``"$(id)"`` (a command that runs), nor
``'*'`` from ``*``. The small lexer below keeps, for every word, whether it
holds an expansion, a glob or a command substitution, and where it came from in
the text, so each verdict can quote the exact command. It understands the
POSIX/bash quoting rules: single and double quotes, backslashes, ``$'...'``,
``${...}``, ``$(...)``, backticks, ``<(...)``, comments and here-documents.

Fail closed: anything whose meaning is only known when it runs (command
substitution, ``eval``, a command name built from variables, inline
interpreter code such as ``python -c``, a script piped into a shell, function
and alias definitions) is ``unclassified``, as is text that does not lex.

What it cannot see: the working directory (``cd /etc && rm -rf nginx`` only
sees ``nginx``), what an ordinary program or script file does when it runs, and
``PATH`` tricks.
"""
from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from jitgate.guardrails.sql import Classification, StatementVerdict

__all__ = ["classify_command"]

# Nesting of bash -c 'sudo sh -c "..."' beyond this is refused rather than followed.
_MAX_DEPTH = 8


# --- lexing ---------------------------------------------------------------------------


class ShellSyntaxError(ValueError):
    """The text is not a command line a shell would accept (unbalanced quotes...)."""


@dataclass
class _Word:
    value: str  # after quote removal; expansions are kept as written
    start: int
    end: int
    expands: bool = False  # $VAR, ${...}, $'...': the value is only known at run time
    glob: bool = False  # unquoted * ? [ { : the shell replaces it with file names
    substitution: bool = False  # $(...), `...`, <(...): runs a command of its own
    quoted: bool = False  # any part was quoted (a quoted here-doc delimiter disables expansion)
    tilde: bool = False  # begins with an unquoted ~

    @property
    def unknown(self) -> bool:
        return self.expands or self.substitution


@dataclass
class _Operator:
    value: str
    start: int
    end: int
    # for << and <<-: the here-document body and whether it expands ($ and `)
    heredoc_body: str | None = None
    heredoc_substitution: bool = False


_Token = _Word | _Operator

_OPERATORS = sorted(
    ["&&", "||", ";;", ";", "|&", "|", "&>>", "&>", "&", "<<<", "<<-", "<<", "<>", "<&", "<", ">>", ">|", ">&", ">", "(", ")"],
    key=len,
    reverse=True,
)
_OPERATOR_START = set("&|;<>()")
_REDIRECTS = {"<", ">", ">>", ">|", "<>", "<&", ">&", "&>", "&>>", "<<", "<<-", "<<<"}
_OUTPUT_REDIRECTS = {">", ">>", ">|", "<>", ">&", "&>", "&>>"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPECIAL_PARAMETERS = set("@*#?-$!0123456789")


def _is_brace_expansion(text: str, at: int) -> bool:
    close = text.find("}", at)
    return close > at and ("," in text[at:close] or ".." in text[at:close])


def _lex(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pending_heredocs: list[tuple[_Operator, _Word, bool]] = []
    i = 0
    n = len(text)
    word: _Word | None = None
    buf: list[str] = []

    def begin(at: int) -> _Word:
        nonlocal word
        if word is None:
            word = _Word("", at, at)
        return word

    def finish(at: int) -> None:
        nonlocal word
        if word is not None:
            word.value = "".join(buf)
            word.end = at
            tokens.append(word)
            buf.clear()
            word = None

    def skip_balanced(pos: int, opening: str, closing: str) -> int:
        """Index just past the ``closing`` matching an ``opening`` at ``pos``."""
        depth = 0
        j = pos
        while j < n:
            ch = text[j]
            if ch == "\\":
                j += 2
                continue
            if ch == "'" and opening != "{":
                end = text.find("'", j + 1)
                if end < 0:
                    raise ShellSyntaxError("unterminated single quote")
                j = end + 1
                continue
            if ch == opening:
                depth += 1
            elif ch == closing:
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        raise ShellSyntaxError(f"unterminated {opening}...{closing}")

    def dollar(pos: int, w: _Word, in_double_quotes: bool) -> int:
        """Handle a ``$`` at ``pos``; returns the next index."""
        nxt = text[pos + 1] if pos + 1 < n else ""
        if nxt == "(":
            w.substitution = True
            end = skip_balanced(pos + 1, "(", ")")
            buf.append(text[pos:end])
            return end
        if nxt == "{":
            w.expands = True
            end = skip_balanced(pos + 1, "{", "}")
            if "$(" in text[pos:end] or "`" in text[pos:end]:
                w.substitution = True
            buf.append(text[pos:end])
            return end
        if nxt == "'" and not in_double_quotes:
            # $'\x72m' is "rm": ANSI-C quoting can spell any name, so its value
            # counts as unknown.
            w.expands = True
            j = pos + 2
            while j < n and text[j] != "'":
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise ShellSyntaxError("unterminated $'...' quote")
            buf.append(text[pos : j + 1])
            return j + 1
        if nxt == '"' and not in_double_quotes:
            return pos + 1  # $"..." is a translatable string: read it as "..."
        match = _NAME.match(text, pos + 1)
        if match:
            w.expands = True
            buf.append(text[pos : match.end()])
            return match.end()
        if nxt and nxt in _SPECIAL_PARAMETERS:
            w.expands = True
            buf.append(text[pos : pos + 2])
            return pos + 2
        buf.append("$")
        return pos + 1

    def backtick(pos: int, w: _Word) -> int:
        j = pos + 1
        while j < n and text[j] != "`":
            j += 2 if text[j] == "\\" else 1
        if j >= n:
            raise ShellSyntaxError("unterminated backquote")
        w.substitution = True
        buf.append(text[pos : j + 1])
        return j + 1

    def read_heredocs(pos: int) -> int:
        """Bodies of the here-documents started on the line that ends at ``pos``."""
        for op, delimiter, strip_tabs in pending_heredocs:
            lines: list[str] = []
            while True:
                if pos >= n:
                    raise ShellSyntaxError(f"here-document delimited by {delimiter.value!r} is not terminated")
                end = text.find("\n", pos)
                line = text[pos:] if end < 0 else text[pos:end]
                pos = n if end < 0 else end + 1
                if strip_tabs:
                    line = line.lstrip("\t")
                if line == delimiter.value:
                    break
                lines.append(line)
            body = "\n".join(lines)
            op.heredoc_body = body
            if not delimiter.quoted and ("$(" in body or "`" in body):
                op.heredoc_substitution = True
        pending_heredocs.clear()
        return pos

    while i < n:
        ch = text[i]
        if ch in " \t\r":
            finish(i)
            i += 1
        elif ch == "\n":
            finish(i)
            tokens.append(_Operator("\n", i, i + 1))
            i = read_heredocs(i + 1)
        elif ch == "#" and word is None:
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif ch == "'":
            w = begin(i)
            w.quoted = True
            end = text.find("'", i + 1)
            if end < 0:
                raise ShellSyntaxError("unterminated single quote")
            buf.append(text[i + 1 : end])
            i = end + 1
        elif ch == '"':
            w = begin(i)
            w.quoted = True
            j = i + 1
            while True:
                if j >= n:
                    raise ShellSyntaxError("unterminated double quote")
                c = text[j]
                if c == '"':
                    j += 1
                    break
                if c == "\\" and j + 1 < n and text[j + 1] in '$`"\\\n':
                    if text[j + 1] != "\n":
                        buf.append(text[j + 1])
                    j += 2
                elif c == "$":
                    j = dollar(j, w, in_double_quotes=True)
                elif c == "`":
                    j = backtick(j, w)
                else:
                    buf.append(c)
                    j += 1
            i = j
        elif ch == "\\":
            if i + 1 < n and text[i + 1] == "\n":
                i += 2  # line continuation
                continue
            w = begin(i)
            w.quoted = True
            buf.append(text[i + 1] if i + 1 < n else "\\")
            i += 2
        elif ch == "$":
            i = dollar(i, begin(i), in_double_quotes=False)
        elif ch == "`":
            i = backtick(i, begin(i))
        elif ch in "<>" and i + 1 < n and text[i + 1] == "(":
            w = begin(i)  # process substitution <(...) / >(...)
            w.substitution = True
            end = skip_balanced(i + 1, "(", ")")
            buf.append(text[i:end])
            i = end
        elif ch in _OPERATOR_START:
            operator = next(op for op in _OPERATORS if text.startswith(op, i))
            io_number = (
                operator[0] in "<>" and word is not None and not word.quoted and "".join(buf).isdigit()
            )
            if io_number:  # 2>file: the digits belong to the redirection
                start = word.start
                buf.clear()
                word = None
            else:
                finish(i)
                start = i
            op = _Operator(operator, start, i + len(operator))
            tokens.append(op)
            i += len(operator)
            if operator in ("<<", "<<-"):
                # The delimiter is the next word; the body starts after the line.
                while i < n and text[i] in " \t":
                    i += 1
                delimiter_start = len(tokens)
                j = i
                while j < n and text[j] not in " \t\n;&|<>()":
                    if text[j] in "'\"":
                        close = text.find(text[j], j + 1)
                        if close < 0:
                            raise ShellSyntaxError("unterminated quote in here-document delimiter")
                        j = close + 1
                    else:
                        j += 1
                if j == i:
                    raise ShellSyntaxError("here-document without a delimiter")
                raw = text[i:j]
                delimiter = _Word(raw.replace("'", "").replace('"', "").replace("\\", ""), i, j)
                delimiter.quoted = any(q in raw for q in "'\"\\")
                tokens.insert(delimiter_start, delimiter)
                pending_heredocs.append((op, delimiter, operator == "<<-"))
                i = j
        else:
            w = begin(i)
            if ch in "*?[":
                w.glob = True
            elif ch == "{" and _is_brace_expansion(text, i):
                w.glob = True  # /{etc,var} names several paths
            elif ch == "~" and not buf:
                w.tilde = True
            buf.append(ch)
            i += 1
    finish(n)
    if pending_heredocs:
        raise ShellSyntaxError("here-document is not terminated")
    return tokens


# --- splitting into simple commands -------------------------------------------------


@dataclass
class _Redirect:
    operator: str
    target: _Word | None
    heredoc_body: str | None = None
    heredoc_substitution: bool = False


@dataclass
class _SimpleCommand:
    words: list[_Word] = field(default_factory=list)
    redirects: list[_Redirect] = field(default_factory=list)
    start: int = 0
    end: int = 0
    piped_in: bool = False  # stdin comes from the previous command of a pipeline
    defines_function: bool = False


def _split(tokens: list[_Token]) -> list[_SimpleCommand]:
    commands: list[_SimpleCommand] = []
    current = _SimpleCommand()
    i = 0

    def close(next_piped: bool) -> None:
        nonlocal current
        if current.words or current.redirects:
            commands.append(current)
        current = _SimpleCommand(piped_in=next_piped)

    while i < len(tokens):
        token = tokens[i]
        if isinstance(token, _Word):
            if not current.words and not current.redirects:
                current.start = token.start
            current.words.append(token)
            current.end = token.end
            i += 1
            continue
        if token.value in _REDIRECTS:
            target = tokens[i + 1] if i + 1 < len(tokens) and isinstance(tokens[i + 1], _Word) else None
            if target is None:
                raise ShellSyntaxError(f"redirection {token.value!r} without a target")
            if not current.words and not current.redirects:
                current.start = token.start
            current.redirects.append(_Redirect(token.value, target, token.heredoc_body, token.heredoc_substitution))
            current.end = target.end
            i += 2
            continue
        if token.value == "(" and current.words:
            # name () { ...; }: a function definition; its body runs later under
            # a name that looks harmless.
            current.defines_function = True
            current.end = token.end
            i += 1
            continue
        if token.value == ")" and current.defines_function:
            i += 1
            continue
        close(next_piped=token.value in ("|", "|&"))
        i += 1
    close(next_piped=False)
    return commands


# --- classification ------------------------------------------------------------------


@dataclass
class _Arg:
    """One argument as a command will see it."""

    value: str
    unknown: bool = False  # only known at run time (expansion, substitution, stdin of xargs)
    glob: bool = False
    tilde: bool = False
    substitution: bool = False

    @classmethod
    def of(cls, word: _Word) -> "_Arg":
        return cls(word.value, word.unknown, word.glob, word.tilde, word.substitution)


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
    """What surrounds a command: nesting depth and where its stdin comes from."""

    depth: int = 0
    stdin_script: str | None = None  # a readable here-document
    stdin_unknown: bool = False  # a pipe, a file or an unreadable here-document


def classify_command(command: str | Sequence[str]) -> Classification:
    """Classify a shell command line (str) or an exec argv (list of str).

    An empty command (an SSH session without a command, ``kubectl exec -it``
    with no argv) asks for an interactive shell: ``{"shell"}``. Each simple
    command of a list or pipeline becomes one ``StatementVerdict``.
    """
    if not isinstance(command, str):
        argv = [str(a) for a in command]
        if not any(a.strip() for a in argv):
            return _interactive_shell("")
        out = _Findings()
        # An argv list runs without a shell: no operators, no expansion.
        _classify_argv([_Arg(a) for a in argv], out, _Situation())
        verdict = _verdict(shlex.join(argv), out)
        return Classification(verdict.classes, (verdict,), None)

    if not command.strip():
        return _interactive_shell(command)
    try:
        simple_commands = _split(_lex(command))
    except ShellSyntaxError as exc:
        verdict = StatementVerdict(command, _UNCLASSIFIED, (f"cannot parse: {exc}",))
        return Classification(_UNCLASSIFIED, (verdict,), str(exc))
    if not simple_commands:
        # Only comments: nothing runs.
        verdict = StatementVerdict(command.strip(), frozenset({"command"}), ("only comments",))
        return Classification(verdict.classes, (verdict,), None)
    verdicts = []
    for simple in simple_commands:
        out = _Findings()
        _classify_simple(simple, out, _Situation())
        verdicts.append(_verdict(command[simple.start : simple.end], out))
    return Classification(frozenset().union(*(v.classes for v in verdicts)), tuple(verdicts), None)


_UNCLASSIFIED = frozenset({"unclassified"})


def _interactive_shell(text: str) -> Classification:
    verdict = StatementVerdict(text, frozenset({"shell"}), ("interactive shell",))
    return Classification(verdict.classes, (verdict,), None)


def _verdict(text: str, out: _Findings) -> StatementVerdict:
    if not out.classes:
        out.add("command", "ordinary command")
    return StatementVerdict(text.strip(), frozenset(out.classes), tuple(out.reasons))


def _classify_script(script: str, out: _Findings, situation: _Situation, origin: str) -> None:
    """A script given as a string (bash -c, su -c, ssh host 'cmd', a here-document)."""
    if situation.depth >= _MAX_DEPTH:
        out.add("unclassified", f"{origin}: nested too deeply to follow")
        return
    try:
        simple_commands = _split(_lex(script))
    except ShellSyntaxError as exc:
        out.add("unclassified", f"{origin}: cannot parse: {exc}")
        return
    for simple in simple_commands:
        _classify_simple(simple, out, _Situation(depth=situation.depth + 1))


def _classify_simple(simple: _SimpleCommand, out: _Findings, situation: _Situation) -> None:
    if simple.defines_function:
        out.add("unclassified", "defines a shell function (its body runs later under another name)")
        return
    stdin_script = None
    stdin_unknown = simple.piped_in
    for redirect in simple.redirects:
        _check_redirect(redirect, out)
        if redirect.heredoc_substitution:
            out.add("unclassified", "the here-document runs a command substitution")
            return
        if redirect.operator in ("<<", "<<-"):
            stdin_script = redirect.heredoc_body
        elif redirect.operator in ("<", "<<<", "<>"):
            stdin_unknown = True
    for word in simple.words:
        if word.substitution:
            out.add("unclassified", f"command substitution {word.value!r} runs a command that cannot be classified first")
            return
    inner = _Situation(depth=situation.depth, stdin_script=stdin_script, stdin_unknown=stdin_unknown)
    _classify_argv([_Arg.of(w) for w in simple.words], out, inner)


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
    "/proc/sys",
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
    if arg.unknown:
        return False
    if ".ssh/" in arg.value or arg.value.endswith((".ssh", "authorized_keys")):
        return True  # someone's authorized_keys is a way in
    path = _absolute(arg.value)
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


def _check_redirect(redirect: _Redirect, out: _Findings) -> None:
    if redirect.operator not in _OUTPUT_REDIRECTS or redirect.target is None:
        return
    target = _Arg.of(redirect.target)
    if redirect.operator == ">&" and (target.value.isdigit() or target.value == "-"):
        return  # 2>&1: a file descriptor, not a file
    if target.substitution:
        out.add("unclassified", f"redirection to {target.value!r}, a command substitution")
    elif target.unknown:
        out.add("system_write", f"redirection to {target.value!r}, a path only known at run time")
    else:
        _check_written_path(target, out, f"redirection {redirect.operator} {target.value}")


def _check_written_path(arg: _Arg, out: _Findings, what: str) -> None:
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
    while args and args[0].value in _RESERVED_PREFIXES and not args[0].unknown:
        args = args[1:]
    if not args:
        return
    name_arg = args[0]
    if name_arg.unknown or name_arg.glob:
        out.add("unclassified", f"the command name {name_arg.value!r} is only known at run time")
        return
    name = posixpath.basename(name_arg.value)
    if name in _RESERVED_REFUSED:
        out.add("unclassified", f"{name!r} compound command cannot be classified")
        return
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


_RESERVED_PREFIXES = {"if", "then", "else", "elif", "do", "while", "until", "!", "{", "}", "fi", "done", "time", "[["}
_RESERVED_REFUSED = {"case", "esac", "function", "coproc", "select"}

# name -> options that take a value (so the value is not taken for a path)
_WRITES_LAST_OPERAND: dict[str, frozenset[str]] = {
    "cp": frozenset({"-t", "-S"}),
    "mv": frozenset({"-t", "-S"}),
    "install": frozenset({"-t", "-m", "-o", "-g", "-S"}),
    "ln": frozenset({"-t", "-S"}),
    "rsync": frozenset({"-e", "--rsh"}),
    "scp": frozenset({"-P", "-i", "-o", "-F", "-c", "-l", "-S", "-J"}),
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


def _find(args: list[_Arg], out: _Findings, situation: _Situation) -> None:
    starts = []
    for arg in args[1:]:
        if arg.value.startswith(("-", "(", "!")):
            break
        starts.append(arg)
    values = [a.value for a in args]
    if "-delete" in values and (not starts or any(_is_broad(s) or _is_system_path(s) for s in starts)):
        out.add("destructive", f"find -delete under {', '.join(s.value for s in starts) or '.'}")
    i = 0
    while i < len(args):
        if args[i].value in ("-exec", "-execdir", "-ok", "-okdir"):
            j = i + 1
            inner = []
            while j < len(args) and args[j].value not in (";", "+"):
                # {} stands for every file found: unknown to us
                inner.append(_Arg(args[j].value, unknown=True) if "{}" in args[j].value else args[j])
                j += 1
            if j >= len(args):
                out.add("unclassified", "find -exec without a terminating ';' or '+'")
                return
            _nested_argv(inner, out, situation, f"find {args[i].value}")
            i = j
        i += 1


def _nested_argv(inner: list[_Arg], out: _Findings, situation: _Situation, origin: str) -> None:
    if situation.depth >= _MAX_DEPTH:
        out.add("unclassified", f"{origin}: nested too deeply to follow")
        return
    if not inner:
        return
    _classify_argv(inner, out, _Situation(depth=situation.depth + 1))


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
    elif situation.stdin_script is not None and not situation.stdin_unknown:
        _classify_script(situation.stdin_script, out, situation, f"{name} here-document")
    elif situation.stdin_unknown:
        out.add("unclassified", f"{name} reads a script from its input (a pipe or a file)")
    else:
        out.add("shell", f"{name} starts an interactive shell")


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
    if any(v in flags or (len(v) > 2 and v[:2] in flags and not v.startswith("--")) for v in values):
        out.add("unclassified", f"{name} runs inline code that cannot be classified")
    elif not _operands(args) and situation.stdin_unknown:
        out.add("unclassified", f"{name} runs code read from its input")


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
        if not rest:
            return
        name = posixpath.basename(args[0].value)
        if name == "trap":
            rest = rest[:1]
        if any(a.unknown for a in rest):
            out.add("unclassified", f"{name} runs a command only known at run time")
            return
        _classify_script(" ".join(a.value for a in rest), out, situation, name)

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
    "eval": _refuse("evaluates text built at run time"),
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
    "chroot": _privilege_tool,
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
