#!/usr/bin/env bash
# The test suite's tools that a fresh Debian 12 / Ubuntu 24.04 machine lacks, each from
# its official source, installed only when missing (on the project's machines they are
# present and nothing is downloaded):
#   java                       Debian/Ubuntu archive (openjdk-17-jre-headless): runs the emulators
#   gcloud + Pub/Sub and Firestore emulators, kubectl
#                              Google Cloud CLI apt repository (packages.cloud.google.com)
#   terraform                  HashiCorp apt repository (apt.releases.hashicorp.com): `terraform fmt`
# Called by scripts/install.sh --test (and so by scripts/test.sh). Exits non-zero and
# names what it could not fetch when a repository is unreachable.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

sdk_has() {  # sdk_has <path under the SDK root>: true when some SDK root has it
  local r
  for r in /usr/lib/google-cloud-sdk /usr/share/google-cloud-sdk /opt/google-cloud-sdk /google-cloud-sdk; do
    compgen -G "$r/$1" >/dev/null && return 0
  done
  return 1
}

debian=(); google=(); hashicorp=()
command -v java >/dev/null || debian+=(openjdk-17-jre-headless)
command -v gcloud >/dev/null || google+=(google-cloud-cli)
sdk_has 'platform/pubsub-emulator/lib/cloud-pubsub-emulator-*.jar' || google+=(google-cloud-cli-pubsub-emulator)
sdk_has 'platform/cloud-firestore-emulator/cloud-firestore-emulator.jar' || google+=(google-cloud-cli-firestore-emulator)
command -v kubectl >/dev/null || google+=(kubectl)
command -v terraform >/dev/null || hashicorp+=(terraform)

if [ ${#debian[@]} -eq 0 ] && [ ${#google[@]} -eq 0 ] && [ ${#hashicorp[@]} -eq 0 ]; then
  echo "test-tools: java, gcloud emulators, kubectl and terraform are present" >&2
  exit 0
fi

base=()
command -v curl >/dev/null || base+=(curl)
command -v gpg >/dev/null || base+=(gnupg)
[ -f /etc/ssl/certs/ca-certificates.crt ] || base+=(ca-certificates)
if [ ${#debian[@]} -gt 0 ] || [ ${#base[@]} -gt 0 ]; then
  echo "test-tools: apt-get install ${debian[*]} ${base[*]} (from your distribution's archive;" \
       "java runs the Pub/Sub and Firestore emulators)" >&2
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${debian[@]}" "${base[@]}" >/dev/null
fi

# add_repo <name> <key url> <keyring> <deb line>: fails (returns 1) if the key cannot be fetched.
add_repo() {
  local name="$1" key="$2" keyring="$3" line="$4"
  [ -f "/etc/apt/sources.list.d/$name.list" ] && [ -f "$keyring" ] && return 0
  echo "test-tools: adding the $name apt repository ($key)" >&2
  local tmp; tmp="$(mktemp)"
  if ! curl -fsSL --max-time 30 "$key" -o "$tmp"; then
    rm -f "$tmp"; return 1
  fi
  $SUDO gpg --batch --yes --dearmor -o "$keyring" "$tmp"
  rm -f "$tmp"
  echo "$line" | $SUDO tee "/etc/apt/sources.list.d/$name.list" >/dev/null
}

failed=()
codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
if [ ${#google[@]} -gt 0 ]; then
  echo "test-tools: installing ${google[*]} from the Google Cloud CLI apt repository" \
       "(the Pub/Sub and Firestore emulators run the GCP backend tests; kubectl drives the GKE exec tests)" >&2
  if add_repo google-cloud-sdk https://packages.cloud.google.com/apt/doc/apt-key.gpg \
       /usr/share/keyrings/cloud.google.gpg \
       "deb [signed-by=/usr/share/keyrings/cloud.google.gpg] https://packages.cloud.google.com/apt cloud-sdk main" \
     && $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${google[@]}" >/dev/null; then
    :
  else
    failed+=("${google[@]} (https://packages.cloud.google.com/apt)")
  fi
fi
if [ ${#hashicorp[@]} -gt 0 ]; then
  echo "test-tools: installing terraform from HashiCorp's apt repository (tests/infra runs \`terraform fmt -check\`)" >&2
  if add_repo hashicorp https://apt.releases.hashicorp.com/gpg /usr/share/keyrings/hashicorp-archive-keyring.gpg \
       "deb [signed-by=/usr/share/keyrings/hashicorp-archive-keyring.gpg] https://apt.releases.hashicorp.com $codename main" \
     && $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends terraform >/dev/null; then
    :
  else
    failed+=("terraform (https://apt.releases.hashicorp.com)")
  fi
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "test-tools: could not fetch: ${failed[*]}" >&2
  echo "test-tools: the test suite needs them; install them by hand (see the README, 'Tests') and rerun" >&2
  exit 1
fi
echo "test-tools: ready" >&2
