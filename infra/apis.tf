# Every API that the resources in this folder use. Disabling on destroy is
# off: other things in the project may rely on the same APIs.
locals {
  apis = toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudidentity.googleapis.com", # approvals: approver groups checked at decision time
    "cloudkms.googleapis.com",
    "cloudscheduler.googleapis.com",
    "compute.googleapis.com",
    "eventarc.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ])
}

resource "google_project_service" "apis" {
  for_each = local.apis

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

# Google-managed service agents that this configuration grants narrow roles
# to (CMEK use, dead-lettering, Storage events). Their addresses are fixed by
# Google from the project number.
locals {
  pubsub_service_agent  = "service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  storage_service_agent = data.google_storage_project_service_account.gcs.email_address
}

data "google_storage_project_service_account" "gcs" {
  project = var.project_id

  depends_on = [google_project_service.apis]
}
