#!/usr/bin/env bash
# Attach jitgate-dead-letter to the Pub/Sub subscriptions that Eventarc
# created for the event-triggered functions (Terraform cannot reach them, and
# each deploy may recreate them).
#
#   PROJECT_ID=... PROJECT_NUMBER=... REGION=... MAX_DELIVERY_ATTEMPTS=10 \
#     bash infra/scripts/attach_dead_letter.sh FUNCTION_NAME ...
#
# FUNCTION_NAME is the deployed name (jitgate-notify-approvers, ...). A
# function without an event trigger is skipped.
set -euo pipefail

: "${PROJECT_ID:?}" "${PROJECT_NUMBER:?}" "${REGION:?}"
attempts="${MAX_DELIVERY_ATTEMPTS:-10}"
dead_letter="projects/$PROJECT_ID/topics/jitgate-dead-letter"
pubsub_agent="serviceAccount:service-$PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com"

for fn in "$@"; do
  trigger="$(gcloud functions describe "$fn" --gen2 --region="$REGION" --format='value(eventTrigger.trigger)')"
  if [ -z "$trigger" ]; then
    echo "$fn: no event trigger, skipped"
    continue
  fi
  sub="$(gcloud eventarc triggers describe "$trigger" --location="$REGION" --format='value(transport.pubsub.subscription)')"
  gcloud pubsub subscriptions update "$sub" \
    --dead-letter-topic="$dead_letter" \
    --max-delivery-attempts="$attempts" \
    --quiet
  # Pub/Sub must be able to pull from the subscription to forward a message.
  gcloud pubsub subscriptions add-iam-policy-binding "$sub" \
    --member="$pubsub_agent" \
    --role=roles/pubsub.subscriber \
    --quiet >/dev/null
  echo "$fn: $sub dead-letters to $dead_letter after $attempts attempts"
done
