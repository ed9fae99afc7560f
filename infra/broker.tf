# The broker: a regional managed instance group of small Debian VMs built
# from one instance template whose startup script installs the release that
# Cloud Build pinned (instance metadata jitgate-release), with autohealing on
# GET /healthz:9100, CPU autoscaling and a passthrough TCP load balancer in
# front of the client ports.

locals {
  # Created once artifacts exist (var.release set), see docs/deploy.md.
  bootstrapped = var.release != ""

  broker_env = {
    JITGATE_BACKENDS     = "gcp"
    JITGATE_POLICY       = "gs://${google_storage_bucket.config.name}/${var.policy_object}"
    GOOGLE_CLOUD_PROJECT = var.project_id
    # The Cloud Run URL: also the audience of the broker's Google ID token,
    # which Cloud Run checks before authorize sees the request.
    JITGATE_AUTHORIZE_URL      = local.bootstrapped ? google_cloudfunctions2_function.fn["authorize"].service_config[0].uri : ""
    JITGATE_AUTHORIZE_AUTH     = "google-id-token"
    JITGATE_APPROVALS_URL      = local.bootstrapped ? google_cloudfunctions2_function.fn["approvals"].url : ""
    JITGATE_RECORDINGS_BUCKET  = google_storage_bucket.recordings.name
    JITGATE_KMS_KEY            = local.manifest_key_version
    JITGATE_BROKER_KMS_KEY     = local.session_closed_key_version
    JITGATE_FIRESTORE_DATABASE = google_firestore_database.jitgate.name
    # One masking key and one SSH host key for every broker (Secret Manager).
    JITGATE_MASKING_KEY  = "gcp-secret:${google_secret_manager_secret.app["jitgate-masking-hmac-key"].id}/versions/latest"
    JITGATE_SSH_HOST_KEY = "gcp-secret:${google_secret_manager_secret.app["jitgate-broker-ssh-host-key"].id}/versions/latest"
  }
}

resource "google_compute_instance_template" "broker" {
  name_prefix  = "jitgate-broker-"
  description  = "jitgate broker; the release it runs is pinned per group in metadata jitgate-release."
  region       = var.region
  machine_type = var.broker_machine_type
  tags         = [local.broker_tag]

  labels = {
    app  = "jitgate"
    role = "broker"
  }

  disk {
    source_image = var.broker_image
    auto_delete  = true
    boot         = true
    disk_type    = "pd-balanced"
    disk_size_gb = 20
  }

  network_interface {
    subnetwork = google_compute_subnetwork.brokers.id
    # No access_config: the brokers have no public address (egress via NAT).
  }

  service_account {
    email  = google_service_account.broker.email
    scopes = ["cloud-platform"]
  }

  shielded_instance_config {
    enable_secure_boot          = true
    enable_vtpm                 = true
    enable_integrity_monitoring = true
  }

  metadata = {
    enable-oslogin         = "TRUE"
    block-project-ssh-keys = "TRUE"
    serial-port-enable     = "FALSE"
    startup-script = templatefile("${path.module}/startup.sh.tftpl", {
      sources_bucket = google_storage_bucket.sources.name
      health_port    = local.broker_health_port
      env            = local.broker_env
      tls_secret     = google_secret_manager_secret.app["jitgate-broker-tls"].secret_id
    })
  }

  scheduling {
    automatic_restart   = true
    on_host_maintenance = "MIGRATE"
  }

  lifecycle {
    create_before_destroy = true
  }
}

# Autohealing: recreate a VM whose /healthz stops answering.
resource "google_compute_region_health_check" "broker_autoheal" {
  name                = "jitgate-broker-autoheal"
  region              = var.region
  check_interval_sec  = 10
  timeout_sec         = 5
  healthy_threshold   = 2
  unhealthy_threshold = 6

  http_health_check {
    port         = local.broker_health_port
    request_path = "/healthz"
  }

  log_config {
    enable = true
  }

  depends_on = [google_project_service.apis]
}

