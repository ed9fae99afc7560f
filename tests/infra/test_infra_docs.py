"""docs/deploy.md, followed top to bottom, works: its order, its policies, its key recipes, its examples.

- every secret that a function or the broker reads at `latest` gets a version before the
  apply that creates them (Cloud Run refuses a revision whose secret has no version);
- the policy is uploaded before that apply (brokers refuse to start without one);
- every policy block in the docs passes `jitgate policy check`;
- every key recipe, run as written (with a stand-in `gcloud` that keeps what it is given),
  produces a key that the code that reads it in production loads;
- the connect example names a target the example policy defines.
"""

import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from infra_support import ROOT, attr

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DEPLOY = ROOT / "docs" / "deploy.md"
GENERATED_SECRETS = {"jitgate-grant-signing-key", "jitgate-masking-hmac-key", "jitgate-broker-ssh-host-key"}


def fenced(path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), re.S)


def deploy_commands() -> list[str]:
    """The shell commands of docs/deploy.md in reading order (continuations joined)."""
    commands = []
    for block in fenced(DEPLOY, "bash"):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def _merge(base, fragment):
    if isinstance(base, dict) and isinstance(fragment, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in fragment.items()}}
    return fragment


# What a fragment leaves out ("# ...") for a target the doc's complete policy does not define:
# the fields each kind requires, so that everything the fragment does show is checked.
REQUIRED_BY_KIND = {
    "postgres": {"address": "10.0.0.5:5432", "username": "u", "credential": "env:X", "allow": {"groups": ["g"]}},
    "ssh": {"address": "10.0.0.6:22", "username": "u", "credential": "env:X", "allow": {"groups": ["g"]},
            "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"},
    "kubernetes": {"address": "10.0.0.7:443", "allow": {"groups": ["g"]}},
}


def policy_blocks():
    """(doc, policy text) of every policy in the docs. A fragment (a block with targets: but no
    identity:, showing a few settings) is checked merged into the doc's first complete policy."""
    import yaml

    for path in DOCS:
        blocks = [b for b in fenced(path, "yaml") if re.search(r"^targets:", b, re.M)]
        complete = [b for b in blocks if re.search(r"^identity:", b, re.M)]
        for block in blocks:
            if block in complete:
                yield path, block
                continue
            assert complete, f"{path.name} shows a policy fragment but no complete policy to read it in"
            base, fragment = yaml.safe_load(complete[0]), yaml.safe_load(block)
            for name, target in (fragment.get("targets") or {}).items():
                if name not in base["targets"] and isinstance(target, dict):
                    base["targets"][name] = dict(REQUIRED_BY_KIND.get(target.get("kind"), {}))
            yield path, yaml.safe_dump(_merge(base, fragment))


def first_index(commands, pattern: str) -> int:
    found = [n for n, c in enumerate(commands) if re.search(pattern, c)]
    assert found, f"docs/deploy.md has no command matching {pattern!r}"
    return found[0]


def secrets_read_at_latest(tf) -> set[str]:
    """Secrets the functions (secret env vars, version latest) and the broker (broker_env) read."""
    names = set()
    for spec in tf.local("functions").values():
        names.update((spec.get("secrets") or {}).values())
    for value in tf.local("broker_env").values():
        names.update(re.findall(r'app\["([^"]+)"\]', str(value)))
    return names


def test_secrets_get_a_version_before_the_apply_that_creates_their_readers(tf):
    commands = deploy_commands()
    creating = first_index(commands, r"terraform .*apply .*-var release=")
    needed = secrets_read_at_latest(tf)
    assert {"jitgate-slack-bot-token", "jitgate-grant-signing-key", "jitgate-masking-hmac-key"} <= needed
    for secret in sorted(needed):
        added = first_index(commands, rf"gcloud secrets versions add {re.escape(secret)}\b")
        assert added < creating, (f"docs/deploy.md adds a version of {secret} only after "
                                  f"`{commands[creating]}`, which creates what reads it at latest")


