# Cloud Functions (2nd gen). One entry per function in local.functions: its
# folder under functions/ (entry point of the same name), trigger, ingress,
# environment and secrets. Each runs as its own service account (iam.tf).
#
# Terraform creates the functions from the release given in var.release
# (gs://<sources bucket>/functions/<name>/<release>.zip, uploaded by
# cloudbuild.yaml); afterwards cloudbuild.yaml deploys new code with
# `gcloud functions deploy`, so the source is ignored here after creation.

locals {
  function_common_env = {
    JITGATE_BACKENDS           = "gcp"
    GOOGLE_CLOUD_PROJECT       = var.project_id
    JITGATE_FIRESTORE_DATABASE = var.firestore_database
    JITGATE_POLICY             = "gs://${google_storage_bucket.config.name}/${var.policy_object}"
  }

  functions = {
    authorize = {
      name        = "jitgate-authorize"
      entry_point = "authorize"
      trigger     = "http"
      topic       = null
      ingress     = "ALLOW_INTERNAL_ONLY" # called by the brokers, from the VPC
      memory      = "512Mi"
      env = {
        JITGATE_OIDC_ISSUER       = var.oidc_issuer
        JITGATE_OIDC_AUDIENCE     = var.oidc_audience
        JITGATE_OIDC_GROUPS_CLAIM = var.oidc_groups_claim
      }
      secrets = {
        JITGATE_GRANT_SIGNING_KEY = "jitgate-grant-signing-key"
      }
    }
    notify_approvers = {
      name        = "jitgate-notify-approvers"
      entry_point = "notify_approvers"
      trigger     = "pubsub"
      topic       = "jitgate-approval-requested"
      ingress     = "ALLOW_INTERNAL_ONLY"
      memory      = "512Mi"
      env         = {}
      secrets = {
        SLACK_BOT_TOKEN = "jitgate-slack-bot-token"
      }
    }
    approvals = {
      name        = "jitgate-approvals"
      entry_point = "approvals"
      trigger     = "http"
      topic       = null
      # Slack calls /slack from the internet (every request's signature is verified first); the CLI
      # and console send /decisions with the approver's OIDC token; the brokers read /keys.
      ingress = "ALLOW_ALL"
      memory  = "512Mi"
      # Slack gives up after 3 s; a cold start (container start + imports) can take
      # longer, so one instance stays warm.
      min_instances = 1
      env = {
        JITGATE_OIDC_ISSUER            = var.oidc_issuer
        JITGATE_OIDC_AUDIENCE          = var.oidc_audience
        JITGATE_OIDC_GROUPS_CLAIM      = var.oidc_groups_claim
        JITGATE_SLACK_TEAM_IDS         = join(",", var.slack_team_ids)
        JITGATE_SLACK_ENTERPRISE_IDS   = join(",", var.slack_enterprise_ids)
        JITGATE_DIRECTORY              = var.directory_group_domain == "" ? "" : "cloud-identity"
        JITGATE_DIRECTORY_GROUP_DOMAIN = var.directory_group_domain
        JITGATE_REVIEW_CLIENT_ID       = var.review_oidc_client_id
      }
      secrets = {
        SLACK_BOT_TOKEN               = "jitgate-slack-bot-token"
        SLACK_SIGNING_SECRET          = "jitgate-slack-signing-secret"
        JITGATE_APPROVALS_SIGNING_KEY = "jitgate-approvals-signing-key"
      }
    }
    finalize_recording = {
      name        = "jitgate-finalize-recording"
      entry_point = "finalize_recording"
      trigger     = "pubsub"
      topic       = "jitgate-session-closed"
      ingress     = "ALLOW_INTERNAL_ONLY"
      memory      = "1Gi"
      env = {
        JITGATE_RECORDINGS_BUCKET       = google_storage_bucket.recordings.name
        JITGATE_KMS_KEY                 = local.manifest_key_version
        JITGATE_BROKER_KMS_TRUSTED_KEYS = local.session_closed_key_version
      }
      secrets = {}
    }
    expire_approvals = {
      name        = "jitgate-expire-approvals"
      entry_point = "expire_approvals"
      trigger     = "http"
      topic       = null
      ingress     = "ALLOW_INTERNAL_ONLY" # Cloud Scheduler in the same project counts as internal
      memory      = "256Mi"
      env         = {}
      secrets = {
        SLACK_BOT_TOKEN = "jitgate-slack-bot-token"
      }
    }
  }

  event_types = {
    pubsub = "google.cloud.pubsub.topic.v1.messagePublished"
  }
}

