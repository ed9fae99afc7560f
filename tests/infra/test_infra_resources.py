"""What infra/ declares: network, broker group, buckets, keys, indexes, docs."""

import json
import re
import shutil
import subprocess

import yaml

from infra_support import INFRA, ROOT, attr

REQUIRED_INDEXES = {
    ("sessions", ("target", "ASCENDING"), ("started_at", "DESCENDING")),
    ("sessions", ("principal", "ASCENDING"), ("started_at", "DESCENDING")),
    ("approvals", ("status", "ASCENDING"), ("expires_at", "ASCENDING")),
    ("approvals", ("target", "ASCENDING"), ("created_at", "DESCENDING")),
    # Explicit paging, newest first (the broker's lookup of one statement goes through the
    # approval_keys documents, not a query).
    ("approvals", ("status", "ASCENDING"), ("created_at", "DESCENDING")),
    ("approvals", ("target", "ASCENDING"), ("status", "ASCENDING"), ("created_at", "DESCENDING")),
}


def test_firestore_indexes_file_and_terraform(tf):
    doc = json.loads((INFRA / "firestore.indexes.json").read_text())
    got = {(i["collectionGroup"], *((f["fieldPath"], f["order"]) for f in i["fields"])) for i in doc["indexes"]}
    assert got == REQUIRED_INDEXES
    assert "firestore.indexes.json" in json.dumps(tf.local("firestore_indexes"))
    index = tf.resource("google_firestore_index", "composite")
    assert attr(index, "for_each") == "${local.firestore_indexes}"


def test_firewall_opens_only_broker_ports(tf):
    assert tf.local("broker_client_ports") == {"postgres": 5432, "ssh": 2222, "https": 8443, "kube_api": 6443}
    assert tf.local("broker_health_port") == 9100
    rules = {n: b for _, n, b, _ in tf.resources("google_compute_firewall")}
    assert set(rules) == {"broker_clients", "broker_health_checks", "deny_all_ingress"}
    health = rules["broker_health_checks"]
    assert attr(attr(health, "allow"), "ports") == ["${tostring(local.broker_health_port)}"]
    assert attr(health, "source_ranges") == "${local.health_check_ranges}"
    assert set(tf.local("health_check_ranges_autohealing")) == {"35.191.0.0/16", "130.211.0.0/22"}
    assert "0.0.0.0/0" not in json.dumps(attr(rules["broker_clients"], "source_ranges"))
    for name in ("broker_clients", "broker_health_checks"):
        assert attr(rules[name], "target_tags") == ["${local.broker_tag}"]


def test_broker_group_heals_scales_and_balances(tf):
    mig = tf.resource("google_compute_region_instance_group_manager", "broker")
    heal = attr(mig, "auto_healing_policies")
    assert attr(heal, "health_check") == "${google_compute_region_health_check.broker_autoheal.id}"
    hc = attr(tf.resource("google_compute_region_health_check", "broker_autoheal"), "http_health_check")
    assert attr(hc, "request_path") == "/healthz" and attr(hc, "port") == "${local.broker_health_port}"
    # The load balancer watches readiness, which fails while a broker drains (tests/broker/test_drain.py).
    backend = tf.resource("google_compute_region_backend_service", "broker")
    assert attr(backend, "health_checks") == "${google_compute_region_health_check.broker_lb.id}" or \
        attr(backend, "health_checks") == ["${google_compute_region_health_check.broker_lb.id}"]
    lb = attr(tf.resource("google_compute_region_health_check", "broker_lb"), "http_health_check")
    assert attr(lb, "request_path") == "/readyz"
    assert attr(tf.resource("google_compute_region_autoscaler", "broker"), "target").endswith("broker[0].id}")
    rule = tf.resource("google_compute_forwarding_rule", "broker")
    assert attr(rule, "ip_protocol") == "TCP"
    template = tf.resource("google_compute_instance_template", "broker")
    meta = attr(template, "metadata")
    assert "startup.sh.tftpl" in meta["startup-script"]
    assert "access_config" not in attr(template, "network_interface")


