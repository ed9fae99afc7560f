# Outputs. Every one is listed with its use in infra/README.md.

output "broker_address" {
  description = "IP address of the broker load balancer: point a DNS name (e.g. jitgate.example.com) at it; clients use ports 5432, 2222, 8443 and 6443."
  value       = google_compute_address.broker.address
}

output "broker_instance_group" {
  description = "Name of the broker's regional managed instance group (the _BROKER_GROUP substitution of cloudbuild.yaml)."
  value       = local.bootstrapped ? google_compute_region_instance_group_manager.broker[0].name : null
}

output "broker_service_account" {
  description = "Email of the broker VMs' service account."
  value       = google_service_account.broker.email
}

output "function_service_accounts" {
  description = "Email of each function's own service account, by function."
  value       = { for k, sa in google_service_account.fn : k => sa.email }
}

output "deployer_service_account" {
  description = "Email of the account that runs cloudbuild.yaml (give it to the Cloud Build trigger)."
  value       = google_service_account.deployer.email
}

output "authorize_url" {
  description = "URL of the authorize function (JITGATE_AUTHORIZE_URL of the brokers, and the audience of their ID tokens)."
  value       = local.bootstrapped ? google_cloudfunctions2_function.fn["authorize"].service_config[0].uri : null
}

output "approvals_slack_url" {
  description = "Request URL to paste into the Slack app's Interactivity settings (docs/slack-app-manifest.yaml). Known before the function exists (a 2nd gen function's cloudfunctions.net URL is region-project/name), so the Slack app can be set up before the functions are created."
  value       = "${local.bootstrapped ? google_cloudfunctions2_function.fn["approvals"].url : "https://${var.region}-${var.project_id}.cloudfunctions.net/${local.functions.approvals.name}"}/slack"
}

output "approvals_url" {
  description = "The approvals service (JITGATE_APPROVALS_URL for `jitgate approvals approve|deny` and the console)."
  value       = local.bootstrapped ? google_cloudfunctions2_function.fn["approvals"].url : null
}

output "recordings_bucket" {
  description = "Name of the recordings bucket (JITGATE_RECORDINGS_BUCKET)."
  value       = google_storage_bucket.recordings.name
}

output "config_bucket" {
  description = "Name of the bucket that holds the policy file."
  value       = google_storage_bucket.config.name
}

output "policy_uri" {
  description = "Where the broker and the functions read the policy file (JITGATE_POLICY)."
  value       = "gs://${google_storage_bucket.config.name}/${var.policy_object}"
}

output "sources_bucket" {
  description = "Name of the bucket that holds build artifacts (the _SOURCES_BUCKET substitution of cloudbuild.yaml)."
  value       = google_storage_bucket.sources.name
}

output "manifest_signing_key" {
  description = "Cloud KMS key version that signs recording manifests (JITGATE_KMS_KEY)."
  value       = local.manifest_key_version
}

output "firestore_database" {
  description = "Name of the Firestore database (JITGATE_FIRESTORE_DATABASE)."
  value       = google_firestore_database.jitgate.name
}

output "topics" {
  description = "Pub/Sub topic ids, by name."
  value       = { for k, t in google_pubsub_topic.jitgate : k => t.id }
}

output "secret_ids" {
  description = "Secret Manager secrets to fill in (docs/deploy.md), jitgate's own and the held credentials."
  value       = concat([for s in google_secret_manager_secret.app : s.id], [for s in google_secret_manager_secret.held : s.id])
}