resource "google_cloudfunctions2_function" "fn" {
  # checkov:skip=CKV_GCP_124:Only approvals is ALLOW_ALL (Slack calls it from the internet and every request's signature is verified); all others are ALLOW_INTERNAL_ONLY, which tests/infra/test_infra.py asserts.
  for_each = { for k, v in local.functions : k => v if local.bootstrapped }

  name        = each.value.name
  location    = var.region
  description = "jitgate ${each.key} (functions/${each.key}/main.py:${each.value.entry_point})"

  build_config {
    runtime         = var.function_runtime
    entry_point     = each.value.entry_point
    service_account = google_service_account.builder.id

    source {
      storage_source {
        bucket = google_storage_bucket.sources.name
        object = "functions/${each.key}/${var.release}.zip"
      }
    }
  }

  service_config {
    available_memory               = each.value.memory
    timeout_seconds                = 60
    max_instance_count             = 20
    min_instance_count             = lookup(each.value, "min_instances", 0)
    ingress_settings               = each.value.ingress
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.fn[each.key].email
    environment_variables          = merge(local.function_common_env, each.value.env)

    dynamic "secret_environment_variables" {
      for_each = each.value.secrets
      content {
        key        = secret_environment_variables.key
        project_id = var.project_id
        secret     = google_secret_manager_secret.app[secret_environment_variables.value].secret_id
        version    = "latest"
      }
    }
  }

  dynamic "event_trigger" {
    for_each = each.value.trigger == "pubsub" ? [1] : []
    content {
      trigger_region        = var.region
      event_type            = local.event_types.pubsub
      pubsub_topic          = google_pubsub_topic.jitgate[each.value.topic].id
      retry_policy          = "RETRY_POLICY_RETRY"
      service_account_email = google_service_account.fn[each.key].email
    }
  }

  lifecycle {
    # cloudbuild.yaml deploys new code after the first apply.
    ignore_changes = [build_config[0].source, build_config[0].docker_repository, labels]
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.builder_log_writer,
    google_project_iam_member.builder_artifact_writer,
    google_project_iam_member.builder_sources_reader,
    google_secret_manager_secret_iam_member.authorize_grant_key,
    google_secret_manager_secret_iam_member.slack_bot_token,
    google_secret_manager_secret_iam_member.slack_signing_secret,
    google_secret_manager_secret_iam_member.approvals_signing_key,
  ]
}

# ---------------------------------------------------------------- invokers

# Only the brokers may call authorize.
resource "google_cloud_run_v2_service_iam_member" "authorize_broker" {
  count = local.bootstrapped ? 1 : 0

  name     = google_cloudfunctions2_function.fn["authorize"].name
  location = var.region
  role     = "roles/run.invoker"
  member   = local.broker_member
}

# Event triggers push as the function's own account.
resource "google_cloud_run_v2_service_iam_member" "event_trigger_self" {
  for_each = local.bootstrapped ? toset(["notify_approvers", "finalize_recording"]) : toset([])

  name     = google_cloudfunctions2_function.fn[each.key].name
  location = var.region
  role     = "roles/run.invoker"
  member   = local.fn_member[each.key]
}

resource "google_cloud_run_v2_service_iam_member" "expire_scheduler" {
  count = local.bootstrapped ? 1 : 0

  name     = google_cloudfunctions2_function.fn["expire_approvals"].name
  location = var.region
  role     = "roles/run.invoker"
  member   = local.scheduler_member
}

# Slack must reach approvals without a Google identity; the function
# rejects every request whose Slack signature does not verify.
resource "google_cloud_run_v2_service_iam_member" "slack_public" {
  count = local.bootstrapped ? 1 : 0

  name     = google_cloudfunctions2_function.fn["approvals"].name
  location = var.region
  role     = "roles/run.invoker"
  member   = "allUsers"
}
