# The security review console (functions/review -> jitgate.review): sessions with
# playback and verification, and approvals, in the browser (README, "Review console").
#
# Behind sign-in either way (var.review_auth):
# - "oidc": the app runs the authorization code flow with PKCE against
#   var.oidc_issuer as client var.review_oidc_client_id; the function is
#   reachable from the internet (run.invoker allUsers) and every page other
#   than the sign-in redirect needs a session from that flow.
# - "iap": put the function behind an external HTTPS load balancer with
#   Identity-Aware Proxy (serverless NEG; docs/deploy.md); ingress is then
#   internal-and-gclb, nobody holds run.invoker but IAP's service agent
#   (granted when IAP is enabled), and the app verifies IAP's signed header
#   on every request (audience var.review_iap_audience).
#
# Its own account: reads recordings (never writes, deletes or overwrites
# them), the policy and the manifest key's public half; writes new objects
# only to the review audit bucket (write-once under a retention policy);
# Firestore on the jitgate database: the index and requests (read), and the
# groups of people who sign in (the approver-group fallback). Approve / deny go
# to the approvals service with the reviewer's own ID token: it decides, signs
# and publishes approval-decided, so this account publishes nothing.

locals {
  review_member = "serviceAccount:${google_service_account.review.email}"
}

resource "google_service_account" "review" {
  account_id   = "jitgate-review"
  display_name = "jitgate review console"
  description  = "functions/review: reads recordings and the index, decides approvals, writes the review audit trail"

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket" "review_audit" {
  name                        = "${var.project_id}-jitgate-review-audit"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  versioning {
    enabled = true
  }

  retention_policy {
    retention_period = var.recordings_retention_days * 86400
    is_locked        = var.lock_recordings_retention
  }

  dynamic "encryption" {
    for_each = var.use_cmek ? [1] : []
    content {
      default_kms_key_name = local.data_kms_key
    }
  }

  logging {
    log_bucket = google_storage_bucket.access_logs.name
  }

  depends_on = [google_kms_crypto_key_iam_member.data_storage_agent]
}

# Signs the console's session cookie (JITGATE_REVIEW_SECRET); add a version
# with 32+ random bytes before the first apply with var.release (docs/deploy.md).
resource "google_secret_manager_secret" "review_cookie" {
  secret_id = "jitgate-review-cookie-key"

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_cloudfunctions2_function" "review" {
  # checkov:skip=CKV_GCP_124:With review_auth = "oidc" the console is a web app people open from their browsers; every page needs an OIDC sign-in (code flow + PKCE) checked by the app. With "iap" ingress is internal-and-gclb.
  count = local.bootstrapped ? 1 : 0

  name        = "jitgate-review"
  location    = var.region
  description = "jitgate security review console (functions/review/main.py:review)"

  build_config {
    runtime         = var.function_runtime
    entry_point     = "review"
    service_account = google_service_account.builder.id

    source {
      storage_source {
        bucket = google_storage_bucket.sources.name
        object = "functions/review/${var.release}.zip"
      }
    }
  }

  service_config {
    available_memory               = "512Mi"
    timeout_seconds                = 120
    max_instance_count             = 5
    ingress_settings               = var.review_auth == "iap" ? "ALLOW_INTERNAL_AND_GCLB" : "ALLOW_ALL"
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.review.email
    environment_variables = merge(local.function_common_env, {
      JITGATE_RECORDINGS_BUCKET   = google_storage_bucket.recordings.name
      JITGATE_KMS_KEY             = local.manifest_key_version
      JITGATE_REVIEW_AUDIT_BUCKET = google_storage_bucket.review_audit.name
      JITGATE_REVIEW_AUTH         = var.review_auth
      JITGATE_REVIEW_CLIENT_ID    = var.review_oidc_client_id
      JITGATE_REVIEW_IAP_AUDIENCE = var.review_iap_audience
      JITGATE_REVIEW_PUBLIC_URL   = var.review_public_url
      # Decisions go to the approvals service with the reviewer's own ID token (it signs them).
      JITGATE_APPROVALS_URL = local.bootstrapped ? google_cloudfunctions2_function.fn["approvals"].url : ""
    })

    secret_environment_variables {
      key        = "JITGATE_REVIEW_SECRET"
      project_id = var.project_id
      secret     = google_secret_manager_secret.review_cookie.secret_id
      version    = "latest"
    }
  }

  lifecycle {
    ignore_changes = [build_config[0].source, build_config[0].docker_repository, labels]
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.builder_log_writer,
    google_project_iam_member.builder_artifact_writer,
    google_project_iam_member.builder_sources_reader,
    google_secret_manager_secret_iam_member.review_cookie,
  ]
}

# -------------------------------------------------------------------- grants

resource "google_cloud_run_v2_service_iam_member" "review_public" {
  count = local.bootstrapped && var.review_auth == "oidc" ? 1 : 0

  name     = google_cloudfunctions2_function.review[0].name
  location = var.region
  role     = "roles/run.invoker"
  member   = "allUsers"
}

resource "google_storage_bucket_iam_member" "review_recordings" {
  bucket = google_storage_bucket.recordings.name
  role   = "roles/storage.objectViewer"
  member = local.review_member
}

resource "google_storage_bucket_iam_member" "review_audit" {
  for_each = toset(["roles/storage.objectCreator", "roles/storage.objectViewer"])

  bucket = google_storage_bucket.review_audit.name
  role   = each.value
  member = local.review_member
}

resource "google_storage_bucket_iam_member" "review_config" {
  bucket = google_storage_bucket.config.name
  role   = "roles/storage.objectViewer"
  member = local.review_member
}

resource "google_project_iam_member" "review_firestore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = local.review_member

  condition {
    title      = "jitgate-database-only"
    expression = local.firestore_condition_expression
  }

  depends_on = [google_project_service.apis]
}

resource "google_kms_crypto_key_iam_member" "review_manifest_public_key" {
  crypto_key_id = google_kms_crypto_key.manifest_signing.id
  role          = "roles/cloudkms.publicKeyViewer"
  member        = local.review_member
}

resource "google_secret_manager_secret_iam_member" "review_cookie" {
  secret_id = google_secret_manager_secret.review_cookie.id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.review_member
}

# ----------------------------------------------------------------- settings

variable "review_auth" {
  description = "How people sign in to the review console: oidc (the app's own code flow with PKCE) or iap (behind Identity-Aware Proxy)."
  type        = string
  default     = "oidc"

  validation {
    condition     = contains(["oidc", "iap"], var.review_auth)
    error_message = "review_auth must be oidc or iap."
  }
}

variable "review_oidc_client_id" {
  description = "OAuth client id of the review console at var.oidc_issuer (with review_auth = oidc); redirect URI <console URL>/auth/callback."
  type        = string
  default     = "jitgate-review"
}

variable "review_iap_audience" {
  description = "IAP's audience for the console (/projects/NUMBER/global/backendServices/ID), required with review_auth = iap."
  type        = string
  default     = ""
}

variable "review_public_url" {
  description = "The console's public https URL (for the sign-in redirect and Secure cookies); empty: the function's own URL as requested."
  type        = string
  default     = ""
}

output "review_url" {
  description = "The review console's function URL (open it in a browser; with IAP, the load balancer's URL instead)."
  value       = local.bootstrapped ? google_cloudfunctions2_function.review[0].service_config[0].uri : ""
}
