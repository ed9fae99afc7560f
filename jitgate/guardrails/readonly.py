"""The built-in read-only list for ``commands: {mode: allowlist}``.

In allow-list mode a command runs without a human only when every program it
runs (at any depth: pipelines, substitutions, ``bash -c`` strings, what
wrappers such as ``time`` or ``xargs`` run) is on this list with harmless
arguments, or on the policy's own ``allow`` entries. Everything else waits for
approval (or is refused, by policy). The list is deliberately short: programs
that only look, with the flags that would make them write, run code or change
state excluded. ``README.md`` ("Shell commands: the allow-list") documents it.

``is_read_only(argv)`` takes the argument values (the command name first, as
the shell classifier resolved them) and returns None when the command is
read-only, else a short reason.
"""
from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence

Check = Callable[[Sequence[str]], "str | None"]

__all__ = ["is_read_only", "READ_ONLY", "DOCUMENTED"]


def _flag_matches(arg: str, flag: str) -> bool:
    if flag.startswith("--"):
        return arg == flag or arg.startswith(flag + "=") or (flag.endswith("-") and arg.startswith(flag))
    if len(flag) == 2 and arg.startswith("-") and not arg.startswith("--"):
        return flag[1] in arg[1:]  # -c inside a bundle such as -xvc
    return arg == flag


def _without(*flags: str) -> Check:
    """Read-only unless one of these flags is present (``--vacuum-`` matches every --vacuum-*)."""

    def check(argv: Sequence[str]) -> str | None:
        for arg in argv[1:]:
            if arg == "--":
                break
            for flag in flags:
                if _flag_matches(arg, flag):
                    return f"{posixpath.basename(argv[0])} {arg} changes something"
        return None

    return check


def _operands(argv: Sequence[str]) -> list[str]:
    return [a for a in argv[1:] if not a.startswith("-")]


def _verbs(verbs: set[str], *, position: int = 0, empty_ok: bool = True, excluded_flags: tuple[str, ...] = ()) -> Check:
    """Read-only when the subcommand (the ``position``-th operand) is one of ``verbs``."""
    without = _without(*excluded_flags)

    def check(argv: Sequence[str]) -> str | None:
        operands = _operands(argv)
        if len(operands) <= position:
            return None if empty_ok else f"{posixpath.basename(argv[0])} without a subcommand"
        verb = operands[position]
        if verb not in verbs:
            return f"{posixpath.basename(argv[0])} {verb} is not on the read-only list"
        return without(argv)

    return check


def _no_operands(argv: Sequence[str]) -> str | None:
    """hostname, date: with an operand they set something."""
    return f"{posixpath.basename(argv[0])} with an operand changes something" if _operands(argv) else None


def _date(argv: Sequence[str]) -> str | None:
    if any(_flag_matches(a, f) for a in argv[1:] for f in ("-s", "--set")):
        return "date -s sets the clock"
    return _no_operands([argv[0], *[a for a in argv[1:] if not a.startswith("+")]])


def _always(argv: Sequence[str]) -> str | None:
    return None


def _shell(argv: Sequence[str]) -> str | None:
    # bash -c 'script' and a here-document: the script's own commands are judged one by one;
    # a shell reading the client's input is the ``shell`` class (the ``shells`` setting).
    flags = "".join(a[1:] for a in argv[1:] if a.startswith("-") and not a.startswith("--"))
    if "c" in flags or "s" in flags or not _operands(argv):
        return None
    return f"{posixpath.basename(argv[0])} runs a script file whose content is not in the command"


def _git(argv: Sequence[str]) -> str | None:
    operands = [a for a in argv[1:] if not a.startswith("-")]
    if any(a.startswith("-c") or a.startswith("--exec-path") for a in argv[1:3]):
        return "git -c sets configuration that can run programs"
    if not operands:
        return None
    verb = operands[0]
    if verb in {"status", "log", "show", "diff", "blame", "rev-parse", "ls-files", "ls-tree", "describe",
                "shortlog", "cat-file", "grep", "reflog", "whatchanged", "version", "help"}:  # fmt: skip
        return _without("--output", "--ext-diff", "--textconv")(argv)
    if verb == "branch" and not set(argv) & {"-d", "-D", "-m", "-M", "-c", "-C", "--delete", "--move", "--copy",
                                             "-u", "--set-upstream-to", "--unset-upstream", "-f", "--force"}:
        return None if len(operands) == 1 else "git branch NAME creates a branch"
    if verb == "remote" and (len(operands) == 1 or operands[1:2] == ["show"]):
        return None
    if verb == "tag" and (len(operands) == 1 or "-l" in argv or "--list" in argv):
        return None
    return f"git {verb} is not on the read-only list"


