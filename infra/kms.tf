# Cloud KMS: the asymmetric key that signs recording manifests, and (with
# use_cmek) the symmetric key that encrypts the recordings bucket and topics.

locals {
  manifest_key_version = "${google_kms_crypto_key.manifest_signing.id}/cryptoKeyVersions/${var.manifest_key_version}"
}

variable "manifest_key_version" {
  description = "Version of the manifest-signing key that finalize_recording signs with (JITGATE_KMS_KEY). Raise it after creating a new key version to rotate; old versions stay enabled so old manifests still verify."
  type        = number
  default     = 1
}

resource "google_kms_key_ring" "jitgate" {
  name     = "jitgate"
  location = var.region

  depends_on = [google_project_service.apis]
}

resource "google_kms_crypto_key" "manifest_signing" {
  # checkov:skip=CKV_GCP_43:Asymmetric signing keys cannot rotate automatically in Cloud KMS; rotation is a new key version (docs/deploy.md).
  name     = "jitgate-manifest-signing"
  key_ring = google_kms_key_ring.jitgate.id
  purpose  = "ASYMMETRIC_SIGN"

  version_template {
    # Ed25519: the one algorithm jitgate's manifests are signed and verified with.
    algorithm        = "EC_SIGN_ED25519"
    protection_level = "SOFTWARE"
  }

  lifecycle {
    prevent_destroy = true
  }
}

# The broker signs its session-closed events with this key (JITGATE_BROKER_KMS_KEY); finalize_recording
# seals a session only on such a signature (JITGATE_BROKER_KMS_TRUSTED_KEYS). The broker can sign
# session ends with it, never a seal: seals are the manifest key's, which only finalize can use.
locals {
  session_closed_key_version = "${google_kms_crypto_key.session_closed.id}/cryptoKeyVersions/${var.session_closed_key_version}"
}

variable "session_closed_key_version" {
  description = "Version of the broker's session-closed signing key (JITGATE_BROKER_KMS_KEY). To rotate: create a version, list both in JITGATE_BROKER_KMS_TRUSTED_KEYS while sessions drain, then raise this."
  type        = number
  default     = 1
}

resource "google_kms_crypto_key" "session_closed" {
  # checkov:skip=CKV_GCP_43:Asymmetric signing keys cannot rotate automatically in Cloud KMS; rotation is a new key version (docs/recordings.md).
  name     = "jitgate-session-closed"
  key_ring = google_kms_key_ring.jitgate.id
  purpose  = "ASYMMETRIC_SIGN"

  version_template {
    algorithm        = "EC_SIGN_ED25519"
    protection_level = "SOFTWARE"
  }

  lifecycle {
    prevent_destroy = true
  }
}

resource "google_kms_crypto_key" "data" {
  count = var.use_cmek ? 1 : 0

  name            = "jitgate-data"
  key_ring        = google_kms_key_ring.jitgate.id
  purpose         = "ENCRYPT_DECRYPT"
  rotation_period = "7776000s" # 90 days

  lifecycle {
    prevent_destroy = true
  }
}

# The Google-managed agents that encrypt on our behalf.
resource "google_kms_crypto_key_iam_member" "data_storage_agent" {
  count = var.use_cmek ? 1 : 0

  crypto_key_id = google_kms_crypto_key.data[0].id
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = "serviceAccount:${local.storage_service_agent}"
}

resource "google_kms_crypto_key_iam_member" "data_pubsub_agent" {
  count = var.use_cmek ? 1 : 0

  crypto_key_id = google_kms_crypto_key.data[0].id
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = "serviceAccount:${local.pubsub_service_agent}"
}
