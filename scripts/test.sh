#!/usr/bin/env bash
# The whole test suite: installs what it needs (scripts/install.sh --test), then runs
# pytest in the project's virtual environment. The fixtures start every server the
# tests use (PostgreSQL, the dev OIDC provider, the functions under functions-framework,
# the broker, sshd, the emulators) on loopback ports and stop them at the end.
#   bash scripts/test.sh              # everything
#   bash scripts/test.sh -k pg_dump   # extra arguments go to pytest
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/install.sh --test
venv="${JITGATE_VENV:-$root/.venv}"
export PATH="$venv/bin:$PATH"   # tests call the `jitgate` CLI by name
export GOOGLE_CLOUD_PROJECT="${GOOGLE_CLOUD_PROJECT:-jitgate-test}"
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
