#!/usr/bin/env bash
# Install everything jitgate's stack and test suite need on a fresh Debian machine.
# Idempotent and quick when everything is present. Run as root (or with sudo available).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v psql >/dev/null || need_apt+=(postgresql-client)
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || need_apt+=(pgbouncer)
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh >/dev/null || need_apt+=(openssh-client)
command -v rsync >/dev/null || need_apt+=(rsync)
command -v sshpass >/dev/null || need_apt+=(sshpass)
command -v tmux >/dev/null || need_apt+=(tmux)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install: apt-get install ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

python3 -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
python3 -m pip install --quiet --disable-pip-version-check --no-deps -e .

if [ ! -d devissuer/node_modules/oidc-provider ]; then
  (cd devissuer && npm ci --no-audit --no-fund --silent)
fi

# The infrastructure checks' tools (checkov in its own venv) are only for the test suite.
if [ "${1:-}" = "--test" ]; then
  bash scripts/infra_checks.sh
fi
