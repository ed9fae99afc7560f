"""Loading the optional compiled cores (jitgate/masking/_rowcore.c, broker/pg/_framing.c).

Each is built by pip from its C source, and each has a pure-Python reference that serves when
it is missing. A build older than its source (a checkout updated after `pip install -e .`)
would call the new Python side with the old C signatures, so setup.py compiles the source's
SHA-256 into the module and a build that does not match the source beside it is not used:
the reference serves, and the reason is logged at start-up."""
from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from types import ModuleType


def source_sha256(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()


def load_compiled(module_name: str, source: Path) -> tuple[ModuleType | None, str]:
    """(module, "") when the built module is there and matches ``source``; else (None, why)."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # not built (a checkout without `pip install`)
        return None, f"it is not built ({exc})"
    if source.exists():  # a source checkout (an installed wheel ships no C source)
        built = getattr(module, "SOURCE_SHA256", None)
        if built != source_sha256(source):
            return None, f"its build is older than {source.name}"
    return module, ""