def test_policy_is_uploaded_before_the_brokers_start():
    commands = deploy_commands()
    creating = first_index(commands, r"terraform .*apply .*-var release=")
    uploaded = first_index(commands, r"gcloud storage cp policy\.yaml ")
    checked = first_index(commands, r"jitgate policy check policy\.yaml")
    assert checked < uploaded < creating


def test_apis_are_enabled_in_an_apply_before_the_rest():
    commands = deploy_commands()
    targeted = first_index(commands, r"terraform apply -target=google_project_service\.apis")
    full = first_index(commands, r"^terraform apply\s*$")
    assert targeted < full


@pytest.mark.parametrize("path,block", list(policy_blocks()), ids=lambda v: getattr(v, "name", "policy"))
def test_every_policy_block_passes_policy_check(path, block, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(block)
    proc = subprocess.run([sys.executable, "-m", "jitgate.cli", "policy", "check", str(policy)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, f"a policy in {path.relative_to(ROOT)} fails `jitgate policy check`:\n{proc.stdout}{proc.stderr}"


def test_there_are_policy_blocks_to_check():
    assert {p.name for p, _ in policy_blocks()} >= {"deploy.md", "README.md", "kubernetes.md"}


def test_connect_example_names_a_target_of_the_example_policy():
    import yaml

    targets = set()
    for path, block in policy_blocks():
        if path == DEPLOY:
            targets |= set(yaml.safe_load(block)["targets"])
    names = re.findall(r"\bdbname=([\w.-]+)", DEPLOY.read_text())
    assert names, "docs/deploy.md has no connect example"
    for name in names:
        assert name in targets, f"the connect example's dbname={name} is not a target of the docs' policy {sorted(targets)}"


# ---------------------------------------------------------------- key recipes


def run_recipes(tmp_path) -> dict[str, bytes]:
    """Run every `... | gcloud secrets versions add SECRET --data-file=-` line for the secrets
    jitgate generates itself; a stand-in gcloud on PATH keeps what each one receives."""
    bindir, kept = tmp_path / "bin", tmp_path / "kept"
    bindir.mkdir()
    kept.mkdir()
    standin = bindir / "gcloud"
    standin.write_text('#!/bin/bash\n# gcloud secrets versions add NAME --data-file=-\n'
                       '[ "$1 $2 $3" = "secrets versions add" ] && [ "$5" = "--data-file=-" ] || exit 64\n'
                       f'cat > "{kept}/$4"\n')
    standin.chmod(0o755)
    out = {}
    for command in deploy_commands():
        match = re.search(r"gcloud secrets versions add (\S+) --data-file=-", command)
        if not match or match.group(1) not in GENERATED_SECRETS:
            continue
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, cwd=tmp_path, timeout=60,
                              env={"PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin"})
        assert proc.returncode == 0, f"recipe failed: {command}\n{proc.stderr.decode()}"
        out[match.group(1)] = (kept / match.group(1)).read_bytes()
    return out


class _FileSecrets:
    """Secret Manager as the broker sees it: the payload, with a trailing newline dropped."""

    def __init__(self, values: dict[str, bytes]):
        self.values = values

    def get(self, ref: str) -> bytes:
        return self.values[ref].rstrip(b"\n")


def test_every_generated_secret_has_a_recipe(tmp_path):
    assert set(run_recipes(tmp_path)) == GENERATED_SECRETS


def test_grant_key_recipe_signs_grants_that_verify(tmp_path):
    from jitgate.identity.grants import keys_from_jwks, public_jwks, sign_grant, verify_grant
    from jitgate.identity.oidc import Principal
    from jitgate.keys import LocalSigner

    pem = run_recipes(tmp_path)["jitgate-grant-signing-key"]
    # authorize reads the secret as JITGATE_GRANT_SIGNING_KEY (jitgate/identity/authorize.py).
    signer = LocalSigner.from_pem(pem.decode().encode())
    principal = Principal(subject="s", username="u@example.com", groups=frozenset(), issuer="i", expires_at=2**31)
    token, _ = sign_grant(signer, principal, "orders-db", "digest")
    assert verify_grant(token, keys_from_jwks(public_jwks(signer)), target="orders-db").principal.username == "u@example.com"


def test_masking_key_recipe_is_accepted_and_the_same_on_every_broker(tmp_path):
    from broker.masking import MIN_HMAC_KEY_BYTES, load_hmac_key

    value = run_recipes(tmp_path)["jitgate-masking-hmac-key"]
    ref = "gcp-secret:projects/p/secrets/jitgate-masking-hmac-key/versions/latest"
    backends = SimpleNamespace(secrets=_FileSecrets({ref: value}))
    keys = [load_hmac_key(SimpleNamespace(env={"JITGATE_MASKING_KEY": ref}, keys_dir=tmp_path / f"broker{n}"), backends)
            for n in range(2)]
    assert keys[0] == keys[1] and len(keys[0]) >= MIN_HMAC_KEY_BYTES
    assert not (tmp_path / "broker0").exists(), "a broker with JITGATE_MASKING_KEY must not invent a key of its own"


def test_masking_key_too_short_is_refused(tmp_path):
    from broker.masking import load_hmac_key

    ref = "gcp-secret:short"
    backends = SimpleNamespace(secrets=_FileSecrets({ref: b"abc\n"}))
    with pytest.raises(ValueError, match="at least 32"):
        load_hmac_key(SimpleNamespace(env={"JITGATE_MASKING_KEY": ref}, keys_dir=tmp_path), backends)


def test_ssh_host_key_recipe_loads_as_the_fleet_key(tmp_path):
    from broker.ssh.listener import load_host_key

    value = run_recipes(tmp_path)["jitgate-broker-ssh-host-key"]
    ref = "gcp-secret:projects/p/secrets/jitgate-broker-ssh-host-key/versions/latest"
    backends = SimpleNamespace(secrets=_FileSecrets({ref: value}))
    keys = [load_host_key(SimpleNamespace(env={"JITGATE_SSH_HOST_KEY": ref}, keys_dir=tmp_path / f"b{n}"), backends)
            for n in range(2)]
    assert keys[0].get_algorithm() == "ssh-ed25519"
    assert keys[0].get_fingerprint() == keys[1].get_fingerprint()


def test_ssh_host_key_that_is_not_a_key_is_refused_clearly(tmp_path):
    from broker.ssh.listener import load_host_key

    backends = SimpleNamespace(secrets=_FileSecrets({"gcp-secret:k": b"not a key"}))
    with pytest.raises(ValueError, match=r"JITGATE_SSH_HOST_KEY .* `openssl genpkey"):
        load_host_key(SimpleNamespace(env={"JITGATE_SSH_HOST_KEY": "gcp-secret:k"}, keys_dir=tmp_path), backends)


# ---------------------------------------------------------------- what infra/ passes the broker


def test_broker_gets_the_fleet_secrets_and_calls_authorize_with_an_id_token(tf):
    env = tf.local("broker_env")
    assert env["JITGATE_AUTHORIZE_AUTH"] == "google-id-token"
    assert "service_config[0].uri" in env["JITGATE_AUTHORIZE_URL"]
    assert 'app["jitgate-masking-hmac-key"]' in env["JITGATE_MASKING_KEY"]
    assert 'app["jitgate-broker-ssh-host-key"]' in env["JITGATE_SSH_HOST_KEY"]
    readable = attr(tf.resource("google_secret_manager_secret_iam_member", "broker_app"), "for_each")
    for secret in ("jitgate-masking-hmac-key", "jitgate-broker-ssh-host-key"):
        assert secret in readable


def test_broker_cannot_read_the_grant_signing_key(tf):
    for _, name, body, _ in tf.resources("google_secret_manager_secret_iam_member"):
        if "broker_member" in str(attr(body, "member")):
            assert "jitgate-grant-signing-key" not in str(attr(body, "for_each")) + str(attr(body, "secret_id")), name
