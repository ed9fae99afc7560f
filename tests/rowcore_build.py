"""The compiled row masking core for the tests: built in place from this tree when missing.

`pip install -e .` (scripts/install.sh) builds it; a fresh clone that was not installed (CI
snapshots, helpers' clones) would otherwise test only the pure-Python reference and start the
broker without the core it runs in production. Building takes a few seconds with gcc.
"""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ensure_rowcore() -> None:
    from jitgate.masking import rows

    if rows._rowcore is not None:
        return
    result = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError("building the compiled row masking core failed (needs gcc and python3-dev, "
                           f"see scripts/install.sh):\n{result.stderr[-3000:]}")
    rows._rowcore = importlib.import_module("jitgate.masking._rowcore")
    print(f"built the compiled row masking core in {ROOT}", file=sys.stderr)
