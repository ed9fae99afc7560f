"""The compiled row masking core for the tests: built in place from this tree when missing.

`pip install -e .` (scripts/install.sh) builds it; a fresh clone that was not installed (CI
snapshots, helpers' clones) would otherwise test only the pure-Python reference and start the
broker without the core it runs in production. Building takes a few seconds with gcc.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


_PROBE = ("from broker.pg import codec; from jitgate.masking import rows; "
          "raise SystemExit(0 if codec._framing is not None and rows._rowcore is not None else 1)")


def ensure_rowcore() -> None:
    """The row masking core, and the relay's framing (broker/pg/_framing.c): one build_ext builds both,
    when either is missing or older than its source (jitgate/native.py). Checked in a child process:
    an extension module loaded into this one could not be replaced by its rebuild."""
    if subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, timeout=120).returncode == 0:
        return
    result = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace", "--force"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError("building the compiled row masking core failed (needs gcc and python3-dev, "
                           f"see scripts/install.sh):\n{result.stderr[-3000:]}")
    from broker.pg import codec
    from jitgate.masking import rows
    from jitgate.native import load_compiled

    # Imported before the build (stale or missing then): take the fresh build if this process can.
    if rows._rowcore is None and "jitgate.masking._rowcore" not in sys.modules:
        rows._rowcore, rows._ROWCORE_MISSING = rows.load_core()
        if rows._rowcore is not None and os.environ.get("JITGATE_MASKING_CORE") != "python":
            rows.implementation = "compiled"
    if codec._framing is None and "broker.pg._framing" not in sys.modules:
        codec._framing, codec.FRAMING_MISSING = load_compiled("broker.pg._framing", ROOT / "broker/pg/_framing.c")
        if codec._framing is not None and os.environ.get("JITGATE_PG_FRAMING") != "python":
            codec.FRAMING = "compiled"
    print(f"built the compiled row masking core and framing in {ROOT}", file=sys.stderr)
