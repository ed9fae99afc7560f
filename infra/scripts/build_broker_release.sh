#!/usr/bin/env bash
# Build the broker release that the VMs install at boot (infra/startup.sh.tftpl).
#
#   bash infra/scripts/build_broker_release.sh OUT_DIR RELEASE
#
# Writes OUT_DIR/RELEASE.tar.gz holding requirements.txt and wheelhouse/ (the
# jitgate wheel, with the jitgate and broker packages, and a wheel of every
# pinned dependency), so a VM installs it with --no-index. Run it on the
# Python the VMs have (Debian 12: CPython 3.11) so binary wheels match.
# The jitgate wheel carries the compiled row masking core (jitgate/masking/_rowcore.c),
# built here with the image's gcc, Python headers and libssl-dev (cloudbuild.yaml runs
# this in python:3.11-bookworm, which has all three); a release without it is refused.
set -euo pipefail

out="${1:?usage: build_broker_release.sh OUT_DIR RELEASE}"
release="${2:?usage: build_broker_release.sh OUT_DIR RELEASE}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

grep -v -E '^[[:space:]]*(-e|--editable|\.|/|file:)' "$root/requirements.txt" > "$stage/requirements.txt" || true
python3 -m pip wheel --quiet --wheel-dir "$stage/wheelhouse" -r "$stage/requirements.txt"
python3 -m pip wheel --quiet --no-deps --wheel-dir "$stage/wheelhouse" "$root"
wheel="$(ls "$stage"/wheelhouse/jitgate-*.whl)"
listing="$(python3 -m zipfile -l "$wheel")"
if ! grep -q 'jitgate/masking/_rowcore' <<<"$listing"; then
  echo "build_broker_release: $wheel has no compiled row masking core (jitgate/masking/_rowcore.c did not build:" \
       "install gcc, python3-dev and libssl-dev where this runs); the broker would mask with the slow reference" >&2
  exit 1
fi

mkdir -p "$out"
tar -czf "$out/$release.tar.gz" -C "$stage" requirements.txt wheelhouse
echo "broker release $release -> $out/$release.tar.gz"
