#!/usr/bin/env bash
# Build the broker release that the VMs install at boot (infra/startup.sh.tftpl).
#
#   bash infra/scripts/build_broker_release.sh OUT_DIR RELEASE
#
# Writes OUT_DIR/RELEASE.tar.gz holding requirements.txt and wheelhouse/ (the
# jitgate wheel, with the jitgate and broker packages, and a wheel of every
# pinned dependency), so a VM installs it with --no-index. Run it on the
# Python the VMs have (Debian 12: CPython 3.11) so binary wheels match.
set -euo pipefail

out="${1:?usage: build_broker_release.sh OUT_DIR RELEASE}"
release="${2:?usage: build_broker_release.sh OUT_DIR RELEASE}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

grep -v -E '^[[:space:]]*(-e|--editable|\.|/|file:)' "$root/requirements.txt" > "$stage/requirements.txt" || true
python3 -m pip wheel --quiet --wheel-dir "$stage/wheelhouse" -r "$stage/requirements.txt"
python3 -m pip wheel --quiet --no-deps --wheel-dir "$stage/wheelhouse" "$root"

mkdir -p "$out"
tar -czf "$out/$release.tar.gz" -C "$stage" requirements.txt wheelhouse
echo "broker release $release -> $out/$release.tar.gz"
