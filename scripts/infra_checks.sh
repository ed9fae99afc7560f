#!/usr/bin/env bash
# Install the tools of tests/infra and check they work. Idempotent: returns in
# well under a second when the virtual environment matches
# requirements-infra.txt already.
#
#   bash scripts/infra_checks.sh          # install (if needed) and verify
#
# The venv lives outside the work tree (default /opt/jitgate-checkov; set
# JITGATE_INFRA_VENV to move it), so a fresh clone on the same machine reuses
# it. tests/infra finds it through the same variable and default.
# Terraform itself must be on PATH (it is on the project's machines; only
# `terraform fmt` is used, which needs no provider and no network).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${JITGATE_INFRA_VENV:-/opt/jitgate-checkov}"
req="$root/requirements-infra.txt"
stamp="$venv/.jitgate-requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "infra_checks: installing $req into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi

"$venv/bin/python" -c 'import hcl2, checkov' \
  || { echo "infra_checks: $venv is broken; remove it and rerun" >&2; exit 1; }
command -v terraform >/dev/null \
  || { echo "infra_checks: terraform is not on PATH" >&2; exit 1; }
echo "infra_checks: tools ready ($venv)" >&2
