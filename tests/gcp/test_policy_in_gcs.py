"""The policy file kept in Cloud Storage (JITGATE_POLICY=gs://...), as infra/ deploys it."""
from __future__ import annotations


import pytest

from jitgate.policy import PolicyError, PolicyHolder, load_policy
from tests.jitgate.test_policy import BASE


def test_policy_loads_and_reloads_from_gcs(gcp_env, gcp_project, monkeypatch):
    for key, value in gcp_env.items():
        if key.endswith("_EMULATOR_HOST") or key == "GOOGLE_CLOUD_PROJECT":
            monkeypatch.setenv(key, value)
    from google.cloud import storage

    client = storage.Client(project=gcp_project)
    bucket = client.create_bucket(f"{gcp_project}-config")
    bucket.blob("policy.yaml").upload_from_string(BASE)
    uri = f"gs://{bucket.name}/policy.yaml"

    assert "prod-db" in load_policy(uri).targets
    holder = PolicyHolder(uri)
    holder.GCS_CHECK_SECONDS = 0  # check at every access in the test
    bucket.blob("policy.yaml").upload_from_string(BASE.replace("prod-db", "staging-db"))
    assert "staging-db" in holder.policy.targets
    bucket.blob("policy.yaml").upload_from_string(BASE.replace("kind: postgres", "kind: mongodb"))
    assert "staging-db" in holder.policy.targets  # a broken upload keeps the last good policy
    with pytest.raises(PolicyError, match="cannot read the policy object"):
        load_policy(f"gs://{bucket.name}/missing.yaml")
