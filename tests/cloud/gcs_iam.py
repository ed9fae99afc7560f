"""A permission-enforcing proxy in front of fake-gcs-server: Cloud Storage IAM, offline.

fake-gcs-server lets anyone do anything. This proxy acts as one service account: each JSON
API request is mapped to the IAM permission(s) Cloud Storage checks for it and to the
resource it checks them on, and is refused with 403 unless a grant of that account (from
infra/, see tests/cloud/iam_model.py) holds the permission with its condition true. A process
pointed at the proxy (STORAGE_EMULATOR_HOST) runs with exactly those permissions.

Requests it does not know how to judge are refused (fail closed), naming the request.
"""
from __future__ import annotations

import http.client
import json
import re
from urllib.parse import parse_qs, quote, unquote, urlsplit

from tests.cloud.http_standin import Handler, Server
from tests.cloud.iam_model import BucketGrant


# ---------------------------------------------------------------- IAM conditions


def _literal(text: str) -> str:
    match = re.fullmatch(r'\s*"([^"]*)"\s*', text)
    if not match:
        raise ValueError(f"not a string literal: {text!r}")
    return match.group(1)


def _extract(template: str, name: str) -> str:
    """CEL resource.name.extract(template): the part of name in the template's {placeholder}."""
    match = re.fullmatch(r"([^{}]*)\{\w+\}([^{}]*)", template)
    if not match:
        raise ValueError(f"unsupported extract template {template!r}")
    prefix, suffix = match.groups()
    found = re.match(re.escape(prefix) + r"(.+?)" + re.escape(suffix), name) if suffix else (
        re.match(re.escape(prefix) + r"(.+)", name))
    return found.group(1) if found else ""


def condition_holds(condition: str | None, resource_name: str, resource_type: str) -> bool:
    """The subset of CEL that IAM conditions on buckets use: || of && of
    resource.name == "x", resource.type == "x", resource.name.startsWith("x"),
    resource.name.extract("t") != "". Anything else raises (never silently true)."""
    if condition is None:
        return True
    for disjunct in condition.split("||"):
        if all(_atom(atom.strip(), resource_name, resource_type) for atom in disjunct.split("&&")):
            return True
    return False


def _atom(atom: str, name: str, rtype: str) -> bool:
    if match := re.fullmatch(r'resource\.name\s*==\s*(".*")', atom):
        return name == _literal(match.group(1))
    if match := re.fullmatch(r'resource\.type\s*==\s*(".*")', atom):
        return rtype == _literal(match.group(1))
    if match := re.fullmatch(r'resource\.name\.startsWith\((".*")\)', atom):
        return name.startswith(_literal(match.group(1)))
    if match := re.fullmatch(r'resource\.name\.extract\((".*")\)\s*!=\s*""', atom):
        return _extract(_literal(match.group(1)), name) != ""
    raise ValueError(f"IAM condition atom not modelled: {atom!r}")


# ---------------------------------------------------------------- requests -> permissions


def bucket_resource(bucket: str) -> tuple[str, str]:
    return f"projects/_/buckets/{bucket}", "storage.googleapis.com/Bucket"


def object_resource(bucket: str, name: str) -> tuple[str, str]:
    return f"projects/_/buckets/{bucket}/objects/{name}", "storage.googleapis.com/Object"


