"""kubectl through the broker: discovery, reads, refusals, exec (pipes and a PTY), recordings, approvals."""
from __future__ import annotations

import subprocess
import time

import pexpect

from jitgate.backends import open_backends
from jitgate.devstack import dev_token
from jitgate.recording.asciicast import read_asciicast
from jitgate.settings import Settings
from tests.approval_helpers import wait_pending
from tests.ssh.helpers import of_type, recording_events

FORBIDDEN = "Error from server (Forbidden)"


def exec_session(k8s, command: list[str], timeout: float = 30.0) -> list[dict]:
    """Events of the newest sealed exec session that ran exactly ``command``."""
    backends = open_backends(Settings.from_env(k8s.stack.env))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = sorted(backends.index.list_sessions(target="gke-test", limit=200), key=lambda r: -r["started_at"])
        for row in rows:
            events = recording_events(k8s.stack, row["session_id"])
            execs = of_type(events, "k8s.exec")
            if execs and execs[0]["command"] == command and of_type(events, "k8s.exit"):
                return events
        time.sleep(0.3)
    raise AssertionError(f"no sealed exec session of {command!r}")


def test_get_pods_uses_the_held_credential(k8s):
    r = k8s.kubectl("get", "pods", "-n", "default", "--as", "admin@example.com")
    assert r.returncode == 0, r.stderr
    assert "web-0" in r.stdout
    upstream = [q for q in k8s.standin.requests if q["path"].startswith("/api/v1/namespaces/default/pods")]
    assert upstream and all(q["authorization"] == f"Bearer {k8s.standin.token}" for q in upstream)
    assert not any(q["impersonate"] for q in k8s.standin.requests), "Impersonate-* headers must never reach the cluster"


