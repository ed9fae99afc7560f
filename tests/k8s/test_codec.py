"""The pure pieces: request classification and policy, the channel codec, credentials, kubeconfig."""
from __future__ import annotations

import json

import pytest

from broker.k8s import channels as ch
from broker.k8s.kubeconfig import build, exec_credential
from broker.k8s.requests import namespace_allowed, parse_request, refusal
from broker.k8s.upstream import CredentialError, parse_credential
from jitgate.policy import Target


def target(**kw) -> Target:
    return Target(kind="kubernetes", address="10.0.0.1:443", allow={"groups": ["sre"]}, **kw)


@pytest.mark.parametrize("method,path,query,expect", [
    ("GET", "/api", {}, ("discovery", None, None, None, None)),
    ("GET", "/apis/apps/v1", {}, ("discovery", None, None, None, None)),
    ("GET", "/api/v1/namespaces/team/pods", {}, ("list", "team", "pods", None, None)),
    ("GET", "/api/v1/namespaces/team/pods", {"watch": "true"}, ("watch", "team", "pods", None, None)),
    ("GET", "/api/v1/namespaces/team/pods/web/log", {}, ("get", "team", "pods", "web", "log")),
    ("GET", "/api/v1/namespaces/team/pods/web/exec", {}, ("connect", "team", "pods", "web", "exec")),
    ("POST", "/api/v1/namespaces/team/pods/web/portforward", {}, ("connect", "team", "pods", "web", "portforward")),
    ("DELETE", "/apis/apps/v1/namespaces/team/deployments/api", {}, ("delete", "team", "deployments", "api", None)),
    ("GET", "/api/v1/namespaces/team", {}, ("get", "team", "namespaces", "team", None)),
    ("GET", "/api/v1/pods", {}, ("list", None, "pods", None, None)),
])
def test_parse_request(method, path, query, expect):
    r = parse_request(method, path, query)
    assert (r.verb, r.namespace, r.resource, r.name, r.subresource) == expect


def test_refusals():
    t = target(namespaces=["team", "batch/worker-*"])
    ok = lambda m, p: refusal("k", t, parse_request(m, p)) is None  # noqa: E731
    assert ok("GET", "/api/v1/namespaces/team/pods")
    assert ok("GET", "/api/v1/nodes")
    assert "secrets" in refusal("k", t, parse_request("GET", "/api/v1/namespaces/team/secrets/x"))
    assert "port-forward" in refusal("k", t, parse_request("POST", "/api/v1/namespaces/team/pods/a/portforward"))
    assert "proxy" in refusal("k", t, parse_request("GET", "/api/v1/namespaces/team/services/a/proxy/x"))
    assert "read-only" in refusal("k", t, parse_request("PATCH", "/apis/apps/v1/namespaces/team/deployments/a"))
    assert "not allowed" in refusal("k", t, parse_request("GET", "/api/v1/namespaces/other/pods"))
    assert "pass -n" in refusal("k", t, parse_request("GET", "/api/v1/pods"))
    assert namespace_allowed(["batch/worker-*"], "batch", "worker-1")
    assert not namespace_allowed(["batch/worker-*"], "batch", "db-0")
    assert namespace_allowed([], "anything", "pod")


def test_channel_codec_and_status():
    assert ch.pick_protocol(["v4.channel.k8s.io", "v5.channel.k8s.io"]) == ch.V5
    assert ch.pick_protocol(["channel.k8s.io"]) is None
    frame = ch.parse(ch.encode(ch.STDOUT, b"hi"))
    assert (frame.channel, frame.payload) == (1, b"hi")
    with pytest.raises(ch.ChannelError):
        ch.parse(b"")
    assert ch.parse_resize(b'{"Width":120,"Height":40}') == (120, 40)
    assert ch.parse_resize(b"nonsense") is None
    assert ch.parse_status(json.dumps(ch.exit_status_object(4)).encode()).exit_code == 4
    assert ch.parse_status(json.dumps(ch.exit_status_object(0)).encode()).exit_code == 0
    failure = ch.parse_status(json.dumps(ch.status_object("nope")).encode())
    assert (failure.status, failure.exit_code, failure.reason) == ("Failure", None, "Forbidden")


def test_credentials():
    assert parse_credential(b"abc.def\n").token == "abc.def"
    kubeconfig = b"""
apiVersion: v1
clusters: [{name: c, cluster: {server: https://x}}]
users: [{name: u, user: {token: from-kubeconfig}}]
contexts: [{name: ctx, context: {cluster: c, user: u}}]
current-context: ctx
"""
    assert parse_credential(kubeconfig).token == "from-kubeconfig"
    with pytest.raises(CredentialError):
        parse_credential(b"two words")


def test_kubeconfig_shapes():
    config = build(target="gke", server="https://127.0.0.1:6443/", ca_pem=b"PEM", exec_argv=["jitgate", "login"])
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443/targets/gke"
    assert config["users"][0]["user"]["exec"]["interactiveMode"] == "Never"
    credential = json.loads(exec_credential("x.eyJleHAiOjE3MDAwMDAwMDB9.y"))
    assert credential["status"] == {"token": "x.eyJleHAiOjE3MDAwMDAwMDB9.y", "expirationTimestamp": "2023-11-14T22:13:20Z"}


def test_a_broken_kubeconfig_credential_error_never_quotes_the_token():
    from broker.k8s.upstream import CredentialError, parse_credential

    with pytest.raises(CredentialError) as err:
        parse_credential(b"apiVersion: v1\nkind: Config\nusers:\n- name: x\n  user: {token: SECRETTOKEN123 : : [\n")
    assert "SECRETTOKEN123" not in str(err.value)


def test_hostile_resize_and_status_frames_do_not_raise():
    from broker.k8s import channels as ch

    assert ch.parse_resize(b'{"Width": 1e400, "Height": 1}') is None
    outcome = ch.parse_status(b'{"status": "Failure", "reason": "NonZeroExitCode", "details": [1]}')
    assert outcome.exit_code is None
    outcome = ch.parse_status(b'{"status": "Failure", "reason": "NonZeroExitCode", '
                              b'"details": {"causes": [{"reason": "ExitCode", "message": "1e400"}]}}')
    assert outcome.exit_code is None
