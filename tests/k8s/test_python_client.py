"""The official kubernetes Python client through the broker (what an agent would use)."""
from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream


@pytest.fixture
def core(k8s, token):
    config = client.Configuration()
    config.host = "https://" + k8s.stack.broker_info["k8s"] + "/targets/gke-test"
    config.ssl_ca_cert = str(k8s.stack.home / "tls" / "broker-dev.crt")
    config.api_key = {"authorization": "Bearer " + token("alice@example.com", ("sre",))}
    with client.ApiClient(config) as api:
        yield client.CoreV1Api(api)


def test_list_and_exec_with_stdin(core):
    assert [p.metadata.name for p in core.list_namespaced_pod("team").items] == ["api-0"]
    resp = stream(core.connect_get_namespaced_pod_exec, "api-0", "team", command=["sh", "-c", "tr a-z A-Z; exit 5"],
                  stdin=True, stdout=True, stderr=True, tty=False, _preload_content=False)
    resp.write_stdin("shout\n")
    resp.close_channel(0)  # v5: stdin EOF
    resp.run_forever(timeout=20)
    assert resp.read_stdout() == "SHOUT\n"
    assert resp.returncode == 5
    resp.close()


def test_refused_exec_is_a_403_status(core):
    with pytest.raises(ApiException) as err:
        stream(core.connect_get_namespaced_pod_exec, "dns-0", "kube-system", command=["ls"],
               stdin=False, stdout=True, stderr=True, tty=False)
    assert "403" in str(err.value)
    with pytest.raises(ApiException) as err:
        core.read_namespaced_secret("db-password", "default")
    assert err.value.status == 403 and "reading secrets is not allowed" in err.value.body


def test_ambiguous_paths_are_refused(k8s, token):
    import http.client
    import ssl

    host, port = k8s.stack.broker_info["k8s"].rsplit(":", 1)
    tls = ssl.create_default_context(cafile=str(k8s.stack.home / "tls" / "broker-dev.crt"))
    for path in ("/api/v1/namespaces/team/pods/a/..%2F..%2Fsecrets/x", "/api/v1/namespaces/team/pods/../../secrets"):
        conn = http.client.HTTPSConnection(host, int(port), context=tls, timeout=20)
        conn.request("GET", "/targets/gke-test" + path, headers={"Authorization": "Bearer " + token("alice@example.com", ("sre",))})
        response = conn.getresponse()
        assert response.status == 400, path
        conn.close()
