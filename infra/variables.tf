# Inputs of the jitgate deployment. Every variable is listed with its meaning
# in infra/README.md; terraform.tfvars.example shows a filled-in set.

variable "project_id" {
  description = "ID of the Google Cloud project that jitgate is deployed into (a project of its own is recommended, see docs/deploy.md)."
  type        = string
}

variable "region" {
  description = "Region for the broker instance group, the load balancer, the functions, the buckets and Cloud Scheduler."
  type        = string
  default     = "europe-west1"
}

variable "firestore_location" {
  description = "Location of the Firestore database (a region such as europe-west1, or a multi-region such as eur3)."
  type        = string
  default     = "europe-west1"
}

variable "firestore_database" {
  description = "Name of the Firestore database that holds approvals and the session index. Passed to every component as JITGATE_FIRESTORE_DATABASE."
  type        = string
  default     = "jitgate"
}

variable "release" {
  description = "Release id of the build artifacts to boot from (the _RELEASE written by cloudbuild.yaml, e.g. its BUILD_ID). Empty on the very first apply: functions, the scheduler job and the instance group are then not created yet. After bootstrap, Cloud Build rolls releases; changing this value later has no effect on running resources."
  type        = string
  default     = ""
}

variable "subnet_cidr" {
  description = "Primary IPv4 range of the broker subnet."
  type        = string
  default     = "10.20.0.0/24"
}

variable "client_source_ranges" {
  description = "CIDR ranges allowed to reach the broker's client ports (5432 PostgreSQL, 2222 SSH, 8443 HTTPS API + MCP, 6443 Kubernetes API) through the load balancer. There is no default on purpose: say who your agents and engineers are."
  type        = list(string)

  validation {
    condition     = length(var.client_source_ranges) > 0 && !contains(var.client_source_ranges, "0.0.0.0/0")
    error_message = "client_source_ranges must list at least one range and must not be 0.0.0.0/0."
  }
}

variable "load_balancer_scheme" {
  description = "EXTERNAL for a regional external passthrough TCP load balancer with a static public address; INTERNAL for an internal passthrough load balancer reachable only from the VPC (and peered or VPN-connected networks)."
  type        = string
  default     = "EXTERNAL"

  validation {
    condition     = contains(["EXTERNAL", "INTERNAL"], var.load_balancer_scheme)
    error_message = "load_balancer_scheme must be EXTERNAL or INTERNAL."
  }
}

variable "broker_machine_type" {
  description = "Machine type of each broker VM."
  type        = string
  default     = "e2-standard-2"
}

variable "broker_image" {
  description = "Boot image of the broker VMs. The startup script expects Debian 12 (Python 3.11, google-cloud-cli preinstalled)."
  type        = string
  default     = "projects/debian-cloud/global/images/family/debian-12"
}

variable "broker_min_replicas" {
  description = "Minimum number of broker VMs kept by the autoscaler."
  type        = number
  default     = 2
}

variable "broker_max_replicas" {
  description = "Maximum number of broker VMs the autoscaler may create."
  type        = number
  default     = 6
}

variable "broker_target_cpu" {
  description = "Average CPU utilisation (0-1) the autoscaler aims for."
  type        = number
  default     = 0.6
}

variable "policy_object" {
  description = "Name of the policy file inside the config bucket. The broker and the functions read gs://<config bucket>/<policy_object> (JITGATE_POLICY)."
  type        = string
  default     = "policy.yaml"
}

variable "held_credential_secrets" {
  description = "Secret Manager secret ids (not values) that hold the broker's upstream credentials: database passwords, SSH private keys, kubeconfigs. Each is created empty here; the policy file refers to them as gcp-secret:projects/<project>/secrets/<id>/versions/latest. Only the broker can read them."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.held_credential_secrets : can(regex("^[a-zA-Z0-9_-]{1,255}$", s))])
    error_message = "Secret ids may contain letters, digits, '-' and '_' only."
  }
}

variable "recordings_retention_days" {
  description = "Retention period of the recordings bucket, in days: no object can be deleted or replaced before it is that old."
  type        = number
  default     = 365
}

variable "lock_recordings_retention" {
  description = "Lock the retention policy of the recordings bucket. IRREVERSIBLE: once locked, the period can never be shortened and the bucket cannot be deleted until every object has aged out."
  type        = bool
  default     = false
}

variable "use_cmek" {
  description = "Encrypt the recordings bucket and the Pub/Sub topics with a customer-managed Cloud KMS key created here (jitgate-data) instead of Google-managed keys."
  type        = bool
  default     = true
}

variable "function_runtime" {
  description = "Cloud Functions runtime of every function (must match the Python the repository supports and the --runtime in cloudbuild.yaml)."
  type        = string
  default     = "python311"
}

variable "expiry_schedule" {
  description = "Cron schedule (in expiry_time_zone) of the approval-expiry sweep that Cloud Scheduler sends to expire_approvals."
  type        = string
  default     = "*/5 * * * *"
}

variable "expiry_time_zone" {
  description = "Time zone of expiry_schedule."
  type        = string
  default     = "Etc/UTC"
}

variable "oidc_issuer" {
  description = "OIDC issuer URL of your IdP (e.g. https://accounts.google.com, https://login.microsoftonline.com/<tenant>/v2.0, https://<org>.okta.com). Passed to authorize as JITGATE_OIDC_ISSUER, which pins it: a policy file whose identity.issuer differs is refused."
  type        = string
}

variable "oidc_audience" {
  description = "Audience (client id) that tokens presented to jitgate must carry. Passed as JITGATE_OIDC_AUDIENCE."
  type        = string
}

variable "oidc_groups_claim" {
  description = "Name of the ID-token claim that lists the user's groups. Passed as JITGATE_OIDC_GROUPS_CLAIM."
  type        = string
  default     = "groups"
}

variable "directory_group_domain" {
  description = "Domain of the Google Workspace / Cloud Identity groups named in the policy (group dba is dba@<domain>). Set: the approvals service checks each approver's transitive group membership at decision time (its service account needs the Workspace Groups Reader role). Empty: groups come from the approver's token or a sign-in at most 24 h old."
  type        = string
  default     = ""
}

variable "slack_team_ids" {
  description = "Slack workspace (team) ids whose users may decide approvals (JITGATE_SLACK_TEAM_IDS). Empty: Slack clicks are refused with a message saying so."
  type        = list(string)
  default     = []
}

variable "slack_enterprise_ids" {
  description = "Slack Enterprise Grid organisation ids accepted for approvals (JITGATE_SLACK_ENTERPRISE_IDS); clicks from an organisation not listed are refused."
  type        = list(string)
  default     = []
}

variable "dead_letter_max_delivery_attempts" {
  description = "Deliveries of an event to a function before Pub/Sub moves it to jitgate-dead-letter (5-100)."
  type        = number
  default     = 10
}