def test_exec_with_stdin_is_relayed_and_recorded(k8s):
    r = k8s.kubectl("exec", "-i", "web-0", "--", "cat", input="hello through the broker\nsecond line\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello through the broker\nsecond line\n"
    events = exec_session(k8s, ["cat"])
    start = of_type(events, "k8s.exec")[0]
    assert (start["namespace"], start["pod"], start["container"], start["command"]) == ("default", "web-0", "main", ["cat"])
    assert "".join(e["event"][2] for e in of_type(events, "term.input")) == "hello through the broker\nsecond line\n"
    assert "".join(e["event"][2] for e in of_type(events, "term.output")) == "hello through the broker\nsecond line\n"
    assert of_type(events, "k8s.stream_closed")[0]["stream"] == 0  # v5: stdin EOF reached the pod
    assert of_type(events, "k8s.exit")[0]["exit_status"] == 0
    statement = of_type(events, "statement")[0]
    assert statement["decision"] == "allow" and statement["sql"] == "kubectl exec -i -n default web-0 -c main -- cat"


def test_exit_code_and_stderr(k8s):
    r = k8s.kubectl("exec", "web-0", "--", "sh", "-c", "echo out; echo err >&2; exit 4")
    assert r.returncode == 4
    assert r.stdout == "out\n"
    assert "err" in r.stderr and "command terminated with exit code 4" in r.stderr
    events = exec_session(k8s, ["sh", "-c", "echo out; echo err >&2; exit 4"])
    assert of_type(events, "k8s.exit")[0]["exit_status"] == 4
    streams = {e.get("stream"): e["event"][2] for e in of_type(events, "term.output")}
    assert streams == {"stdout": "out\n", "stderr": "err\n"}
    assert of_type(events, "result")[0]["tag"] == "exit 4"


def test_interactive_shell_in_a_pty_records_and_replays(k8s):
    child = pexpect.spawn("kubectl", ["--kubeconfig", str(k8s.kubeconfig), "exec", "-it", "web-0", "--", "sh"],
                          env=k8s.env, encoding="utf-8", timeout=30, dimensions=(30, 100))
    try:
        child.expect_exact("$ ")
        child.sendline("echo $((6*7)) marker; stty size")
        child.expect_exact("42 marker")
        child.expect_exact("30 100")  # kubectl's resize message reached the pod's terminal
        child.setwinsize(40, 120)
        time.sleep(0.5)
        child.sendline("stty size")
        child.expect_exact("40 120")
        child.sendline("exit 3")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 3
    events = exec_session(k8s, ["sh"])
    start = of_type(events, "term.start")[0]
    assert (start["width"], start["height"]) == (100, 30)
    assert [e["event"][2] for e in of_type(events, "term.resize")] == ["120x40"]
    assert of_type(events, "k8s.exit")[0]["exit_status"] == 3
    session_id = of_type(events, "session.start")[0]["session"]
    replay = k8s.jitgate("replay", session_id)
    assert "42 marker" in replay.stdout and "k8s.exec" in replay.stdout
    cast = read_asciicast(k8s.jitgate("replay", session_id, "--asciicast").stdout)
    assert cast.header["width"] == 100 and "42 marker" in cast.output


def test_refused_namespace_reads_and_exec(k8s):
    r = k8s.kubectl("exec", "-n", "kube-system", "dns-0", "--", "ls")
    assert r.returncode != 0
    assert FORBIDDEN in r.stderr and "namespace 'kube-system' is not allowed" in r.stderr, r.stderr
    r = k8s.kubectl("get", "pods", "-A")
    assert FORBIDDEN in r.stderr and "pass -n with one of: default, team, prod" in r.stderr, r.stderr
    assert not any(q["path"].startswith("/api/v1/namespaces/kube-system") for q in k8s.standin.requests)


def test_secrets_writes_and_port_forward_are_refused(k8s):
    r = k8s.kubectl("get", "secret", "db-password")
    assert FORBIDDEN in r.stderr and "reading secrets is not allowed" in r.stderr, r.stderr
    r = k8s.kubectl("delete", "pod", "web-0", "--wait=false")
    assert FORBIDDEN in r.stderr and "read-only calls" in r.stderr, r.stderr
    r = k8s.kubectl("port-forward", "web-0", "18080:80", timeout=30)
    assert r.returncode != 0 and "port-forward is not allowed" in r.stderr, r.stderr
    assert not any("/secrets" in q["path"] or q["method"] == "DELETE" or "portforward" in q["path"]
                   for q in k8s.standin.requests)


def test_guardrail_refuses_a_privileged_command(k8s):
    r = k8s.kubectl("exec", "web-0", "--", "sudo", "id")
    assert r.returncode != 0
    assert FORBIDDEN in r.stderr and "command refused by policy" in r.stderr and "privilege" in r.stderr, r.stderr
    assert not any(q["path"].endswith("/exec") and "sudo" in q["query"] for q in k8s.standin.requests)


def test_wrong_token(k8s):
    bad = k8s.work / "kubeconfig-bad"
    k8s.jitgate("kubeconfig", "--target", "gke-test", "--token", "not-a-token", "-o", str(bad))
    r = k8s.kubectl("get", "pods", kubeconfig=bad)
    assert r.returncode != 0 and "You must be logged in to the server" in r.stderr, r.stderr
    r = k8s.kubectl("exec", "web-0", "--", "true", kubeconfig=bad)
    assert "You must be logged in to the server" in r.stderr, r.stderr


def test_exec_in_protected_namespace_waits_for_approval(k8s):
    proc = subprocess.Popen(["kubectl", "--kubeconfig", str(k8s.kubeconfig), "exec", "-n", "prod", "db-0", "--",
                             "echo", "ran-after-approval"], env=k8s.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        request = wait_pending(open_backends(Settings.from_env(k8s.stack.env)), "gke-test",
                                   lambda r: r.get("requester") == "alice@example.com", what="the exec")
        assert "kubectl exec -n prod db-0 -c main -- echo ran-after-approval" == request["statement"]
        assert "protected_namespace" in request["classes"]
        approver = dev_token(k8s.stack.issuer.issuer, "dana@example.com", ["sre-leads"])
        k8s.jitgate("approvals", "approve", request["approval_id"], "--token", approver)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out == "ran-after-approval\n"
    assert "needs approval" in err and "waiting for an approver" in err


def test_exec_in_protected_namespace_denied(k8s):
    proc = subprocess.Popen(["kubectl", "--kubeconfig", str(k8s.kubeconfig), "exec", "-n", "prod", "db-0", "--",
                             "echo", "never-runs"], env=k8s.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        request = wait_pending(open_backends(Settings.from_env(k8s.stack.env)), "gke-test",
                                   lambda r: r.get("requester") == "alice@example.com", what="the exec")
        approver = dev_token(k8s.stack.issuer.issuer, "dana@example.com", ["sre-leads"])
        k8s.jitgate("approvals", "deny", request["approval_id"], "--reason", "not during the freeze", "--token", approver)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1 and out == ""
    assert "error: jitgate: approval request" in err and "not during the freeze" in err, err
    assert not any(q["path"].endswith("/exec") and "never-runs" in q["query"] for q in k8s.standin.requests)


def test_attach_is_relayed_as_an_interactive_shell(k8s):
    r = k8s.kubectl("attach", "-i", "web-0", input="echo attached-$((1+1))\nexit 0\n")
    assert r.returncode == 0, r.stderr
    assert "attached-2" in r.stdout
    events = exec_session(k8s, [])
    assert of_type(events, "k8s.exec")[0]["subresource"] == "attach"
    assert of_type(events, "statement")[0]["classes"] == ["shell"]


def test_spdy_exec_is_refused_with_a_clear_message(k8s):
    env = dict(k8s.env, KUBECTL_REMOTE_COMMAND_WEBSOCKETS="false")
    r = subprocess.run(["kubectl", "--kubeconfig", str(k8s.kubeconfig), "exec", "web-0", "--", "true"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert FORBIDDEN in r.stderr and "over WebSocket" in r.stderr, r.stderr
