# Pub/Sub: the approval and session events, and a dead-letter topic.
#
# Subscriptions:
# - Each broker VM creates its own subscription to jitgate-approval-decided at
#   startup (every broker must see every decision, and a MIG cannot name its
#   VMs in advance). See the jitgateBrokerSubscriptions role in iam.tf.
# - The push subscriptions of notify_approvers and finalize_recording are
#   created by Eventarc with the functions; cloudbuild.yaml attaches the
#   dead-letter topic to them after each deploy
#   (infra/scripts/attach_dead_letter.sh), since Terraform cannot reach them.
# - jitgate-dead-letter-hold keeps dead-lettered events for operators.

locals {
  topics = toset([
    "jitgate-approval-requested", # broker -> notify_approvers
    "jitgate-approval-decided",   # approvals, expire_approvals -> brokers
    "jitgate-session-closed",     # broker -> finalize_recording
    "jitgate-dead-letter",        # undeliverable events
  ])
}

resource "google_pubsub_topic" "jitgate" {
  for_each = local.topics

  name                       = each.value
  kms_key_name               = local.data_kms_key
  message_retention_duration = "604800s" # 7 days

  depends_on = [
    google_project_service.apis,
    google_kms_crypto_key_iam_member.data_pubsub_agent,
  ]
}

resource "google_pubsub_subscription" "dead_letter_hold" {
  name                       = "jitgate-dead-letter-hold"
  topic                      = google_pubsub_topic.jitgate["jitgate-dead-letter"].id
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  retain_acked_messages      = true

  expiration_policy {
    ttl = "" # never expires
  }
}

# Pub/Sub forwards undeliverable messages to the dead-letter topic as its
# service agent.
resource "google_pubsub_topic_iam_member" "dead_letter_pubsub_agent" {
  topic  = google_pubsub_topic.jitgate["jitgate-dead-letter"].id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${local.pubsub_service_agent}"
}
