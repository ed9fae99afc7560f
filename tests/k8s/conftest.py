"""Fixtures for the Kubernetes tests: the stand-in API server, targets pointing at it, and a
kubeconfig written by `jitgate kubeconfig` (exec credential plugin against the dev issuer)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.k8s.apiserver import StandIn

HELD_TOKEN = "standin-held-token-0123456789"

K8S_TARGETS = """
  gke-test:
    kind: kubernetes
    address: {address}
    credential: file:{token_file}
    ca_certificate: {ca}
    namespaces: [default, team, prod]
    protected_namespaces: [prod]
    allow:
      groups: [sre]
    guardrails:
      privilege: deny
    approvals:
      approver_groups: [sre-leads]
      wait: 30s
"""


@dataclass
class K8s:
    standin: StandIn
    kubeconfig: Path
    env: dict
    work: Path
    stack: object

    def kubectl(self, *args: str, kubeconfig: Path | None = None, input: str | None = None, timeout: float = 60,
                check: bool = False) -> subprocess.CompletedProcess:
        argv = ["kubectl", "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        return subprocess.run(argv, env=self.env, input=input, capture_output=True, text=True, timeout=timeout, check=check)

    def jitgate(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "jitgate.cli", "--home", str(self.stack.home), *args],
                              env=self.stack.env, capture_output=True, text=True, timeout=60, check=check)


@pytest.fixture(scope="session")
def k8s(stack, tmp_path_factory) -> K8s:
    if not shutil.which("kubectl"):
        pytest.fail("kubectl is not installed (the machine image ships it; see scripts/install.sh)")
    if "k8s" not in stack.broker_info:
        pytest.fail(f"the broker did not start its Kubernetes listener: {stack.broker_info}")
    work = tmp_path_factory.mktemp("k8s")
    (work / "pod-fs").mkdir()
    standin = StandIn(HELD_TOKEN, work / "pod-fs").start()
    token_file = work / "held-token"
    token_file.write_text(HELD_TOKEN + "\n")
    with open(stack.policy_path, "a") as fh:
        fh.write(K8S_TARGETS.format(address=standin.address, token_file=token_file, ca=standin.cert))
    time.sleep(0.05)
    kubeconfig = work / "kubeconfig"
    subprocess.run([sys.executable, "-m", "jitgate.cli", "--home", str(stack.home), "kubeconfig", "--target", "gke-test",
                    "--dev", "--user", "alice@example.com", "--groups", "sre", "--namespace", "default",
                    "-o", str(kubeconfig)], env=stack.env, check=True, capture_output=True, timeout=60)
    home = work / "home"
    home.mkdir()
    env = dict(stack.env, HOME=str(home), KUBECACHEDIR=str(work / "kube-cache"), TERM="xterm")
    env.pop("KUBECONFIG", None)
    yield K8s(standin, kubeconfig, env, work, stack)
    standin.stop()