def test_startup_script_renders_to_valid_bash(tmp_path):
    """Render startup.sh.tftpl with Terraform itself (no provider needed)."""
    terraform = shutil.which("terraform")
    (tmp_path / "main.tf").write_text(f'''
output "script" {{
  value = templatefile("{INFRA / 'startup.sh.tftpl'}", {{
    sources_bucket = "p-jitgate-sources"
    health_port    = 9100
    tls_secret     = "jitgate-broker-tls"
    env = {{ JITGATE_BACKENDS = "gcp", JITGATE_POLICY = "gs://p-jitgate-config/policy.yaml" }}
  }})
}}
''')
    env = {"TF_CLI_CONFIG_FILE": "/dev/null", "PATH": "/usr/bin:/bin:/usr/local/bin"}
    subprocess.run([terraform, "init", "-input=false", "-backend=false"], cwd=tmp_path, env=env,
                   capture_output=True, check=True)
    subprocess.run([terraform, "apply", "-auto-approve", "-input=false"], cwd=tmp_path, env=env,
                   capture_output=True, check=True)
    out = subprocess.run([terraform, "output", "-raw", "script"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    script = tmp_path / "startup.sh"
    script.write_text(out)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert "JITGATE_BACKENDS=gcp\n" in out and "JITGATE_POLICY=gs://p-jitgate-config/policy.yaml\n" in out
    assert "gs://p-jitgate-sources/broker/$RELEASE.tar.gz" in out
    assert "ExecStart=/opt/jitgate/current/venv/bin/python -m broker" in out


def test_recordings_bucket(tf):
    b = tf.resource("google_storage_bucket", "recordings")
    assert attr(b, "uniform_bucket_level_access") is True
    assert attr(b, "public_access_prevention") == "enforced"
    assert attr(attr(b, "versioning"), "enabled") is True
    retention = attr(b, "retention_policy")
    assert attr(retention, "is_locked") == "${var.lock_recordings_retention}"
    assert "encryption" in json.dumps(b)  # the optional CMEK block
    for _, name, body, _ in tf.resources("google_storage_bucket"):
        assert attr(body, "public_access_prevention") == "enforced", name
        assert attr(body, "uniform_bucket_level_access") is True, name


def test_kms_signing_key(tf):
    key = tf.resource("google_kms_crypto_key", "manifest_signing")
    assert attr(key, "purpose") == "ASYMMETRIC_SIGN"
    # Ed25519 only: the algorithm jitgate verify checks (no option that would seal unverifiable manifests).
    assert attr(attr(key, "version_template"), "algorithm") == "EC_SIGN_ED25519"
    assert "kms_signing_algorithm" not in tf.variables()


def test_topics_secrets_scheduler(tf):
    assert set(tf.local("topics")[len("${toset(["):-3].replace("'", "").replace('"', "").replace(" ", "").split(",")) == {
        "jitgate-approval-requested", "jitgate-approval-decided", "jitgate-session-closed", "jitgate-dead-letter"}
    app = tf.local("app_secrets")
    for name in ("jitgate-slack-bot-token", "jitgate-slack-signing-secret",
                 "jitgate-grant-signing-key", "jitgate-masking-hmac-key", "jitgate-broker-ssh-host-key"):
        assert name in app
    # Declared without values: no version resource anywhere.
    assert not list(tf.resources("google_secret_manager_secret_version"))
    job = tf.resource("google_cloud_scheduler_job", "expire_approvals")
    assert "expire_approvals" in attr(attr(job, "http_target"), "uri")


def test_variables_and_outputs_are_documented(tf):
    readme = (INFRA / "README.md").read_text()
    for kind, items in (("variable", tf.variables()), ("output", tf.outputs())):
        assert items
        for name, body in items.items():
            assert len(str(attr(body, "description", ""))) > 20, f"{kind} {name} needs a description"
            assert re.search(rf"`{name}`", readme), f"{kind} {name} is not in infra/README.md"
    example = (INFRA / "terraform.tfvars.example").read_text()
    for name, body in tf.variables().items():
        if "default" not in body:
            assert re.search(rf"^{name}\s*=", example, re.M), f"required {name} missing from the example"


def test_slack_manifest():
    manifest = yaml.safe_load((ROOT / "docs" / "slack-app-manifest.yaml").read_text())
    settings = manifest["settings"]["interactivity"]
    assert settings["is_enabled"] is True and settings["request_url"].startswith("https://")
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"chat:write", "users:read", "users:read.email"} <= scopes


def _references(body) -> set[str]:
    text = json.dumps(body)
    refs = set(re.findall(r"\b((?:data\.)?google_[a-z0-9_]+\.[a-z0-9_]+)", text))
    refs |= {f"local.{n}" for n in re.findall(r"\blocal\.([a-z0-9_]+)", text)}
    return refs


def test_every_resource_waits_for_the_apis(tf):
    """The first apply on an empty project: a resource created before its API is enabled fails.
    Every resource must depend on google_project_service.apis, directly or through what it
    references (depends_on, or an attribute of a resource that does)."""
    graph = {}
    for rtype, name, body, _ in tf.resources():
        graph[f"{rtype}.{name}"] = _references(body)
    for _, entry in tf.blocks("data"):
        for dtype, named in entry.items():
            for name, body in named.items():
                graph[f"data.{dtype}.{name}"] = _references(body)
    for _, entry in tf.blocks("locals"):
        for name, value in entry.items():
            graph[f"local.{name}"] = _references(value)
    root = "google_project_service.apis"
    waits: dict[str, bool] = {root: True}

    def reaches(node: str, seen: frozenset = frozenset()) -> bool:
        if node in waits:
            return waits[node]
        if node in seen:
            return False
        result = any(reaches(ref, seen | {node}) for ref in graph.get(node, ()))
        waits[node] = result
        return result

    # Resources that call no Google API of this project, or only ones enabled before Terraform runs
    # (docs/deploy.md step 1: storage, cloudresourcemanager, serviceusage).
    exempt = {"data.google_project.this"}
    late = sorted(n for n in graph if not n.startswith("local.") and n != root and n not in exempt and not reaches(n))
    assert not late, f"these do not wait for google_project_service.apis (add depends_on): {late}"


def test_sources_lifecycle_never_deletes_a_live_release(tf):
    """New broker VMs install the release pinned in metadata from the sources bucket: an age rule
    on live objects would delete it after that many days and leave autohealing unable to boot."""
    for rule in tf.resource("google_storage_bucket", "sources").get("lifecycle_rule", []):
        condition = attr(rule, "condition")
        if attr(attr(rule, "action"), "type") == "Delete":
            assert attr(condition, "with_state") == "ARCHIVED", f"a Delete rule that matches live objects: {rule}"


def test_access_logs_are_delivered(tf):
    logged = [n for _, n, b, _ in tf.resources("google_storage_bucket") if b.get("logging")]
    assert set(logged) >= {"recordings", "config", "sources"}
    for name in logged:
        assert attr(attr(tf.resource("google_storage_bucket", name), "logging"), "log_bucket") == \
            "${google_storage_bucket.access_logs.name}"
    writers = [attr(b, "member") for _, _, b, _ in tf.resources("google_storage_bucket_iam_member")
               if attr(b, "bucket") == "${google_storage_bucket.access_logs.name}"
               and attr(b, "role") == "roles/storage.objectCreator"]
    assert writers == ["group:cloud-storage-analytics@google.com"], "Cloud Storage delivers usage logs as this group"


def _startup_script() -> str:
    """infra/startup.sh.tftpl rendered with placeholder values (enough for bash -n and the checks)."""
    text = (INFRA / "startup.sh.tftpl").read_text()
    text = re.sub(r"%\{ for k, v in env ~\}\n\$\{k\}=\$\{v\}\n%\{ endfor ~\}\n", "JITGATE_BACKENDS=gcp\n", text)
    return re.sub(r"\$\{(sources_bucket|health_port|tls_secret)\}", "placeholder", text)


def test_broker_logs_are_shipped_to_cloud_logging():
    script = _startup_script()
    assert subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True).returncode == 0
    assert "add-google-cloud-ops-agent-repo.sh --also-install" in script
    config = yaml.safe_load(re.search(r"<<'OPS'\n(.*?)\nOPS\n", script, re.S).group(1))
    receivers = config["logging"]["receivers"]
    pipeline = next(iter(config["logging"]["service"]["pipelines"].values()))
    [receiver] = [receivers[r] for r in pipeline["receivers"]]
    assert receiver["type"] == "files"
    processors = config["logging"]["processors"]
    assert [processors[p]["type"] for p in pipeline["processors"]] == ["parse_json"]
    # The broker's stdout and stderr (JSON lines, jitgate/logs.py) go to the file the agent reads.
    outputs = set(re.findall(r"^Standard(?:Output|Error)=append:(\S+)$", script, re.M))
    assert outputs and outputs <= set(receiver["include_paths"])


