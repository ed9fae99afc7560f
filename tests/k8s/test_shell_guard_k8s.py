"""The shell guardrails end to end through `kubectl exec`, against a throwaway unprivileged account.

The stand-in API server runs exec'd commands as ``jitgate-victim`` in its home directory.
Issue 13's bypasses (and a sample of the corpus) are sent through the broker to a target
where agents get the allow-list; each must be refused before it reaches the API server,
read-only commands must still run, and the account's canary files must be intact.
"""
from __future__ import annotations

import hashlib
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.guardrails.shell_corpus import ISSUE_13, OWN
from tests.k8s.apiserver import StandIn

VICTIM = "jitgate-victim"
TOKEN = "standin-guard-token-0123456789"
GUARD_TARGET = """
  gke-guard:
    kind: kubernetes
    address: {address}
    credential: file:{token_file}
    ca_certificate: {ca}
    namespaces: [default]
    allow:
      groups: [agents]
    commands: {{mode: allowlist, approve_others: false}}
    shells: deny
    guardrails: {{destructive: deny, privilege: deny, service_control: deny, package_change: deny, system_write: deny}}
"""
# Exec argv forms (kubectl exec POD -- ARGV): every issue-13 command as `sh -c`, some as a bare argv.
ATTACKS = ([["sh", "-c", c] for c, _, _ in ISSUE_13 if c]
           + [["sh", "-c", c] for c, agent, _ in OWN if agent != "A" and "\0" not in c][::12]
           + [["time", "-p", "sudo", "rm", "-rf", "/"], ["find", "/", "-exec", "rm", "{}", "+"], ["xargs", "rm"],
              ["rm", "-rf", "{/,}"], ["sh"], ["python3", "-"], ["busybox", "rm", "-rf", "/"],
              ["tar", "-xf", "-", "-C", "/etc"], ["sort", "-o", "/etc/passwd", "/etc/passwd"]])


@pytest.fixture(scope="module")
def guard(k8s, tmp_path_factory):
    try:
        pwd.getpwnam(VICTIM)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", VICTIM], check=True)
    account = pwd.getpwnam(VICTIM)
    home = Path(account.pw_dir)
    files = {home / "canary" / "keep.txt": b"line one\nline two\n", home / "top.txt": b"top\n"}
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chown(path, account.pw_uid, account.pw_gid)
        os.chown(path.parent, account.pw_uid, account.pw_gid)
    work = tmp_path_factory.mktemp("k8s-guard")
    standin = StandIn(TOKEN, home, run_as=VICTIM).start()
    token_file = work / "token"
    token_file.write_text(TOKEN + "\n")
    with open(k8s.stack.policy_path, "a") as fh:
        fh.write(GUARD_TARGET.format(address=standin.address, token_file=token_file, ca=standin.cert))
    time.sleep(0.05)
    kubeconfig = work / "kubeconfig"
    subprocess.run([sys.executable, "-m", "jitgate.cli", "--home", str(k8s.stack.home), "kubeconfig", "--target",
                    "gke-guard", "--dev", "--user", "agent@example.com", "--groups", "agents", "--namespace", "default",
                    "-o", str(kubeconfig)], env=k8s.stack.env, check=True, capture_output=True, timeout=60)
    yield kubeconfig, standin, {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
    standin.stop()


def test_attacks_are_refused_and_the_account_is_intact(k8s, guard):
    kubeconfig, standin, digests = guard
    for argv in ATTACKS:
        r = k8s.kubectl("exec", "-i", "web-0", "--", *argv, kubeconfig=kubeconfig, input="")
        assert r.returncode != 0, (argv, r.stdout, r.stderr)
        assert "Forbidden" in r.stderr and "jitgate:" in r.stderr, (argv, r.stderr)
    assert not any(q["path"].endswith("/exec") for q in standin.requests), "an attack reached the API server"
    ran = k8s.kubectl("exec", "web-0", "--", "ls", "-la", "canary", kubeconfig=kubeconfig)
    assert ran.returncode == 0 and "keep.txt" in ran.stdout, ran.stderr
    ran = k8s.kubectl("exec", "web-0", "--", "sh", "-c", "cat canary/keep.txt | wc -l", kubeconfig=kubeconfig)
    assert ran.returncode == 0 and ran.stdout.strip() == "2", ran.stderr
    who = k8s.kubectl("exec", "web-0", "--", "id", "-un", kubeconfig=kubeconfig)
    assert who.stdout.strip() == VICTIM  # the stand-in really runs commands as the throwaway account
    for path, digest in digests.items():
        assert path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == digest, path
    assert len(ATTACKS) >= 40