def _kubectl(argv: Sequence[str]) -> str | None:
    verbs = {"get", "describe", "logs", "top", "explain", "version", "api-resources", "api-versions",
             "cluster-info", "auth", "events"}  # fmt: skip
    operands = [a for a in argv[1:] if not a.startswith("-")]
    if not operands:
        return None
    verb = operands[0]
    if verb not in verbs:
        return f"kubectl {verb} is not on the read-only list"
    if verb == "cluster-info" and "dump" in operands:
        return "kubectl cluster-info dump writes files"
    if verb == "auth" and operands[1:2] != ["can-i"] and operands[1:2] != ["whoami"]:
        return "kubectl auth reconcile changes RBAC"
    return _without("--output-directory", "--kubeconfig", "--token", "--as", "--as-group")(argv)


def _docker(argv: Sequence[str]) -> str | None:
    return _verbs({"ps", "images", "logs", "inspect", "version", "info", "stats", "top", "port", "diff", "history"})(argv)


def _ip(argv: Sequence[str]) -> str | None:
    operands = _operands(argv)
    if not operands:
        return None
    if len(operands) == 1 or operands[1] in ("show", "list", "ls", "lst", "get"):
        return None if not (operands[0].startswith("netns") and len(operands) > 1 and operands[1] == "exec") else "ip netns exec"
    return f"ip {' '.join(operands[:2])} changes the network"


def _systemctl(argv: Sequence[str]) -> str | None:
    return _verbs({"status", "show", "cat", "list-units", "list-unit-files", "list-sockets", "list-timers",
                   "list-jobs", "list-dependencies", "is-active", "is-enabled", "is-failed", "is-system-running",
                   "get-default", "show-environment", "help"})(argv)  # fmt: skip


def _uniq(argv: Sequence[str]) -> str | None:
    return "uniq INPUT OUTPUT writes its output file" if len(_operands(argv)) > 1 else None


def _env(argv: Sequence[str]) -> str | None:
    # env alone prints; env NAME=v cmd runs cmd, which is judged on its own.
    return _without("-S", "--split-string")(argv)


def _package_query(verbs: set[str]) -> Check:
    return _verbs(verbs, empty_ok=False)


READ_ONLY: dict[str, Check] = {
    # files and text
    **{name: _always for name in (
        "ls", "cat", "head", "tail", "wc", "stat", "file", "du", "df", "grep", "egrep", "fgrep", "rg", "zgrep",
        "zcat", "bzcat", "xzcat", "tree", "realpath", "readlink", "basename", "dirname", "md5sum", "sha1sum",
        "sha256sum", "sha512sum", "cksum", "cut", "tr", "diff", "cmp", "comm", "jq", "column", "nl", "od",
        "hexdump", "strings", "tac", "rev", "fold", "fmt", "expand", "unexpand", "paste", "join", "look",
        "echo", "printf", "true", "false", "test", "[", "pwd", "sleep", "seq", "yes", "cd",
    )},  # fmt: skip
    "sort": _without("-o", "--output", "--compress-program"),
    "uniq": _uniq,
    "xxd": _without("-r", "-revert"),
    # find -exec: what it runs is judged on its own (find -exec rm is not read-only because rm is not)
    "find": _without("-delete", "-fprint", "-fprint0", "-fprintf", "-fls"),
    # the machine
    **{name: _always for name in (
        "ps", "pgrep", "pidof", "uptime", "free", "vmstat", "iostat", "mpstat", "whoami", "id", "groups", "uname",
        "lsblk", "lscpu", "lsof", "lsmod", "lspci", "lsusb", "lsns", "w", "who", "last", "lastlog", "nproc", "arch",
        "tty", "locale", "getent", "which", "type", "whereis", "printenv", "ss", "netstat", "dig", "nslookup",
        "host", "ping", "findmnt", "blkid", "ulimit", "umask",
    )},  # fmt: skip
    "top": lambda argv: None if "-b" in argv else "top without -b is interactive",
    "hostname": _no_operands,
    "date": _date,
    "dmesg": _without("-c", "-C", "-D", "-E", "-n", "--clear", "--read-clear", "--console-off", "--console-on", "--console-level"),
    "journalctl": _without("--vacuum-", "--rotate", "--flush", "--sync", "--relinquish-var", "--smart-relinquish-var",
                           "--setup-keys", "--update-catalog", "--file", "-D", "--directory", "--root", "--image"),
    "systemctl": _systemctl,
    "timedatectl": _verbs({"status", "show", "list-timezones", "timesync-status", "show-timesync"}),
    "hostnamectl": _verbs({"status"}),
    "loginctl": _verbs({"list-sessions", "list-users", "list-seats", "show-session", "show-user", "session-status",
                        "user-status"}),  # fmt: skip
    "ip": _ip,
    "env": _env,
    # packages (queries only)
    "dpkg": lambda argv: None if len(argv) > 1 and argv[1] in ("-l", "-L", "-s", "-S", "--list", "--listfiles",
                                                            "--status", "--search", "--print-architecture") else "dpkg changes packages",  # fmt: skip
    "dpkg-query": _always,
    "rpm": lambda argv: None if len(argv) > 1 and argv[1].startswith("-q") else "rpm changes packages",
    "apt": _package_query({"list", "show", "search", "policy", "depends", "rdepends"}),
    "apt-cache": _always,
    "pip": _package_query({"list", "show", "freeze", "check"}),
    "pip3": _package_query({"list", "show", "freeze", "check"}),
    # tools with subcommands
    "git": _git,
    "kubectl": _kubectl,
    "docker": _docker,
    # wrappers: what they run is judged on its own
    **{name: _always for name in ("time", "nice", "timeout", "stdbuf", "ionice", "command", "builtin", "xargs",
                                  "watch", "eval")},  # fmt: skip
    **{name: _shell for name in ("sh", "bash", "dash", "zsh", "ksh", "ash")},
}

