# Network: one VPC, one subnet for the brokers, Cloud NAT for egress (the
# brokers have no public addresses), and firewall rules that open only the
# broker's ports.

locals {
  broker_tag = "jitgate-broker"

  # Client-facing listeners of the broker (served through the load balancer).
  broker_client_ports = {
    postgres = 5432
    ssh      = 2222
    https    = 8443
    kube_api = 6443
  }

  # Health and metrics: GET /healthz, /readyz on this port, never reachable by clients.
  broker_health_port = 9100

  # Source ranges of Google's health checkers. Autohealing and the internal
  # passthrough load balancer probe from 35.191.0.0/16 and 130.211.0.0/22; the
  # external passthrough (backend-service based) load balancer probes from
  # 35.191.0.0/16, 209.85.152.0/22 and 209.85.204.0/22.
  health_check_ranges_autohealing = ["35.191.0.0/16", "130.211.0.0/22"]
  health_check_ranges_external_lb = ["35.191.0.0/16", "209.85.152.0/22", "209.85.204.0/22"]
  health_check_ranges = distinct(concat(
    local.health_check_ranges_autohealing,
    var.load_balancer_scheme == "EXTERNAL" ? local.health_check_ranges_external_lb : [],
  ))
}

resource "google_compute_network" "jitgate" {
  name                    = "jitgate"
  auto_create_subnetworks = false
  routing_mode            = "REGIONAL"

  depends_on = [google_project_service.apis]
}

resource "google_compute_subnetwork" "brokers" {
  name                     = "jitgate-brokers"
  region                   = var.region
  network                  = google_compute_network.jitgate.id
  ip_cidr_range            = var.subnet_cidr
  private_ip_google_access = true

  log_config {
    aggregation_interval = "INTERVAL_5_SEC"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# Egress for the brokers (IdP JWKS, upstream targets outside the VPC) without
# public addresses on the VMs.
resource "google_compute_router" "jitgate" {
  name    = "jitgate"
  region  = var.region
  network = google_compute_network.jitgate.id
}

resource "google_compute_router_nat" "jitgate" {
  name                               = "jitgate"
  router                             = google_compute_router.jitgate.name
  region                             = var.region
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "LIST_OF_SUBNETWORKS"

  subnetwork {
    name                    = google_compute_subnetwork.brokers.id
    source_ip_ranges_to_nat = ["ALL_IP_RANGES"]
  }

  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}

# Clients reach the broker's listeners. A passthrough load balancer keeps the
# client's address, so the rule is written in terms of client ranges.
resource "google_compute_firewall" "broker_clients" {
  name          = "jitgate-allow-broker-clients"
  network       = google_compute_network.jitgate.id
  direction     = "INGRESS"
  priority      = 1000
  source_ranges = var.client_source_ranges
  target_tags   = [local.broker_tag]

  allow {
    protocol = "tcp"
    ports    = [for p in values(local.broker_client_ports) : tostring(p)]
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

# Health checks (load balancer: /readyz, autohealing: /healthz) reach port 9100 only.
resource "google_compute_firewall" "broker_health_checks" {
  name          = "jitgate-allow-health-checks"
  network       = google_compute_network.jitgate.id
  direction     = "INGRESS"
  priority      = 1000
  source_ranges = local.health_check_ranges
  target_tags   = [local.broker_tag]

  allow {
    protocol = "tcp"
    ports    = [tostring(local.broker_health_port)]
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

# Everything else inbound is refused explicitly (and logged), whatever other
# rules someone adds at a lower priority later.
resource "google_compute_firewall" "deny_all_ingress" {
  name          = "jitgate-deny-all-ingress"
  network       = google_compute_network.jitgate.id
  direction     = "INGRESS"
  priority      = 65534
  source_ranges = ["0.0.0.0/0"]

  deny {
    protocol = "all"
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}
