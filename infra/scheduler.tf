# Cloud Scheduler: the approval-expiry sweep. Every expiry_schedule it POSTs
# to expire_approvals with an OIDC token of the jitgate-scheduler account, the
# only account allowed to invoke that function.

resource "google_cloud_scheduler_job" "expire_approvals" {
  count = local.bootstrapped ? 1 : 0

  name             = "jitgate-expire-approvals"
  region           = var.region
  description      = "Expire pending jitgate approvals whose TTL has passed."
  schedule         = var.expiry_schedule
  time_zone        = var.expiry_time_zone
  attempt_deadline = "120s"

  retry_config {
    retry_count          = 3
    min_backoff_duration = "10s"
    max_backoff_duration = "60s"
  }

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.fn["expire_approvals"].url
    headers = {
      Content-Type = "application/json"
    }
    body = base64encode("{}")

    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = google_cloudfunctions2_function.fn["expire_approvals"].url
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.expire_scheduler]
}