# What README.md shows for each entry: excluded flags or verbs.
DOCUMENTED: dict[str, str] = {
    "ls, cat, head, tail, wc, stat, file, du, df, grep/egrep/fgrep/rg/zgrep, zcat, tree, realpath, readlink, "
    "basename, dirname, md5sum/sha*sum/cksum, cut, tr, diff, cmp, comm, jq, column, nl, od, hexdump, strings, tac, "
    "rev, fold, fmt, paste, join, echo, printf, true, false, test, pwd, sleep, seq, cd": "any flags",
    "ps, pgrep, pidof, uptime, free, vmstat, iostat, whoami, id, groups, uname, lsblk, lscpu, lsof, lsmod, lspci, "
    "lsusb, w, who, last, nproc, tty, locale, getent, which, type, printenv, ss, netstat, dig, nslookup, host, "
    "ping, findmnt, blkid": "any flags",
    "sort": "not -o/--output", "uniq": "at most one file", "xxd": "not -r",
    "find": "not -delete, -fprint*, -fls; what -exec runs is judged on its own",
    "top": "only -b (batch)", "hostname, date": "no operand (no -s for date)",
    "dmesg": "not -c/-C/-D/-E/-n", "journalctl": "not --vacuum-*, --rotate, --flush, --setup-keys, --file/-D/--root",
    "systemctl": "status, show, cat, list-*, is-*, get-default, show-environment",
    "timedatectl, hostnamectl, loginctl": "status/show/list verbs", "ip": "show/list forms (`ip a`, `ip route show`)",
    "env": "printing, or running a command that is itself judged; not -S",
    "dpkg, dpkg-query, rpm -q, apt, apt-cache, pip": "queries only (list, show, search, policy, -l, -L, -s)",
    "git": "status, log, show, diff, blame, rev-parse, ls-files, ls-tree, describe, shortlog, cat-file, grep, "
           "reflog, branch/tag/remote listing; no -c",
    "kubectl": "get, describe, logs, top, explain, version, api-resources, api-versions, cluster-info (not dump), "
               "auth can-i/whoami, events; no --as/--token/--kubeconfig",
    "docker": "ps, images, logs, inspect, version, info, stats, top, port, diff, history",
    "time, nice, timeout, stdbuf, ionice, command, builtin, xargs, watch, eval, sh/bash -c": "wrappers: the "
    "command they run is judged on its own",
}


def is_read_only(argv: Sequence[str], extra: Sequence[Sequence[str]] = ()) -> str | None:
    """None when ``argv`` only reads; else why it is not on the list.

    ``extra``: the policy's ``allow`` entries as word lists; an entry matches when
    the command's words start with it (``["git", "fetch"]`` admits ``git fetch origin``).
    """
    if not argv:
        return None
    name = posixpath.basename(argv[0])
    words = [name, *argv[1:]]
    for entry in extra:
        if entry and len(words) >= len(entry) and [posixpath.basename(entry[0]), *entry[1:]] == words[: len(entry)]:
            return None
    check = READ_ONLY.get(name)
    if check is None:
        return f"{name} is not on the read-only list"
    return check(words)
