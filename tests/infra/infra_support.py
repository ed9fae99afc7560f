"""Helpers of the infrastructure checks: parsed Terraform and cloudbuild.yaml.

The tools (checkov and its HCL parser, in their own virtual environment) are
installed by `bash scripts/infra_checks.sh`; the venv is found through
JITGATE_INFRA_VENV (default /opt/jitgate-checkov), as that script sets it up.
"""

import json
import os
import pathlib
import re
import shlex
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
VENV = pathlib.Path(os.environ.get("JITGATE_INFRA_VENV", "/opt/jitgate-checkov"))


def tool(name: str) -> pathlib.Path:
    path = VENV / "bin" / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `bash scripts/infra_checks.sh` first")
    return path


def attr(block: dict, key: str, default=None):
    """Value of an attribute as bc-python-hcl2 stores it (wrapped in a list)."""
    if key not in block:
        return default
    value = block[key]
    return value[0] if isinstance(value, list) and len(value) == 1 else value


class Terraform:
    """The parsed infra/ configuration."""

    def __init__(self, files: dict):
        self.files = files

    def resources(self, rtype: str | None = None):
        """(type, name, body, file) of every resource block, optionally of one type."""
        for fname, doc in self.files.items():
            for entry in doc.get("resource", []):
                for t, named in entry.items():
                    if rtype is None or t == rtype:
                        for name, body in named.items():
                            yield t, name, body, fname

    def resource(self, rtype: str, name: str) -> dict:
        found = [b for t, n, b, _ in self.resources(rtype) if n == name]
        assert found, f"{rtype}.{name} is not declared in infra/"
        return found[0]

    def blocks(self, kind: str):
        for fname, doc in self.files.items():
            for entry in doc.get(kind, []):
                yield fname, entry

    def local(self, name: str):
        for _, entry in self.blocks("locals"):
            if name in entry:
                return attr(entry, name)
        raise KeyError(name)

    def variables(self) -> dict:
        return {n: b for _, e in self.blocks("variable") for n, b in e.items()}

    def outputs(self) -> dict:
        return {n: b for _, e in self.blocks("output") for n, b in e.items()}


def load_terraform() -> Terraform:
    python = tool("python")
    proc = subprocess.run(
        [str(python), str(pathlib.Path(__file__).with_name("hcl_dump.py")), str(INFRA)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, f"HCL parse failed:\n{proc.stderr}"
    return Terraform(json.loads(proc.stdout))


def load_cloudbuild() -> dict:
    return yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())


def step_script(step: dict) -> str:
    """The shell text a step runs (bash -c SCRIPT, or entrypoint + args)."""
    args = [str(a) for a in step.get("args", [])]
    if step.get("entrypoint") in ("bash", "sh") and args[:1] == ["-c"]:
        return args[1]
    return " ".join([step.get("entrypoint", "")] + [shlex.quote(a) for a in args])


def shell_commands(script: str):
    """Each command of a script as a token list (continuations joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", script)
    for line in text.splitlines():
        for part in re.split(r"&&|\|\||;|\|", line):
            part = part.strip()
            if not part or part.startswith("#"):
                continue
            try:
                yield shlex.split(part, comments=True)
            except ValueError:
                yield part.split()


def function_deploys(cloudbuild: dict) -> dict:
    """{deployed name: {flag: value}} of every `gcloud functions deploy` in cloudbuild.yaml."""
    out = {}
    for step in cloudbuild["steps"]:
        for cmd in shell_commands(step_script(step)):
            if cmd[:3] == ["gcloud", "functions", "deploy"]:
                flags = {}
                for tok in cmd[4:]:
                    key, _, value = tok.partition("=")
                    flags[key] = value if value else True
                out[cmd[3]] = flags
    return out
