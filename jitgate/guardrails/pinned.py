"""The settings that decide how PostgreSQL reads SQL text, pinned for every gateway session.

The SQL classifier parses a statement the way the server does only if both read
its bytes alike. Three settings change that reading:

- ``standard_conforming_strings``: off makes ``\\'`` inside '...' an escaped quote,
  so ``SELECT 'a\\' ; DROP TABLE t; --'`` is one string to the classifier and two
  statements to the server;
- ``client_encoding``: the server converts the client's bytes to its own encoding
  before lexing. In GBK, SJIS, BIG5, GB18030, UHC and JOHAB a backslash or a quote
  byte can be the second byte of a character, so the same bytes split differently;
- ``backslash_quote``: whether ``\\'`` is accepted in E'' strings.

The broker sends the pinned values in the upstream startup packet (so ``RESET``
and ``DISCARD ALL`` return to them), refuses every statement that would move them
(``SET``, ``set_config``, ``ALTER ROLE/DATABASE/SYSTEM ... SET``), refuses a client
startup that asks for other values, and ends the session if the server ever
reports (ParameterStatus) a value it did not expect.
"""
from __future__ import annotations

import re

# setting -> the value the gateway pins (as PostgreSQL spells it in ParameterStatus).
PINNED_SETTINGS: dict[str, str] = {
    "standard_conforming_strings": "on",
    "client_encoding": "UTF8",
    "backslash_quote": "safe_encoding",
}

# Settings the server reports to the client (GUC_REPORT) whenever they change.
REPORTED_PINNED = ("standard_conforming_strings", "client_encoding")

_TRUE = {"t", "tr", "tru", "true", "y", "ye", "yes", "on", "1"}
_UTF8_NAMES = {"utf8", "unicode"}

# Encodings whose trail bytes can be '\\' or "'" (PostgreSQL supports them as client encodings only).
UNSAFE_MULTIBYTE = {"gbk", "sjis", "shiftjis", "big5", "gb18030", "uhc", "johab", "cp936", "cp932", "cp949",
                    "cp950", "windows936", "windows932", "windows949", "windows950", "mskanji", "tcvn", "tcvn5712"}

WHY = {
    "standard_conforming_strings": "a backslash in '...' must stay an ordinary character; write E'...' for escapes",
    "client_encoding": "the gateway reads and masks text as UTF-8 only; convert on the client "
                       "(psql: \\encoding UTF8, PGCLIENTENCODING=UTF8)",
    "backslash_quote": "the gateway reads \\' in E'...' as PostgreSQL's default (safe_encoding) does",
}


def normalize_encoding(name: str) -> str:
    """PostgreSQL's own spelling rule for encoding names: case and punctuation do not count."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def is_pinned_value(setting: str, value: str) -> bool:
    """Whether ``value`` (as written in SET, set_config, a startup packet or a ParameterStatus)
    means the pinned value of ``setting``."""
    text = value.strip().lower()
    if setting == "standard_conforming_strings":
        return text in _TRUE
    if setting == "client_encoding":
        return normalize_encoding(text) in _UTF8_NAMES
    if setting == "backslash_quote":
        return text == "safe_encoding"
    return True


def refusal(setting: str, value: str | None, how: str) -> str:
    """The reason a change of a pinned setting is refused, saying what is supported."""
    shown = "a value known only when it runs" if value is None else repr(value)
    extra = ""
    if setting == "client_encoding" and value is not None and normalize_encoding(value) in UNSAFE_MULTIBYTE:
        extra = " (in this encoding a backslash or quote can be part of a character, so the server would split the text differently)"
    return (f"{how} would change it to {shown}{extra}; the gateway pins {setting} = "
            f"{PINNED_SETTINGS[setting]} so that it reads SQL exactly as the server does ({WHY[setting]})")


def options_settings(options: str) -> list[tuple[str, str]]:
    """The (setting, value) pairs of a startup ``options`` string: ``-c name=value`` and ``--name=value``.

    Backslash escapes a space, as in PostgreSQL's pg_split_opts.
    """
    words, word, escaped = [], [], False
    for ch in options:
        if escaped:
            word.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if word:
                words.append("".join(word))
                word = []
        else:
            word.append(ch)
    if word:
        words.append("".join(word))
    pairs = []
    i = 0
    while i < len(words):
        item = words[i]
        if item == "-c" and i + 1 < len(words):
            item, i = words[i + 1], i + 1
        elif item.startswith("-c"):
            item = item[2:]
        elif item.startswith("--"):
            item = item[2:]
        else:
            i += 1
            continue
        name, _, value = item.partition("=")
        # PostgreSQL accepts '-' for '_' in names given on the command line.
        pairs.append((name.strip().lower().replace("-", "_"), value))
        i += 1
    return pairs


def unexpected_report(name: str, value: str) -> str | None:
    """Why a ParameterStatus from the server must end the session, or None when it is expected."""
    setting = name.lower()
    if setting in PINNED_SETTINGS and not is_pinned_value(setting, value):
        return (f"the server reports {setting} = {value!r}, but the gateway pinned {PINNED_SETTINGS[setting]!r}: "
                "something changed how the server reads SQL, so the gateway can no longer judge statements "
                "and ends the session")
    return None


def startup_refusal(params: dict[str, str]) -> str | None:
    """Why a client's startup packet asks for lexing settings the gateway cannot honour, or None."""
    for key, value in params.items():
        setting = key.lower()
        if setting in PINNED_SETTINGS and not is_pinned_value(setting, value):
            return refusal(setting, value, f"the startup parameter {setting}")
        if setting == "options":
            for name, option_value in options_settings(value):
                if name in PINNED_SETTINGS and not is_pinned_value(name, option_value):
                    return refusal(name, option_value, f"options=-c {name}")
    return None
