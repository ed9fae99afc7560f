# Identities and least-privilege grants.
#
# Every grant is a separate *_iam_member resource (never an authoritative
# *_iam_binding or *_iam_policy), scoped to the narrowest resource that
# works: a secret, a topic, a bucket, a key, one function's service. The only
# project-level grants are those whose service has no smaller scope, and the
# Firestore one carries an IAM condition naming the jitgate database.
# tests/infra/test_iam.py compares every grant here with the list in
# tests/infra/expected_iam.py, so widening one is a visible change.

locals {
  function_names = toset(["authorize", "notify_approvers", "approvals", "finalize_recording", "expire_approvals"])

  broker_member    = "serviceAccount:${google_service_account.broker.email}"
  fn_member        = { for k, sa in google_service_account.fn : k => "serviceAccount:${sa.email}" }
  scheduler_member = "serviceAccount:${google_service_account.scheduler.email}"
  builder_member   = "serviceAccount:${google_service_account.builder.email}"
  deployer_member  = "serviceAccount:${google_service_account.deployer.email}"

  firestore_condition_expression = "resource.name == \"projects/${var.project_id}/databases/${var.firestore_database}\""

  recordings_resource               = "projects/_/buckets/${google_storage_bucket.recordings.name}"
  chunk_object_condition_expression = "resource.name.extract(\"${local.recordings_resource}/objects/{session}/chunks/\") != \"\""
  chunk_condition_expression        = "resource.name == \"${local.recordings_resource}\" || ${local.chunk_object_condition_expression}"
}

# ---------------------------------------------------------------- accounts

resource "google_service_account" "broker" {
  account_id   = "jitgate-broker"
  display_name = "jitgate broker VMs"

  depends_on = [google_project_service.apis]
}

