"""Shared fixtures: one real local stack per test run (PostgreSQL, oidc-provider, functions, broker)."""
from __future__ import annotations

import os
import re
import time

import pytest

from tests.rowcore_build import ensure_rowcore

# The masking tests run against both row cores, and the broker the fixtures start runs the compiled
# one: built (or rebuilt when older than its source) before anything here imports it.
ensure_rowcore()

from jitgate.devstack import Stack, dev_token, start_stack  # noqa: E402 - after the build above

os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "jitgate-test")


# gcp_emulators: the Pub/Sub, Firestore and Cloud Storage emulators, started once per session when needed.
pytest_plugins = ["tests.gcp.fixtures", "tests.review.fixtures"]

# Extra targets the tests need beside the demo target (appended to the generated demo policy).
TEST_TARGETS = """
  demo-md5:
    kind: postgres
    address: 127.0.0.1:{pg_port}
    database: demo
    username: jitgate_md5
    credential: env:JITGATE_DEMO_MD5_PASSWORD
    allow:
      groups: [sre]
  demo-badcred:
    kind: postgres
    address: 127.0.0.1:{pg_port}
    database: demo
    username: jitgate_broker
    credential: env:JITGATE_TEST_WRONG_PASSWORD
    allow:
      groups: [sre]
  demo-private:
    kind: postgres
    address: 127.0.0.1:{pg_port}
    database: demo
    username: jitgate_broker
    credential: env:JITGATE_DEMO_DB_PASSWORD
    allow:
      groups: [dba]
"""


@pytest.fixture(scope="session", params=["embedded", "gcp"])
def stack(request, tmp_path_factory) -> Stack:
    """The whole stack, once on the embedded backends, then once on the GCP emulators."""
    home = tmp_path_factory.mktemp(f"stack-{request.param}")
    kwargs, cloud = {}, None
    if request.param == "gcp":
        # As deployed: the broker and finalize use Cloud Storage with exactly infra/'s grants, and the
        # broker reaches authorize through Cloud Run's invoker check with its metadata ID token.
        from tests.cloud.standins import CloudStandins

        emulator_env = request.getfixturevalue("gcp_emulators").env("jitgate-stack")
        cloud = CloudStandins(emulator_env, "jitgate-stack").start()
        kwargs = {"backends": "gcp", "emulator_env": emulator_env, "process_env": cloud.process_env,
                  "authorize_front": cloud.front_authorize}
    try:
        s = start_stack(home, extra_env={"JITGATE_TEST_WRONG_PASSWORD": "not-the-password"}, **kwargs)
    except BaseException:
        if cloud:
            cloud.stop()
        raise
    s.add_targets(TEST_TARGETS)
    yield s
    try:
        assert_no_secrets_leaked(s)
        if cloud:
            assert not cloud.unexpected_refusals(), "refused by Google's checks as infra/ sets them:\n" + "\n".join(
                cloud.unexpected_refusals())
    finally:
        s.stop()
        if cloud:
            cloud.stop()


_JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}")


def assert_no_secrets_leaked(stack: Stack) -> None:
    """After every test has used the stack: no token, held password or private key in any log,
    spool or recording it wrote (a guard over the whole suite, not one code path)."""
    held = [stack.pg.broker_password.encode(), stack.pg.md5_password.encode(), b"not-the-password"]
    leaks = []
    for folder in ("logs", "spool", "recordings"):
        root = stack.home / folder
        if not root.exists():
            continue
        for path in root.rglob("*"):
            if not path.is_file() or path.suffix in (".pem", ".key", ".crt"):
                continue
            data = path.read_bytes()
            if _JWT.search(data):
                leaks.append(f"{path}: an OIDC token or grant")
            if b"PRIVATE KEY-----" in data:
                leaks.append(f"{path}: a private key")
            leaks.extend(f"{path}: a held credential" for secret in held if secret in data)
    assert not leaks, "secrets leaked:\n" + "\n".join(leaks)


@pytest.fixture(scope="session")
def token(stack):
    def make(user: str = "alice@example.com", groups=("sre",), **kw) -> str:
        return dev_token(stack.issuer.issuer, user, list(groups), **kw)

    return make


@pytest.fixture(scope="session")
def broker_dsn(stack, token):
    def make(dbname: str = "demo", user: str = "alice@example.com", groups=("sre",), password: str | None = None,
             sslmode: str = "require") -> str:
        pw = password if password is not None else token(user, groups)
        return (f"host=127.0.0.1 port={stack.broker_port} dbname={dbname} user={user} "
                f"password={pw} sslmode={sslmode} connect_timeout=10")

    return make


def wait_sealed(stack: Stack, session_id: str | None = None, timeout: float = 60.0) -> list[dict]:
    """Sessions are sealed asynchronously by finalize_recording; wait for the index to show them."""
    from jitgate.backends import open_backends
    from jitgate.settings import Settings

    backends = open_backends(Settings.from_env(stack.env))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = backends.index.list_sessions(limit=500)
        if session_id is None and rows:
            return rows
        if session_id and any(r["session_id"] == session_id for r in rows):
            return rows
        time.sleep(0.2)
    raise AssertionError(f"session {session_id} was not sealed within {timeout}s")