# Load balancing: stop sending new connections to a VM that is unhealthy or
# draining (SIGTERM makes /readyz fail while live sessions finish; /healthz,
# which autohealing watches, keeps answering so the VM is not recreated under
# its live sessions).
resource "google_compute_region_health_check" "broker_lb" {
  name                = "jitgate-broker-lb"
  region              = var.region
  check_interval_sec  = 5
  timeout_sec         = 3
  healthy_threshold   = 2
  unhealthy_threshold = 2

  http_health_check {
    port         = local.broker_health_port
    request_path = "/readyz"
  }

  log_config {
    enable = true
  }

  depends_on = [google_project_service.apis]
}

resource "google_compute_region_instance_group_manager" "broker" {
  count = local.bootstrapped ? 1 : 0

  name               = "jitgate-broker"
  region             = var.region
  base_instance_name = "jitgate-broker"

  version {
    instance_template = google_compute_instance_template.broker.id
  }

  # The release every VM installs at boot. Cloud Build changes it on each
  # rollout (gcloud ... all-instances-config update), so Terraform sets it
  # only when it creates the group.
  all_instances_config {
    metadata = {
      jitgate-release = var.release
    }
  }

  auto_healing_policies {
    health_check      = google_compute_region_health_check.broker_autoheal.id
    initial_delay_sec = 300
  }

  update_policy {
    type                         = "PROACTIVE"
    minimal_action               = "REPLACE"
    instance_redistribution_type = "PROACTIVE"
    max_surge_fixed              = 3
    max_unavailable_fixed        = 0
    replacement_method           = "SUBSTITUTE"
  }

  named_port {
    name = "health"
    port = local.broker_health_port
  }

  lifecycle {
    ignore_changes = [all_instances_config]
  }
}

resource "google_compute_region_autoscaler" "broker" {
  count = local.bootstrapped ? 1 : 0

  name   = "jitgate-broker"
  region = var.region
  target = google_compute_region_instance_group_manager.broker[0].id

  autoscaling_policy {
    min_replicas    = var.broker_min_replicas
    max_replicas    = var.broker_max_replicas
    cooldown_period = 180

    cpu_utilization {
      target = var.broker_target_cpu
    }

    # Scale in slowly: a VM that goes away drops its live sessions after the
    # drain period.
    scale_in_control {
      time_window_sec = 900
      max_scaled_in_replicas {
        fixed = 1
      }
    }
  }
}

# Passthrough TCP load balancer in front of the client ports.
resource "google_compute_region_backend_service" "broker" {
  count = local.bootstrapped ? 1 : 0

  name                            = "jitgate-broker"
  region                          = var.region
  protocol                        = "TCP"
  load_balancing_scheme           = var.load_balancer_scheme
  health_checks                   = [google_compute_region_health_check.broker_lb.id]
  connection_draining_timeout_sec = 300
  session_affinity                = "CLIENT_IP"

  backend {
    group          = google_compute_region_instance_group_manager.broker[0].instance_group
    balancing_mode = "CONNECTION"
  }

  log_config {
    enable      = true
    sample_rate = 1.0
  }
}

resource "google_compute_address" "broker" {
  name         = "jitgate-broker"
  region       = var.region
  address_type = var.load_balancer_scheme
  subnetwork   = var.load_balancer_scheme == "INTERNAL" ? google_compute_subnetwork.brokers.id : null
}

resource "google_compute_forwarding_rule" "broker" {
  count = local.bootstrapped ? 1 : 0

  name                  = "jitgate-broker"
  region                = var.region
  ip_address            = google_compute_address.broker.address
  ip_protocol           = "TCP"
  load_balancing_scheme = var.load_balancer_scheme
  ports                 = [for p in values(local.broker_client_ports) : tostring(p)]
  backend_service       = google_compute_region_backend_service.broker[0].id
  network               = var.load_balancer_scheme == "INTERNAL" ? google_compute_network.jitgate.id : null
  subnetwork            = var.load_balancer_scheme == "INTERNAL" ? google_compute_subnetwork.brokers.id : null
}