# One account per function: jitgate-fn-authorize, jitgate-fn-notify-approvers, ...
resource "google_service_account" "fn" {
  for_each = local.function_names

  account_id   = "jitgate-fn-${replace(each.key, "_", "-")}"
  display_name = "jitgate function ${each.key}"

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "scheduler" {
  account_id   = "jitgate-scheduler"
  display_name = "Cloud Scheduler caller of expire_approvals"

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "builder" {
  account_id   = "jitgate-fn-builder"
  display_name = "Builds the jitgate functions' containers"

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "deployer" {
  account_id   = "jitgate-deployer"
  display_name = "Runs cloudbuild.yaml: tests, packages, deploys, rolls the brokers"

  depends_on = [google_project_service.apis]
}

# ------------------------------------------------------------ custom roles

# Each broker VM creates its own subscription to jitgate-approval-decided at
# startup and pulls from it. Subscriptions are created at project level, so
# these permissions cannot be put on one subscription in advance. Pub/Sub
# supports no IAM conditions on resource names, so the grant is project-wide;
# it is kept to create/get/consume (no delete, no update, no IAM): a broker
# must create its subscription with an expiration policy (24 h of inactivity)
# so that subscriptions of deleted VMs go away by themselves. Attaching a
# subscription to a topic is granted on jitgate-approval-decided alone
# (roles/pubsub.subscriber on that topic), so brokers can subscribe to no
# other topic. Deploy jitgate in a project of its own (docs/deploy.md): then
# no other application's subscription is within reach.
resource "google_project_iam_custom_role" "broker_subscriptions" {
  role_id     = "jitgateBrokerSubscriptions"
  title       = "jitgate broker: own approval-decided subscription"
  description = "Create, read and pull the per-VM subscription of a jitgate broker."
  permissions = [
    "pubsub.subscriptions.consume",
    "pubsub.subscriptions.create",
    "pubsub.subscriptions.get",
  ]

  depends_on = [google_project_service.apis]
}

# What cloudbuild.yaml needs beyond deploying functions: pin a release on the
# broker group and roll it, and attach the dead-letter topic to the push
# subscriptions Eventarc creates for the functions.
resource "google_project_iam_custom_role" "releaser" {
  role_id     = "jitgateReleaser"
  title       = "jitgate releaser"
  description = "Roll the jitgate broker group and configure dead-lettering of the function triggers."
  permissions = [
    "compute.instanceGroupManagers.get",
    "compute.instanceGroupManagers.update",
    "compute.instanceTemplates.useReadOnly",
    "compute.regionOperations.get",
    "eventarc.triggers.get",
    "pubsub.subscriptions.get",
    "pubsub.subscriptions.getIamPolicy",
    "pubsub.subscriptions.setIamPolicy",
    "pubsub.subscriptions.update",
    "pubsub.topics.get",
  ]

  depends_on = [google_project_service.apis]
}

# ------------------------------------------------------------------ broker

# Not jitgate-grant-signing-key: a broker verifies grants with authorize's public
# JWKS and must not be able to mint them.
resource "google_secret_manager_secret_iam_member" "broker_app" {
  for_each = toset(["jitgate-masking-hmac-key", "jitgate-broker-tls", "jitgate-broker-ssh-host-key"])

  secret_id = google_secret_manager_secret.app[each.key].id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.broker_member
}

resource "google_secret_manager_secret_iam_member" "broker_held" {
  for_each = google_secret_manager_secret.held

  secret_id = each.value.id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.broker_member
}

resource "google_pubsub_topic_iam_member" "broker_publish" {
  for_each = toset(["jitgate-approval-requested", "jitgate-session-closed"])

  topic  = google_pubsub_topic.jitgate[each.key].id
  role   = "roles/pubsub.publisher"
  member = local.broker_member
}

# On the topic, roles/pubsub.subscriber means pubsub.topics.attachSubscription:
# the broker may attach its subscriptions to this topic only.
resource "google_pubsub_topic_iam_member" "broker_attach_decided" {
  topic  = google_pubsub_topic.jitgate["jitgate-approval-decided"].id
  role   = "roles/pubsub.subscriber"
  member = local.broker_member
}

resource "google_project_iam_member" "broker_subscriptions" {
  project = var.project_id
  role    = google_project_iam_custom_role.broker_subscriptions.name
  member  = local.broker_member
}

resource "google_project_iam_member" "broker_firestore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = local.broker_member

  condition {
    title      = "jitgate-database-only"
    expression = local.firestore_condition_expression
  }
}

# Create only, and only chunk objects: without storage.objects.delete the
# broker can neither delete nor overwrite a recording (and the retention policy
# forbids both anyway); the condition keeps it from creating a session's sealed
# recording or manifest before finalize does (which would block the real seal).
resource "google_storage_bucket_iam_member" "broker_recordings" {
  bucket = google_storage_bucket.recordings.name
  role   = "roles/storage.objectCreator"
  member = local.broker_member

  condition {
    title       = "chunks-only"
    description = "Objects <session>/chunks/... only."
    expression  = local.chunk_object_condition_expression
  }
}

# Uploading a chunk again after a crash compares it with the stored one
# (GcsRecordingStore.put_chunk lists and reads <session>/chunks/*): read access
# to chunk objects and to the bucket's listing only, never to sealed
# recordings, manifests or anything else in the bucket.
resource "google_project_iam_custom_role" "chunk_reader" {
  role_id     = "jitgateChunkReader"
  title       = "jitgate broker: read back recording chunks"
  description = "List the recordings bucket and read session chunk objects."
  permissions = [
    "storage.objects.get",
    "storage.objects.list",
  ]

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket_iam_member" "broker_recordings_chunks" {
  bucket = google_storage_bucket.recordings.name
  role   = google_project_iam_custom_role.chunk_reader.name
  member = local.broker_member

  condition {
    title       = "chunks-only"
    description = "The bucket itself (listing) and objects <session>/chunks/..."
    expression  = local.chunk_condition_expression
  }
}

resource "google_storage_bucket_iam_member" "broker_config" {
  bucket = google_storage_bucket.config.name
  role   = "roles/storage.objectViewer"
  member = local.broker_member
}

resource "google_storage_bucket_iam_member" "broker_sources" {
  bucket = google_storage_bucket.sources.name
  role   = "roles/storage.objectViewer"
  member = local.broker_member
}

resource "google_kms_crypto_key_iam_member" "broker_manifest_public_key" {
  crypto_key_id = google_kms_crypto_key.manifest_signing.id
  role          = "roles/cloudkms.publicKeyViewer"
  member        = local.broker_member
}

resource "google_project_iam_member" "broker_log_writer" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = local.broker_member
}

resource "google_project_iam_member" "broker_metric_writer" {
  project = var.project_id
  role    = "roles/monitoring.metricWriter"
  member  = local.broker_member
}

# --------------------------------------------------------------- functions

resource "google_secret_manager_secret_iam_member" "authorize_grant_key" {
  secret_id = google_secret_manager_secret.app["jitgate-grant-signing-key"].id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.fn_member["authorize"]
}

# The approvals key signs every approval decision: only the approvals service reads it. The broker
# verifies decisions with the public key (GET /keys) and can write the store, but without this
# key it cannot make a decision that releases anything.
resource "google_secret_manager_secret_iam_member" "approvals_signing_key" {
  secret_id = google_secret_manager_secret.app["jitgate-approvals-signing-key"].id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.fn_member["approvals"]
}

resource "google_secret_manager_secret_iam_member" "slack_bot_token" {
  for_each = toset(["notify_approvers", "approvals", "expire_approvals"])

  secret_id = google_secret_manager_secret.app["jitgate-slack-bot-token"].id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.fn_member[each.key]
}

resource "google_secret_manager_secret_iam_member" "slack_signing_secret" {
  secret_id = google_secret_manager_secret.app["jitgate-slack-signing-secret"].id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.fn_member["approvals"]
}

resource "google_storage_bucket_iam_member" "functions_config" {
  for_each = toset(["authorize", "notify_approvers", "approvals"])

  bucket = google_storage_bucket.config.name
  role   = "roles/storage.objectViewer"
  member = local.fn_member[each.key]
}

resource "google_project_iam_member" "functions_firestore" {
  for_each = toset(["notify_approvers", "approvals", "finalize_recording", "expire_approvals"])

  project = var.project_id
  role    = "roles/datastore.user"
  member  = local.fn_member[each.key]

  condition {
    title      = "jitgate-database-only"
    expression = local.firestore_condition_expression
  }
}

resource "google_pubsub_topic_iam_member" "functions_publish_decided" {
  for_each = toset(["approvals", "expire_approvals"])

  topic  = google_pubsub_topic.jitgate["jitgate-approval-decided"].id
  role   = "roles/pubsub.publisher"
  member = local.fn_member[each.key]
}

# finalize_recording reads the chunks and writes the sealed file and manifest
# (compose needs get on the sources and create on the result; never delete).
resource "google_storage_bucket_iam_member" "finalize_recordings" {
  for_each = toset(["roles/storage.objectViewer", "roles/storage.objectCreator"])

  bucket = google_storage_bucket.recordings.name
  role   = each.value
  member = local.fn_member["finalize_recording"]
}

resource "google_kms_crypto_key_iam_member" "finalize_manifest_signer" {
  crypto_key_id = google_kms_crypto_key.manifest_signing.id
  role          = "roles/cloudkms.signerVerifier"
  member        = local.fn_member["finalize_recording"]
}

# The broker signs its own session ends (sign only); finalize checks them with the public key.
resource "google_kms_crypto_key_iam_member" "broker_session_closed_signer" {
  crypto_key_id = google_kms_crypto_key.session_closed.id
  role          = "roles/cloudkms.signer"
  member        = local.broker_member
}

resource "google_kms_crypto_key_iam_member" "finalize_session_closed_public_key" {
  crypto_key_id = google_kms_crypto_key.session_closed.id
  role          = "roles/cloudkms.publicKeyViewer"
  member        = local.fn_member["finalize_recording"]
}

# ----------------------------------------------------------- build, deploy

resource "google_project_iam_member" "builder_log_writer" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = local.builder_member
}

