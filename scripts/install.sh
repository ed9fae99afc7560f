#!/usr/bin/env bash
# Install everything jitgate's local stack needs on a Debian or Ubuntu machine, into
# the project's own virtual environment (.venv, or $JITGATE_VENV). Idempotent and quick
# when everything is present. Run as root (or with sudo available).
#
#   bash scripts/install.sh           # the local stack: then `.venv/bin/jitgate up`
#   bash scripts/install.sh --test    # also the test suite's tools (scripts/test-tools.sh)
#
# Why a virtual environment: Debian 12, Ubuntu 23.04+ and Fedora mark their system
# Python "externally managed" (PEP 668) and refuse `pip install` into it; and the
# project's pins must not change the interpreter other programs share.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${JITGATE_VENV:-$root/.venv}"

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
# PostgreSQL's initdb refuses to run as root; the stack runs it as this user.
command -v useradd >/dev/null || need_apt+=(passwd)
command -v runuser >/dev/null || need_apt+=(util-linux)
# A venv needs ensurepip, which Debian ships apart from python3 (python3-venv).
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
# Packages without wheels for this Python build from source.
command -v gcc >/dev/null || need_apt+=(gcc libc6-dev)
python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || need_apt+=(python3-dev)
# The compiled row masking core (jitgate/masking/_rowcore.c, built by `pip install -e .`) hashes with
# libcrypto's SHA-256; without these headers it builds with its own, slower one.
[ -f /usr/include/openssl/sha.h ] || need_apt+=(libssl-dev)
# The review console's browser tests drive Debian's Chromium with Playwright (never a downloaded browser).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install: apt-get install ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Node.js: the dev OIDC issuer (oidc-provider 9) wants Node 20.18+ or 22; it runs on
# the Node 18 that Debian 12 and Ubuntu 24.04 ship through devissuer/compat.mjs.
node_major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
if [ "$node_major" -lt 18 ]; then
  echo "install: Node.js $(node --version 2>/dev/null || echo '(none)') is too old for the dev OIDC issuer;" \
       "install Node.js 18 or newer (your distribution's nodejs, or https://nodejs.org) and rerun" >&2
  exit 1
fi

# The project's virtual environment, rebuilt only when the requirements change.
# setup.py and every C source it compiles (the row masking core, the PostgreSQL framing): a change
# rebuilds them (pip install -e .); a stale build would otherwise fall back to the slower reference.
mapfile -t c_sources < <(cd "$root" && find jitgate broker -name '*.c' | LC_ALL=C sort)
req_files=(requirements.txt requirements-test.txt pyproject.toml setup.py "${c_sources[@]}")
want="$(cat "${req_files[@]}" | sha256sum | cut -d' ' -f1)"
stamp="$venv/.jitgate-requirements.sha256"
if [ ! -x "$venv/bin/python" ]; then
  echo "install: creating the virtual environment $venv" >&2
  python3 -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "install: pip install -r requirements-test.txt into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
# An editable install points at one work tree: repoint it if this tree moved or is a new clone.
if ! "$venv/bin/python" -c 'import jitgate, pathlib, sys; sys.exit(pathlib.Path(jitgate.__file__).resolve().parents[1] != pathlib.Path(sys.argv[1]).resolve())' "$root"; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e .
fi

if [ ! -d devissuer/node_modules/oidc-provider ]; then
  (cd devissuer && npm ci --no-audit --no-fund --silent)
fi

# The test suite's tools: servers and CLIs not in Debian's archive, and checkov.
if [ "${1:-}" = "--test" ]; then
  bash scripts/test-tools.sh
  bash scripts/infra_checks.sh
fi
echo "install: ready; run $(realpath --relative-to="$PWD" "$venv" 2>/dev/null || echo "$venv")/bin/jitgate up" >&2