class GcsIamProxy:
    def __init__(self, backend_url: str, grants: dict[str, list[BucketGrant]], *, identity: str):
        self.backend = urlsplit(backend_url if "://" in backend_url else "http://" + backend_url)
        self.grants = grants
        self.identity = identity
        self.denied: list[str] = []
        self.allowed: list[str] = []
        self._uploads: set[str] = set()
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    def allows(self, permission: str, bucket: str, resource: tuple[str, str]) -> bool:
        return any(permission in g.permissions and condition_holds(g.condition, *resource)
                   for g in self.grants.get(bucket, []))

    def _exists(self, bucket: str, name: str) -> bool:
        conn = http.client.HTTPConnection(self.backend.hostname, self.backend.port, timeout=30)
        conn.request("GET", f"/storage/v1/b/{bucket}/o/{quote(name, safe='')}")
        status = conn.getresponse().status
        conn.close()
        return status == 200

    def required(self, method: str, path: str, query: dict, body: bytes) -> list[tuple[str, str, tuple[str, str]]]:
        """[(permission, bucket, resource)] Cloud Storage checks for one request; [] = needs none.
        Raises LookupError for a request this model does not cover."""
        q = {k: v[0] for k, v in query.items()}
        if method == "PUT" and q.get("upload_id") in self._uploads:
            return []  # the rest of a resumable upload whose start was authorized
        if m := re.fullmatch(r"/upload/storage/v1/b/([^/]+)/o", path):
            bucket = m.group(1)
            name = q.get("name") or self._name_from_upload_body(body)
            needs = [("storage.objects.create", bucket, object_resource(bucket, name))]
            if q.get("ifGenerationMatch") != "0" and self._exists(bucket, name):
                needs.append(("storage.objects.delete", bucket, object_resource(bucket, name)))  # an overwrite
            return needs
        if m := re.fullmatch(r"/(?:download/)?storage/v1/b/([^/]+)/o/(.+)/compose", path):
            bucket, dest = m.group(1), unquote(m.group(2))
            sources = [s["name"] for s in json.loads(body or b"{}").get("sourceObjects", [])]
            needs = [("storage.objects.create", bucket, object_resource(bucket, dest))]
            needs += [("storage.objects.get", bucket, object_resource(bucket, s)) for s in sources]
            if q.get("ifGenerationMatch") != "0" and self._exists(bucket, dest):
                needs.append(("storage.objects.delete", bucket, object_resource(bucket, dest)))
            return needs
        if m := re.fullmatch(r"/(download/)?storage/v1/b/([^/]+)/o/(.+)", path):
            bucket, name = m.group(2), unquote(m.group(3))
            permission = {"GET": "storage.objects.get", "DELETE": "storage.objects.delete",
                          "PATCH": "storage.objects.update", "PUT": "storage.objects.update"}.get(method)
            if permission and not (m.group(1) and method != "GET"):
                return [(permission, bucket, object_resource(bucket, name))]
        if m := re.fullmatch(r"/storage/v1/b/([^/]+)/o", path):
            if method == "GET":
                return [("storage.objects.list", m.group(1), bucket_resource(m.group(1)))]
        if m := re.fullmatch(r"/storage/v1/b/([^/]+)", path):
            if method == "GET":
                return [("storage.buckets.get", m.group(1), bucket_resource(m.group(1)))]
        raise LookupError(f"{method} {path} is not modelled by the IAM proxy")

    @staticmethod
    def _name_from_upload_body(body: bytes) -> str:
        """The object name of a multipart or resumable upload is in its JSON metadata."""
        match = re.search(rb'\{[^{}]*"name"\s*:\s*"((?:[^"\\]|\\.)*)"', body[:65536])
        if not match:
            raise LookupError("an upload without an object name")
        return json.loads(b'"' + match.group(1) + b'"')

    def start(self) -> "GcsIamProxy":
        outer = self

        class Proxy(Handler):
            def handle_request(self):
                body = self.body()
                url = urlsplit(self.path)
                try:
                    needs = outer.required(self.command, url.path, parse_qs(url.query), body)
                    missing = [f"{p} on {r[0]}" for p, b, r in needs if not outer.allows(p, b, r)]
                    reason = f"{outer.identity} does not have {', '.join(missing)}" if missing else ""
                except LookupError as exc:
                    reason = str(exc)
                if reason:
                    outer.denied.append(f"{self.command} {url.path}: {reason}")
                    error = {"error": {"code": 403, "message": reason, "errors": [{"reason": "forbidden", "message": reason}]}}
                    return self.reply(403, json.dumps(error).encode(), [("Content-Type", "application/json")])
                outer.allowed.append(f"{self.command} {url.path}")
                status, headers, data = self.forward(outer.backend, body)
                self.reply(status, *outer.through_proxy(data, headers))

        self._server = Server(Proxy)
        return self

    def through_proxy(self, data: bytes, headers: list[tuple[str, str]]) -> tuple[bytes, list[tuple[str, str]]]:
        """Links in the answers (mediaLink, a resumable upload's Location) must lead back through the proxy."""
        backend, proxy = f"{self.backend.hostname}:{self.backend.port}", self.url.removeprefix("http://")
        out = []
        for k, v in headers:
            if k.lower() == "location":
                v = v.replace(backend, proxy)
                upload_id = parse_qs(urlsplit(v).query).get("upload_id", [None])[0]
                if upload_id:
                    self._uploads.add(upload_id)
            out.append((k, v))
        return data.replace(backend.encode(), proxy.encode()), out

    def stop(self) -> None:
        if self._server:
            self._server.stop()
