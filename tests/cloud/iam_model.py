"""Who may do what, read from infra/ (the parsed Terraform, as tests/infra reads it).

The stand-ins that enforce Google's checks offline take their rules from here, so the
broker and the functions run in the tests with exactly the permissions infra/ grants:
- invokers: the service accounts with roles/run.invoker on each function;
- storage: per service account and bucket, the permissions of every role granted on the
  bucket (predefined roles as Google defines them, custom roles from infra/), each with its
  IAM condition.
Anything this model cannot read fails loudly rather than granting.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from tests.infra.infra_support import Terraform, attr, load_terraform

# Storage permissions of the predefined roles infra/ grants on buckets (cloud.google.com/storage/docs/access-control/iam-roles).
PREDEFINED = {
    "roles/storage.objectViewer": {"storage.objects.get", "storage.objects.list"},
    "roles/storage.objectCreator": {"storage.objects.create"},
    "roles/storage.objectUser": {"storage.objects.create", "storage.objects.delete", "storage.objects.get",
                                 "storage.objects.list", "storage.objects.update"},
    "roles/storage.objectAdmin": {"storage.objects.create", "storage.objects.delete", "storage.objects.get",
                                  "storage.objects.list", "storage.objects.update", "storage.objects.getIamPolicy",
                                  "storage.objects.setIamPolicy"},
}


@lru_cache(maxsize=1)
def terraform() -> Terraform:
    return load_terraform()


def _each_values(expression) -> list[str]:
    """The keys of a for_each over toset([...]) (the first literal set in the expression)."""
    match = re.search(r"toset\(\[(.*?)\]\)", str(expression or ""))
    if not match:
        raise ValueError(f"cannot read the for_each {expression!r}")
    return re.findall(r"""['"]([^'"]+)['"]""", match.group(1))


def account_email(identity: str, project: str) -> str:
    """broker, scheduler, builder, deployer, review, or fn:<function> -> the account's email."""
    tf = terraform()
    if identity.startswith("fn:"):
        body = tf.resource("google_service_account", "fn")
        account = attr(body, "account_id").replace('${replace(each.key, "_", "-")}', identity[3:].replace("_", "-"))
        account = re.sub(r'^\$\{"(.*)"\}$', r"\1", account)
    else:
        account = attr(tf.resource("google_service_account", identity), "account_id")
    assert "${" not in account, account
    return f"{account}@{project}.iam.gserviceaccount.com"


def _members(member: str, each_key: str | None) -> list[str]:
    """A member expression -> identities (broker, fn:<name>, ...) or literal principals."""
    member = str(member)
    named = re.fullmatch(r"\$\{local\.(broker|scheduler|builder|deployer|review)_member\}", member)
    if named:
        return [named.group(1)]
    match = re.fullmatch(r'\$\{local\.fn_member\["([a-z_]+)"\]\}', member)
    if match:
        return [f"fn:{match.group(1)}"]
    if member == "${local.fn_member[each.key]}":
        return [f"fn:{each_key}"]
    if "${" not in member:
        return [member]
    raise ValueError(f"cannot resolve the member {member!r}")


def _grants(rtype: str):
    """(identity, role, scope body, condition, each_key) of every grant of one IAM resource type."""
    for _, name, body, _ in terraform().resources(rtype):
        keys = _each_values(attr(body, "for_each")) if attr(body, "for_each") else [None]
        for key in keys:
            role = attr(body, "role")
            if role == "${each.value}":
                role = key
            cond = attr(body, "condition")
            for identity in _members(attr(body, "member"), key):
                yield identity, role, body, attr(cond, "expression") if isinstance(cond, dict) else None, key


def invokers(function: str, project: str) -> set[str]:
    """Emails that hold roles/run.invoker on one function."""
    out = set()
    for identity, role, body, _, key in _grants("google_cloud_run_v2_service_iam_member"):
        target = str(attr(body, "name"))
        named = re.search(r'fn\["([a-z_]+)"\]', target)
        fn = named.group(1) if named else (key if "fn[each.key]" in target else None)
        if role == "roles/run.invoker" and fn == function:
            out.add(identity if identity.startswith(("allUsers", "group:", "user:")) else account_email(identity, project))
    return out


def custom_role_permissions(reference: str) -> set[str]:
    match = re.fullmatch(r"\$\{google_project_iam_custom_role\.([a-z_]+)\.name\}", reference)
    if not match:
        raise ValueError(f"unknown role {reference!r}")
    return set(attr(terraform().resource("google_project_iam_custom_role", match.group(1)), "permissions"))


@dataclass(frozen=True)
class BucketGrant:
    permissions: frozenset[str]
    condition: str | None  # CEL text with bucket names filled in


def bucket_grants(identity: str, buckets: dict[str, str]) -> dict[str, list[BucketGrant]]:
    """{real bucket name: [grants]} for one identity; buckets maps infra's bucket resource name
    (recordings, config, sources, access_logs) to the bucket the test uses."""
    out: dict[str, list[BucketGrant]] = {}
    for who, role, body, condition, _ in _grants("google_storage_bucket_iam_member"):
        if who != identity:
            continue
        match = re.fullmatch(r"\$\{google_storage_bucket\.([a-z_]+)\.name\}", str(attr(body, "bucket")))
        if not match:
            raise ValueError(f"cannot read the bucket of a grant: {attr(body, 'bucket')!r}")
        if match.group(1) not in buckets:
            continue
        permissions = PREDEFINED.get(role) or custom_role_permissions(role)
        out.setdefault(buckets[match.group(1)], []).append(
            BucketGrant(frozenset(permissions), _fill(condition, buckets) if condition else None))
    return out


def _fill(condition: str, buckets: dict[str, str]) -> str:
    """Resolve the locals and bucket names a condition refers to, as Terraform would."""
    text = condition
    for _ in range(5):
        for name in re.findall(r"\$\{local\.([a-z_]+)\}", text):
            text = text.replace(f"${{local.{name}}}", str(terraform().local(name)))
        for logical, real in buckets.items():
            text = text.replace(f"${{google_storage_bucket.{logical}.name}}", real)
    if "${" in text:
        raise ValueError(f"cannot resolve the condition {condition!r}: {text!r}")
    return text.replace('\\"', '"')
