"""The compiled row masking core for the tests: built in place from this tree when missing.

`pip install -e .` (scripts/install.sh) builds it; a fresh clone that was not installed (CI
snapshots, helpers' clones) would otherwise test only the pure-Python reference and start the
broker without the core it runs in production. Building takes a few seconds with gcc.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ensure_rowcore() -> None:
    """The row masking core, and the relay's framing (broker/pg/_framing.c): one build_ext builds both."""
    from broker.pg import codec
    from jitgate.masking import rows

    if rows._rowcore is not None and codec._framing is not None:
        return
    result = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError("building the compiled row masking core failed (needs gcc and python3-dev, "
                           f"see scripts/install.sh):\n{result.stderr[-3000:]}")
    rows._rowcore = importlib.import_module("jitgate.masking._rowcore")
    codec._framing = importlib.import_module("broker.pg._framing")
    if codec.FRAMING == "python" and os.environ.get("JITGATE_PG_FRAMING") != "python":
        codec.FRAMING = "compiled"
    print(f"built the compiled row masking core in {ROOT}", file=sys.stderr)
