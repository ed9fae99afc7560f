#!/usr/bin/env bash
# Pin a broker release on the instance group and replace every VM with one
# that boots it, surging new VMs before old ones drain (no capacity loss).
#
#   REGION=... GROUP=jitgate-broker RELEASE=... bash infra/scripts/roll_broker.sh
set -euo pipefail

: "${REGION:?}" "${GROUP:?}" "${RELEASE:?}"

gcloud compute instance-groups managed all-instances-config update "$GROUP" \
  --region="$REGION" \
  --metadata="jitgate-release=$RELEASE"

# A regional group surges by at least its number of zones (3).
gcloud compute instance-groups managed rolling-action replace "$GROUP" \
  --region="$REGION" \
  --max-surge=3 \
  --max-unavailable=0

gcloud compute instance-groups managed wait-until "$GROUP" \
  --region="$REGION" \
  --stable \
  --timeout=1800
echo "broker group $GROUP runs release $RELEASE"
