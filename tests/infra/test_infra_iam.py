"""Every IAM grant in infra/ and in the build scripts equals the reviewed list.

Adding a grant, widening its scope (another secret, a project-wide binding, a
longer for_each list) or changing a custom role's permissions fails here until
tests/infra/expected_iam.py is changed too, so the widening shows in review.
"""

import re

from infra_support import ROOT, attr
from infra_expected_iam import EXPECTED_CUSTOM_ROLES, EXPECTED_GRANTS, EXPECTED_SCRIPT_GRANTS

SCOPE_KEYS = ("project", "secret_id", "topic", "subscription", "bucket", "crypto_key_id",
              "service_account_id", "name")
FORBIDDEN_ROLES = {"roles/owner", "roles/editor", "roles/viewer",
                   "roles/iam.serviceAccountTokenCreator", "roles/iam.serviceAccountKeyAdmin",
                   "roles/resourcemanager.projectIamAdmin", "roles/storage.admin",
                   "roles/storage.objectAdmin", "roles/secretmanager.admin", "roles/pubsub.admin",
                   "roles/pubsub.editor", "roles/cloudkms.admin", "roles/datastore.owner"}


def grant_fingerprints(tf):
    grants = []
    for rtype, name, body, _ in tf.resources():
        if not rtype.endswith("_iam_member"):
            continue
        scope = {k: attr(body, k) for k in SCOPE_KEYS if k in body and k != "role"}
        cond = attr(body, "condition")
        grants.append({
            "resource": f"{rtype}.{name}",
            "role": attr(body, "role"),
            "member": attr(body, "member"),
            "scope": scope,
            "for_each": attr(body, "for_each"),
            "count": attr(body, "count"),
            "condition": attr(cond, "expression") if isinstance(cond, dict) else None,
        })
    return sorted(grants, key=lambda g: g["resource"])


def test_every_grant_is_in_the_reviewed_list(tf):
    actual = grant_fingerprints(tf)
    expected = sorted(EXPECTED_GRANTS, key=lambda g: g["resource"])
    missing = [g for g in actual if g not in expected]
    extra = [g for g in expected if g not in actual]
    assert not missing and not extra, (
        "IAM grants differ from tests/infra/expected_iam.py.\n"
        f"In infra/ but not in the list (new or widened): {missing}\n"
        f"In the list but not in infra/: {extra}"
    )


def test_custom_role_permissions_are_reviewed(tf):
    actual = {
        attr(body, "role_id"): sorted(attr(body, "permissions"))
        for _, _, body, _ in tf.resources("google_project_iam_custom_role")
    }
    assert actual == {k: sorted(v) for k, v in EXPECTED_CUSTOM_ROLES.items()}


def test_no_authoritative_or_broad_grants(tf):
    for rtype, name, body, _ in tf.resources():
        assert not re.search(r"_iam_(binding|policy)$", rtype), (
            f"{rtype}.{name}: authoritative IAM resources would erase grants made elsewhere")
        if rtype.endswith("_iam_member"):
            role = attr(body, "role")
            assert role not in FORBIDDEN_ROLES, f"{rtype}.{name} grants {role}"
    for grant in EXPECTED_GRANTS:
        assert grant["role"] not in FORBIDDEN_ROLES


def test_public_access_is_only_approvals_and_the_signed_in_review_console(tf):
    public = [(f"{t}.{n}", attr(b, "name")) for t, n, b, _ in tf.resources()
              if t.endswith("_iam_member") and attr(b, "member") in ("allUsers", "allAuthenticatedUsers")]
    assert sorted(public) == [("google_cloud_run_v2_service_iam_member.review_public",
                       "${google_cloudfunctions2_function.review[0].name}"),
                      ("google_cloud_run_v2_service_iam_member.slack_public",
                       '${google_cloudfunctions2_function.fn["approvals"].name}')]
    # the review console is public only when it signs people in itself (review_auth = "oidc")
    review = next(b for t, n, b, _ in tf.resources() if n == "review_public")
    assert attr(review, "count") == '${local.bootstrapped && var.review_auth == "oidc" ? 1 : 0}'


def test_review_console_reads_recordings_and_never_writes_them(tf):
    roles = [attr(b, "role") for t, n, b, _ in tf.resources("google_storage_bucket_iam_member")
             if attr(b, "member") == "${local.review_member}"
             and attr(b, "bucket") == "${google_storage_bucket.recordings.name}"]
    assert roles == ["roles/storage.objectViewer"]


def test_only_the_broker_invokes_authorize(tf):
    invokers = [attr(b, "member") for t, n, b, _ in tf.resources("google_cloud_run_v2_service_iam_member")
                if "authorize" in str(attr(b, "name"))]
    assert invokers == ["${local.broker_member}"]


def test_broker_cannot_delete_or_overwrite_recordings(tf):
    roles = [attr(b, "role") for t, n, b, _ in tf.resources("google_storage_bucket_iam_member")
             if attr(b, "bucket") == "${google_storage_bucket.recordings.name}"
             and attr(b, "member") == "${local.broker_member}"]
    # objectCreator holds storage.objects.create but not .delete, and an
    # overwrite needs .delete: create is all the broker can do, plus reading
    # back its chunks (get/list only, under an IAM condition).
    assert roles == ["roles/storage.objectCreator", "${google_project_iam_custom_role.chunk_reader.name}"]


def script_grants():
    """`gcloud ... add-iam-policy-binding` in the scripts cloudbuild.yaml runs."""
    found = []
    for path in sorted((ROOT / "infra" / "scripts").glob("*.sh")) + [ROOT / "cloudbuild.yaml"]:
        text = re.sub(r"\\\n", " ", path.read_text())
        for line in text.splitlines():
            if "add-iam-policy-binding" in line and not line.strip().startswith("#"):
                role = re.search(r"--role[= ](\S+)", line).group(1)
                member = re.search(r"--member[= ](\S+)", line).group(1)
                found.append({"file": str(path.relative_to(ROOT)), "role": role, "member": member,
                              "command": line.split("add-iam-policy-binding")[0].split()[-2:]})
    return found


def test_script_grants_are_reviewed():
    assert script_grants() == EXPECTED_SCRIPT_GRANTS


def test_expected_list_is_not_empty_and_unique():
    names = [g["resource"] for g in EXPECTED_GRANTS]
    assert len(names) == len(set(names)) > 20
