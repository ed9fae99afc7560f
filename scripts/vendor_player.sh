#!/usr/bin/env bash
# Refresh the review console's vendored asciinema-player (Apache-2.0) from the npm registry.
#
#   bash scripts/vendor_player.sh [VERSION]      (default: the version in VERSION below)
#
# The minified bundle, its CSS and LICENSE are committed under
# jitgate/review/static/vendor/asciinema-player/ so the console (and its Cloud Function
# package) serves them itself: no CDN, no npm at deploy time. VERSION there records the
# version and each file's SHA-256; tests/review/test_vendored_player.py checks them.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/jitgate/review/static/vendor/asciinema-player"
version="${1:-$(sed -n 's/^version //p' "$dest/VERSION")}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "asciinema-player@$version" >/dev/null && tar -xzf asciinema-player-*.tgz)
cp "$work/package/dist/bundle/asciinema-player.min.js" "$work/package/dist/bundle/asciinema-player.css" \
   "$work/package/LICENSE" "$dest/"
{
  echo "version $version"
  (cd "$dest" && sha256sum asciinema-player.min.js asciinema-player.css LICENSE)
} > "$dest/VERSION"
echo "vendored asciinema-player $version into $dest"
