"""Which Kubernetes API call a request is (in the manner of kube-apiserver's RequestInfo), and
whether a target's policy lets it through. Pure functions: paths in, decisions out.

The broker is not an authorizer for the whole API. It passes on what a reader
needs (discovery, get/list/watch of ordinary resources, logs) in the namespaces
the target allows, relays exec/attach through the guardrails, and refuses the
rest with a Status kubectl prints: every write, secrets, port-forward and the
proxy subresources (they would open a tunnel the recording cannot see).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

DISCOVERY_PREFIXES = ("/version", "/openapi/", "/healthz", "/readyz", "/livez")
# Namespaced resources a cluster-wide list would leak from namespaces the target does not allow.
# Custom resources are not known here; they pass when the path names a namespace the target allows.
NAMESPACED = frozenset({
    "pods", "services", "endpoints", "endpointslices", "configmaps", "events", "serviceaccounts",
    "persistentvolumeclaims", "replicationcontrollers", "limitranges", "resourcequotas", "podtemplates",
    "deployments", "replicasets", "statefulsets", "daemonsets", "controllerrevisions", "jobs", "cronjobs",
    "ingresses", "networkpolicies", "roles", "rolebindings", "poddisruptionbudgets",
    "horizontalpodautoscalers", "leases", "secrets",
})
REFUSED_RESOURCES = {
    "secrets": "reading secrets is not allowed through jitgate",
}
REFUSED_SUBRESOURCES = {
    "portforward": "port-forward is not allowed through jitgate (the tunnel could not be recorded)",
    "proxy": "the API server proxy is not allowed through jitgate",
    "token": "minting service account tokens is not allowed through jitgate",
    "ephemeralcontainers": "adding debug containers is not allowed through jitgate",
}
STREAMING_SUBRESOURCES = ("exec", "attach")
_METHOD_VERB = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str
    verb: str  # get | list | watch | create | update | patch | delete | connect | discovery
    group: str = ""
    version: str = ""
    namespace: str | None = None
    resource: str | None = None
    name: str | None = None
    subresource: str | None = None

    @property
    def is_exec(self) -> bool:
        return self.resource == "pods" and self.subresource in STREAMING_SUBRESOURCES and self.name is not None

    def describe(self) -> str:
        what = self.resource or self.path
        if self.subresource:
            what += "/" + self.subresource
        where = f" in namespace {self.namespace!r}" if self.namespace else ""
        return f"{self.verb} {what}{' ' + repr(self.name) if self.name else ''}{where}"


def parse_request(method: str, path: str, query: dict | None = None) -> ApiRequest:
    """``GET /api/v1/namespaces/ns/pods/web/log`` -> verb get, resource pods, name web, subresource log."""
    method = method.upper()
    query = query or {}
    parts = [p for p in path.split("/") if p]
    if not parts or path.startswith(DISCOVERY_PREFIXES) or parts[0] not in ("api", "apis"):
        return ApiRequest(method, path, "discovery" if method == "GET" else _METHOD_VERB.get(method, method.lower()))
    if parts[0] == "api":
        group, rest = "", parts[1:]
        version, rest = (rest[0], rest[1:]) if rest else ("", [])
    else:
        group = parts[1] if len(parts) > 1 else ""
        version = parts[2] if len(parts) > 2 else ""
        rest = parts[3:]
    if not rest:  # /api, /api/v1, /apis, /apis/apps, /apis/apps/v1
        return ApiRequest(method, path, "discovery" if method == "GET" else _METHOD_VERB.get(method, method.lower()),
                          group, version)
    watch_path = rest[0] == "watch"
    if watch_path:
        rest = rest[1:]
    namespace = None
    if rest and rest[0] == "namespaces" and len(rest) > 2 and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] if rest else None
    name = rest[1] if len(rest) > 1 else None
    subresource = "/".join(rest[2:]) or None
    if resource == "namespaces" and name:
        namespace = name  # a namespace object is read in its own namespace, as the apiserver sees it
    if subresource in STREAMING_SUBRESOURCES or (subresource or "").startswith(("portforward", "proxy")):
        verb = "connect"
    elif method == "GET":
        watching = watch_path or str(query.get("watch", "")).lower() in ("1", "true")
        verb = "watch" if watching else ("get" if name else "list")
    else:
        verb = _METHOD_VERB.get(method, method.lower())
    return ApiRequest(method, path, verb, group, version, namespace, resource, name, subresource)


def namespace_allowed(patterns: list[str], namespace: str, pod: str | None = None) -> bool:
    """Target.namespaces entries are ``NS`` or ``NS/POD`` with shell wildcards (``team-*``, ``prod/web-*``).
    An empty list allows every namespace."""
    if not patterns:
        return True
    for entry in patterns:
        ns_pattern, _, pod_pattern = entry.partition("/")
        if not fnmatch.fnmatchcase(namespace, ns_pattern):
            continue
        if not pod_pattern or pod is None or fnmatch.fnmatchcase(pod, pod_pattern):
            return True
    return False


def is_protected(patterns: list[str], namespace: str) -> bool:
    return any(fnmatch.fnmatchcase(namespace, p) for p in patterns)


def refusal(target_name: str, target, request: ApiRequest) -> str | None:
    """Why policy refuses a non-streaming call (None: it passes). Exec and attach are decided
    by the session pipeline instead (broker/k8s/server.py)."""
    prefix = f"jitgate: {request.describe()} on target {target_name!r}: "
    if request.verb == "discovery":
        return None
    if request.resource in REFUSED_RESOURCES:
        return prefix + REFUSED_RESOURCES[request.resource]
    sub = (request.subresource or "").split("/")[0]
    if sub in REFUSED_SUBRESOURCES:
        return prefix + REFUSED_SUBRESOURCES[sub]
    if request.verb not in ("get", "list", "watch") and not request.is_exec:
        return prefix + "the gateway relays read-only calls, exec and attach; changes go through your deployment pipeline"
    namespaces = list(target.namespaces)
    if request.namespace is not None and not request.is_exec:
        if not namespace_allowed(namespaces, request.namespace):
            return prefix + f"namespace {request.namespace!r} is not allowed (allowed: {', '.join(namespaces)})"
    elif request.namespace is None and namespaces and request.resource in NAMESPACED:
        return prefix + f"listing across all namespaces is not allowed; pass -n with one of: {', '.join(namespaces)}"
    return None
