"""scripts/install.sh on a machine whose system Python is "externally managed" (PEP 668),
as on Debian 12, Ubuntu 23.04+ and Fedora: it must install into its own virtual
environment, never into the system interpreter.

The system Python here is simulated faithfully: a copy of this interpreter's layout
(symlinks to its stdlib and pip, no site-packages) with the EXTERNALLY-MANAGED marker
in its stdlib folder, so the real pip refuses `pip install` outside a venv exactly as
it does on those distributions.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def externally_managed_python(root: Path) -> Path:
    """A python3 whose prefix is `root`, with PEP 668's marker in its stdlib."""
    if sys.prefix != sys.base_prefix:
        base = Path(sys.base_prefix)
    else:
        base = Path(sys.prefix)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    stdlib_src = Path(sysconfig.get_paths(vars={"base": str(base), "installed_base": str(base)})["stdlib"])
    real_exe = Path(os.path.realpath(sys._base_executable if hasattr(sys, "_base_executable") else sys.executable))
    (root / "bin").mkdir(parents=True)
    shutil.copy2(real_exe, root / "bin" / version)
    (root / "bin" / "python3").symlink_to(version)
    stdlib = root / "lib" / version
    stdlib.mkdir(parents=True)
    for entry in stdlib_src.iterdir():
        if entry.name != "site-packages":
            (stdlib / entry.name).symlink_to(entry)
    site = stdlib / "site-packages"
    site.mkdir()
    import pip

    (site / "pip").symlink_to(Path(pip.__file__).parent)
    # The marker's text is what Debian ships; pip prints it when it refuses.
    (stdlib / "EXTERNALLY-MANAGED").write_text(
        "[externally-managed]\nError=To install Python packages system-wide, try apt install python3-xyz.\n")
    for lib in base.glob("lib/libpython*.so*"):  # a shared-library build finds it next to its prefix
        (root / "lib" / lib.name).symlink_to(lib)
    return root / "bin" / "python3"


@pytest.fixture(scope="module")
def system_python(tmp_path_factory) -> Path:
    python = externally_managed_python(tmp_path_factory.mktemp("system-python"))
    refused = subprocess.run([str(python), "-m", "pip", "install", "--dry-run", "six"], capture_output=True, text=True)
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr, (
        "the simulated system Python should refuse pip like Debian's does:\n" + refused.stderr[-2000:])
    return python


def test_install_sh_uses_its_own_venv_where_the_system_python_refuses_pip(system_python, tmp_path):
    venv = tmp_path / "venv"
    env = dict(os.environ, PATH=f"{system_python.parent}{os.pathsep}{os.environ['PATH']}", JITGATE_VENV=str(venv))
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(["bash", str(REPO / "scripts" / "install.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"install.sh failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "externally-managed-environment" not in done.stderr
    # The venv runs the project: the CLI answers and the stack's imports resolve there.
    cli = subprocess.run([str(venv / "bin" / "jitgate"), "--help"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert cli.returncode == 0 and "up" in cli.stdout, cli.stdout + cli.stderr
    imports = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import broker.main, jitgate.devstack, pglast, asyncssh, slack_bolt, functions_framework, psycopg"],
                             capture_output=True, text=True, env=env, cwd=tmp_path)
    assert imports.returncode == 0, imports.stderr
    # Nothing was installed into the "system" interpreter.
    site = next(system_python.parent.parent.glob("lib/python*/site-packages"))
    assert sorted(p.name for p in site.iterdir()) == ["pip"]
