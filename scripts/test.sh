#!/usr/bin/env bash
# The whole test suite: installs what it needs, then runs pytest. The fixtures start
# every server the tests use (PostgreSQL, the dev OIDC provider, the functions under
# functions-framework, the broker) on loopback ports and stop them at the end.
#   bash scripts/test.sh              # everything
#   bash scripts/test.sh -k pg_dump   # extra arguments go to pytest
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/install.sh --test
export GOOGLE_CLOUD_PROJECT="${GOOGLE_CLOUD_PROJECT:-jitgate-test}"
exec python3 -m pytest -p no:cacheprovider "$@"
