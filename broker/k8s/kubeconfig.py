"""Kubeconfigs for the broker's Kubernetes endpoint (``jitgate kubeconfig``) and the exec credential
kubectl asks for (``jitgate login --dev --exec-credential``).

The kubeconfig names one target through the server URL path
(``https://<broker>:<port>/targets/<target>``) and trusts the broker's certificate
(the dev stack's self-signed one is embedded as certificate-authority-data). The user
is either an exec credential plugin that asks the dev issuer for a fresh token on each
kubectl call (the local stack), or a static bearer token (an ID token from the
company IdP; it expires with the token, typically in an hour).
"""
from __future__ import annotations

import base64
import datetime
import json
import sys
from pathlib import Path

import yaml

EXEC_API = "client.authentication.k8s.io/v1"


def build(*, target: str, server: str, ca_pem: bytes | None = None, token: str | None = None,
          exec_argv: list[str] | None = None, namespace: str | None = None) -> dict:
    name = f"jitgate-{target}"
    cluster: dict = {"server": server.rstrip("/") + f"/targets/{target}"}
    if ca_pem:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    if token:
        user: dict = {"token": token}
    elif exec_argv:
        user = {"exec": {"apiVersion": EXEC_API, "command": exec_argv[0], "args": exec_argv[1:],
                         "interactiveMode": "Never", "provideClusterInfo": False}}
    else:
        raise ValueError("a kubeconfig needs a token or an exec credential command")
    context: dict = {"cluster": name, "user": name}
    if namespace:
        context["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": name, "cluster": cluster}],
            "users": [{"name": name, "user": user}],
            "contexts": [{"name": name, "context": context}],
            "current-context": name}


def token_expiry(token: str) -> datetime.datetime | None:
    """The ``exp`` claim of a JWT, unverified (only to tell kubectl when to ask again)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return datetime.datetime.fromtimestamp(int(claims["exp"]), datetime.timezone.utc)
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def exec_credential(token: str) -> str:
    status: dict = {"token": token}
    expiry = token_expiry(token)
    if expiry is not None:
        status["expirationTimestamp"] = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps({"apiVersion": EXEC_API, "kind": "ExecCredential", "status": status})


def cmd_kubeconfig(args, home: Path) -> int:
    """``jitgate kubeconfig --target NAME``: write (or print) a kubeconfig for the broker's k8s endpoint."""
    server, ca_pem = args.server, None
    state = home / "stack.json"
    if not server:
        if not state.exists() or "k8s" not in json.loads(state.read_text()).get("broker", {}):
            print("jitgate kubeconfig: no local stack with a Kubernetes listener found; pass --server https://HOST:PORT",
                  file=sys.stderr)
            return 1
        server = "https://" + json.loads(state.read_text())["broker"]["k8s"]
    if args.ca:
        ca_pem = Path(args.ca).read_bytes()
    elif (home / "tls" / "broker-dev.crt").exists() and not args.server:
        ca_pem = (home / "tls" / "broker-dev.crt").read_bytes()
    exec_argv = None
    if not args.token:
        if not args.dev:
            print("jitgate kubeconfig: pass --token \"$(gcloud auth print-identity-token --audiences=AUDIENCE)\" "
                  "(an ID token of your IdP), or --dev for the local stack's dev issuer", file=sys.stderr)
            return 2
        exec_argv = [sys.executable, "-m", "jitgate.cli", "--home", str(home), "login", "--dev", "--exec-credential",
                     "--user", args.user] + (["--groups", args.groups] if args.groups else [])
    config = build(target=args.target, server=server, ca_pem=ca_pem, token=args.token, exec_argv=exec_argv,
                   namespace=args.namespace)
    text = yaml.safe_dump(config, sort_keys=False)
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        path = Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o600)
        print(f"wrote {path}; use: kubectl --kubeconfig {path} get pods", file=sys.stderr)
    return 0