def test_recording_chunks_age_out_after_retention_and_no_sealed_object_does(tf):
    """Chunks are working copies of what a seal holds: a lifecycle rule removes them once the retention
    policy lets it (issue 21), and it must never match a sealed recording, manifest or ledger object."""
    from jitgate.backends.gcp import GcsRecordingStore
    from jitgate.recording import ledger as ledger_names

    rules = tf.resource("google_storage_bucket", "recordings").get("lifecycle_rule", [])
    deletes = [attr(r, "condition") for r in rules if attr(attr(r, "action"), "type") == "Delete"]
    live = [c for c in deletes if attr(c, "with_state") is None]
    archived = [c for c in deletes if attr(c, "with_state") == "ARCHIVED"]
    assert len(live) == 1 and len(archived) == 1, rules
    assert attr(live[0], "age") == "${var.recordings_retention_days + 1}"  # never before retention allows

    def matched(condition, name: str) -> bool:
        return any(name.endswith(suffix) for suffix in attr(condition, "matches_suffix"))

    store = GcsRecordingStore("bucket", "project")
    session = "3f1c0a9b8e7d6c5b4a3928171615141e"
    chunks = [store._chunk_name(session, 0), store._chunk_name(session, 1234567),
              f"{store._chunk_name(session, 7)}.{4096:012d}", store._chunk_name(f"{session}-c1", 9)]
    sealed = [f"{session}/recording.jsonl", f"{session}/manifest.json", f"{session}/ledger-entry.json",
              f"{session}-c1/recording.jsonl", f"{session}-c2/manifest.json",
              f"ledger/{ledger_names.entry_name(10)}", f"ledger/{ledger_names.checkpoint_name(10)}"]
    for condition in (live[0], archived[0]):
        assert all(matched(condition, name) for name in chunks), chunks
        assert not [name for name in sealed if matched(condition, name)]