resource "google_project_iam_member" "builder_artifact_writer" {
  project = var.project_id
  role    = "roles/artifactregistry.writer"
  member  = local.builder_member
}

# The function sources that gcloud/Terraform upload live in Google-managed
# gcf-v2-sources-* buckets; the condition keeps every other bucket out.
resource "google_project_iam_member" "builder_sources_reader" {
  project = var.project_id
  role    = "roles/storage.objectViewer"
  member  = local.builder_member

  condition {
    title = "gcf-sources-only"
    expression = join(" || ", [
      "resource.name.startsWith(\"projects/_/buckets/gcf-v2-sources-\")",
      "resource.name == \"projects/_/buckets/${google_storage_bucket.sources.name}\"",
      "resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.sources.name}/\")",
    ])
  }
}

resource "google_project_iam_member" "deployer_functions" {
  project = var.project_id
  role    = "roles/cloudfunctions.developer"
  member  = local.deployer_member
}

resource "google_project_iam_member" "deployer_releaser" {
  project = var.project_id
  role    = google_project_iam_custom_role.releaser.name
  member  = local.deployer_member
}

resource "google_project_iam_member" "deployer_log_writer" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = local.deployer_member
}

resource "google_storage_bucket_iam_member" "deployer_sources" {
  for_each = toset(["roles/storage.objectCreator", "roles/storage.objectViewer"])

  bucket = google_storage_bucket.sources.name
  role   = each.value
  member = local.deployer_member
}

# Deploying a function or rolling the group acts as the runtime identities.
resource "google_service_account_iam_member" "deployer_acts_as_functions" {
  for_each = google_service_account.fn

  service_account_id = each.value.name
  role               = "roles/iam.serviceAccountUser"
  member             = local.deployer_member
}

resource "google_service_account_iam_member" "deployer_acts_as_builder" {
  service_account_id = google_service_account.builder.name
  role               = "roles/iam.serviceAccountUser"
  member             = local.deployer_member
}

resource "google_service_account_iam_member" "deployer_acts_as_broker" {
  service_account_id = google_service_account.broker.name
  role               = "roles/iam.serviceAccountUser"
  member             = local.deployer_member
}
