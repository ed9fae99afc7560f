#!/usr/bin/env bash
# Package each Cloud Function with the shared package, ready to deploy.
#
#   bash infra/scripts/package_functions.sh OUT_DIR [FUNCTION ...]
#
# For every function (default: every functions/*/main.py) writes
#   OUT_DIR/<name>/        main.py and the folder's other files, jitgate/,
#                          requirements.txt
#   OUT_DIR/<name>.zip     the same, zipped (what Terraform boots from)
# requirements.txt is the function's own if it has one, else the repository's
# pinned requirements.txt without editable or local entries; functions-framework
# is required to be in it. Runs from the repository root; needs python3 only.
set -euo pipefail

out="${1:?usage: package_functions.sh OUT_DIR [FUNCTION ...]}"
shift
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

if [ "$#" -eq 0 ]; then
  set --
  for main in "$root"/functions/*/main.py; do
    set -- "$@" "$(basename "$(dirname "$main")")"
  done
fi
[ "$#" -gt 0 ] || { echo "package_functions: no functions found" >&2; exit 1; }

mkdir -p "$out"
for name in "$@"; do
  src="$root/functions/$name"
  [ -f "$src/main.py" ] || { echo "package_functions: $src/main.py missing" >&2; exit 1; }
  dest="$out/$name"
  rm -rf "$dest" "$out/$name.zip"
  mkdir -p "$dest"
  (cd "$src" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - .) | (cd "$dest" && tar -xf -)
  (cd "$root" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - jitgate) | (cd "$dest" && tar -xf -)
  if [ -f "$src/requirements.txt" ]; then
    cp "$src/requirements.txt" "$dest/requirements.txt"
  else
    # Editable installs and local paths cannot be resolved by the builder.
    grep -v -E '^[[:space:]]*(-e|--editable|\.|/|file:)' "$root/requirements.txt" > "$dest/requirements.txt" || true
  fi
  if ! grep -q -i -E '^[[:space:]]*functions[-_]framework' "$dest/requirements.txt"; then
    echo "package_functions: $name: functions-framework is not in its requirements" >&2
    exit 1
  fi
  (cd "$dest" && python3 -m zipfile -c "../$name.zip" .)
  echo "packaged $name -> $dest ($out/$name.zip)"
done
