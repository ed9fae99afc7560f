#!/usr/bin/env bash
# Prepare Cloud Build's python:3.11-bookworm test step like a developer's
# machine (docs/deploy.md, "CI"): the Google Cloud SDK with the Pub/Sub and
# Firestore emulators, Java for them, kubectl (tests/k8s), the PostgreSQL
# client, Node.js, and Terraform (copied into /workspace/.tools/bin by the "tools" step).
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends \
  apt-transport-https ca-certificates curl gnupg \
  openjdk-17-jre-headless postgresql-client nodejs npm
curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg \
  | gpg --dearmor -o /usr/share/keyrings/cloud.google.gpg
echo "deb [signed-by=/usr/share/keyrings/cloud.google.gpg] https://packages.cloud.google.com/apt cloud-sdk main" \
  > /etc/apt/sources.list.d/google-cloud-sdk.list
apt-get update -q
apt-get install -y -q --no-install-recommends \
  google-cloud-cli google-cloud-cli-pubsub-emulator google-cloud-cli-firestore-emulator kubectl
install -m 0755 /workspace/.tools/bin/terraform /usr/local/bin/terraform
python3 -m pip install --quiet -r requirements.txt
