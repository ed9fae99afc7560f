# Buckets:
# - recordings: sealed session recordings and their chunks. Uniform access,
#   versioning, a retention policy (optionally locked), public access
#   prevention, optionally CMEK. The broker can only create objects.
# - config: the policy file (JITGATE_POLICY), read by the broker and functions.
# - sources: build artifacts (function zips, broker wheelhouses) per release.
# - access-logs: usage logs of the three buckets above.

locals {
  data_kms_key = var.use_cmek ? google_kms_crypto_key.data[0].id : null
}

resource "google_storage_bucket" "access_logs" {
  # checkov:skip=CKV_GCP_62:This is the access-log sink; logging it into itself would loop.
  name                        = "${var.project_id}-jitgate-access-logs"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      age = 400
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket" "recordings" {
  name                        = "${var.project_id}-jitgate-recordings"
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

  # Chunks are working copies of what a seal holds (<session>/chunks/NNNNNN.jsonl, and a re-upload's
  # NNNNNN.jsonl.<offset>): the retention policy keeps them as long as the seals, and then they go.
  # The suffixes match a chunk's last digit; every sealed object (recording.jsonl, manifest.json,
  # ledger-entry.json, ledger/**.json) ends in a letter, so none of them is matched.
  lifecycle_rule {
    condition {
      age            = var.recordings_retention_days + 1
      matches_suffix = ["0.jsonl", "1.jsonl", "2.jsonl", "3.jsonl", "4.jsonl", "5.jsonl", "6.jsonl", "7.jsonl", "8.jsonl", "9.jsonl", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
    }
    action {
      type = "Delete"
    }
  }

  # With versioning, a deleted chunk stays as a noncurrent version: those go a day later.
  lifecycle_rule {
    condition {
      with_state                 = "ARCHIVED"
      days_since_noncurrent_time = 1
      matches_suffix             = ["0.jsonl", "1.jsonl", "2.jsonl", "3.jsonl", "4.jsonl", "5.jsonl", "6.jsonl", "7.jsonl", "8.jsonl", "9.jsonl", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
    }
    action {
      type = "Delete"
    }
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

resource "google_storage_bucket" "config" {
  name                        = "${var.project_id}-jitgate-config"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  versioning {
    enabled = true
  }

  logging {
    log_bucket = google_storage_bucket.access_logs.name
  }

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket" "sources" {
  name                        = "${var.project_id}-jitgate-sources"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  versioning {
    enabled = true
  }

  # Only replaced (noncurrent) versions age out. Every release has objects of
  # its own name, so the release the brokers boot from is always live: an age
  # rule on live objects would delete it and leave new VMs unable to boot.
  lifecycle_rule {
    condition {
      with_state                 = "ARCHIVED"
      days_since_noncurrent_time = 30
    }
    action {
      type = "Delete"
    }
  }

  logging {
    log_bucket = google_storage_bucket.access_logs.name
  }

  depends_on = [google_project_service.apis]
}

# Usage logs are written by Google's cloud-storage-analytics group; without
# this grant the logging blocks above deliver nothing. (An organisation policy
# "Domain restricted sharing" refuses this member: docs/deploy.md, step 3.)
resource "google_storage_bucket_iam_member" "access_logs_writer" {
  bucket = google_storage_bucket.access_logs.name
  role   = "roles/storage.objectCreator"
  member = "group:cloud-storage-analytics@google.com"
}
