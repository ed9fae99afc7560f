terraform {
  required_version = ">= 1.5.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
  }

  # Keep state in a GCS bucket you create once by hand (see docs/deploy.md):
  #   terraform init -backend-config="bucket=<project>-tfstate" -backend-config="prefix=jitgate"
  backend "gcs" {}
}

provider "google" {
  project = var.project_id
  region  = var.region

  default_labels = {
    app = "jitgate"
  }
}

data "google_project" "this" {
  project_id = var.project_id
}
