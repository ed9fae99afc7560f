# Secret Manager secrets, declared without values: the platform team adds
# versions by hand (docs/deploy.md), so no secret ever sits in Terraform state.

locals {
  # Secrets used by jitgate itself, and who reads each (see iam.tf).
  app_secrets = toset([
    "jitgate-slack-bot-token",       # notify_approvers, approvals, expire_approvals
    "jitgate-slack-signing-secret",  # approvals
    "jitgate-grant-signing-key",     # authorize only (Ed25519 PEM); brokers verify with its public JWKS
    "jitgate-approvals-signing-key", # approvals only (Ed25519 PEM, signs decisions); brokers verify with GET /keys
    "jitgate-masking-hmac-key",      # broker (keyed masking tokens, the same on every broker)
    "jitgate-broker-tls",            # broker (listener certificate and key, PEM)
    "jitgate-broker-ssh-host-key",   # broker (one SSH host key for the whole fleet, Ed25519 PEM)
  ])
}

resource "google_secret_manager_secret" "app" {
  for_each = local.app_secrets

  secret_id = each.value

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

# Upstream credentials the broker holds on behalf of its users.
resource "google_secret_manager_secret" "held" {
  for_each = toset(var.held_credential_secrets)

  secret_id = each.value

  labels = {
    jitgate-held-credential = "true"
  }

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}
