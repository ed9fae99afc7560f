"""The broker reaches authorize as in production: through Cloud Run's invoker check, with the
Google ID token its VM's metadata server gives it (stand-ins for both, rules from infra/)."""
from __future__ import annotations

import asyncio

import psycopg
import pytest

from jitgate.devstack import start_broker
from jitgate.identity.google_id_token import MetadataIdTokens
from tests.cloud import iam_model
from tests.cloud.cloud_run import CloudRunInvoker
from tests.cloud.metadata_server import MetadataServer

PROJECT = "jitgate-test"


@pytest.fixture(scope="module")
def google():
    """The metadata server of a broker VM (its service account, as infra/ names it)."""
    server = MetadataServer(iam_model.account_email("broker", PROJECT)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def authorize_behind_cloud_run(stack, google):
    invoker = CloudRunInvoker(stack.authorize_url, google_public_key=google.public_key,
                              invokers=iam_model.invokers("authorize", PROJECT)).start()
    yield invoker
    invoker.stop()


def _broker(stack, name: str, **env):
    base = dict(stack.env, JITGATE_PG_LISTEN="127.0.0.1:0", JITGATE_SSH_LISTEN="", JITGATE_HTTP_LISTEN="",
                JITGATE_K8S_LISTEN="", JITGATE_METRICS_LISTEN="127.0.0.1:0")
    base.update(env)
    return start_broker(stack.home, base, stack.home / "logs", name=name)


def _dsn(broker_dsn, stack, info, **kw) -> str:
    port = int(info["pg"].rpartition(":")[2])
    return broker_dsn(**kw).replace(f"port={stack.broker_port}", f"port={port}")


def test_only_the_broker_account_may_invoke_authorize():
    assert iam_model.invokers("authorize", PROJECT) == {iam_model.account_email("broker", PROJECT)}


def test_broker_signs_in_through_cloud_run_with_its_metadata_id_token(stack, broker_dsn, google, authorize_behind_cloud_run):
    invoker = authorize_behind_cloud_run
    proc, info = _broker(stack, "broker-idtoken", JITGATE_AUTHORIZE_URL=invoker.url,
                         JITGATE_AUTHORIZE_AUTH="google-id-token", GCE_METADATA_HOST=google.host)
    try:
        fetched_before, passed_before = len(google.issued), invoker.passed
        for user in ("alice@example.com", "bob@example.com", "carol@example.com"):
            with psycopg.connect(_dsn(broker_dsn, stack, info, user=user)) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        assert invoker.passed - passed_before >= 3  # keys + one authorize call per new token
        assert not [r for r in invoker.refused if r[0] != 0], invoker.refused
        # One ID token for all of them: cached until shortly before it expires.
        assert len(google.issued) - fetched_before == 1
        assert google.issued[-1]["audience"] == invoker.url
    finally:
        proc.stop()


def test_broker_without_an_id_token_is_refused_by_cloud_run(stack, broker_dsn, authorize_behind_cloud_run):
    """What every login did before the broker fetched ID tokens: Cloud Run answers 401 first."""
    invoker = authorize_behind_cloud_run
    proc, info = _broker(stack, "broker-noidtoken", JITGATE_AUTHORIZE_URL=invoker.url, JITGATE_AUTHORIZE_AUTH="")
    try:
        refused_before = len(invoker.refused)
        with pytest.raises(psycopg.OperationalError, match="authorization service"):
            psycopg.connect(_dsn(broker_dsn, stack, info, user="dave@example.com")).close()
        assert [status for status, _ in invoker.refused[refused_before:]] and all(
            status == 401 for status, _ in invoker.refused[refused_before:])
    finally:
        proc.stop()


def test_invoker_check_refuses_what_cloud_run_refuses(google, stack):
    invoker = CloudRunInvoker(stack.authorize_url, google_public_key=google.public_key,
                              invokers={google.email}).start()
    try:
        good = google.mint(invoker.url)
        assert invoker.check(f"Bearer {good}") == (0, google.email)
        assert invoker.check(None)[0] == 401
        assert invoker.check(f"Basic {good}")[0] == 401
        assert invoker.check(f"Bearer {google.mint('https://other-service.run.app')}")[0] == 401  # wrong audience
        assert invoker.check(f"Bearer {google.mint(invoker.url, now=0)}")[0] == 401  # expired
        assert invoker.check(f"Bearer {google.mint(invoker.url, email='intruder@p.iam.gserviceaccount.com')}")[0] == 403
        forged = google.mint(invoker.url, key=MetadataServer("x@y").key)  # signed by someone else's key
        assert invoker.check(f"Bearer {forged}")[0] == 401
        # An OIDC token of the company IdP (what a client presents to the broker) is no invoker token.
        from jitgate.devstack import dev_token
        assert invoker.check(f"Bearer {dev_token(stack.issuer.issuer, 'alice@example.com', ['sre'])}")[0] == 401
    finally:
        invoker.stop()


def test_id_token_is_cached_until_shortly_before_expiry(google):
    async def fetches(lifetime: int, calls: int) -> int:
        google.lifetime = lifetime
        tokens = MetadataIdTokens(host=google.host)
        try:
            for _ in range(calls):
                await tokens.token("https://authorize.example")
            return tokens.fetches
        finally:
            await tokens.close()

    try:
        assert asyncio.run(fetches(3600, 5)) == 1
        assert asyncio.run(fetches(120, 3)) == 3  # inside the refresh margin: fetched again each time
    finally:
        google.lifetime = 3600


def test_metadata_server_that_refuses_fails_closed():
    from jitgate.identity.google_id_token import IdTokenError

    async def attempt():
        tokens = MetadataIdTokens(host="127.0.0.1:9")  # nothing listens there
        try:
            await tokens.token("https://authorize.example")
        finally:
            await tokens.close()

    with pytest.raises(IdTokenError, match="unreachable"):
        asyncio.run(attempt())


def test_each_function_admits_exactly_the_callers_infra_names(stack, google):
    """expire_approvals: Cloud Scheduler's account only; approvals: anyone (Slack's signature
    is its check); the Pub/Sub-triggered functions: their own trigger account (Eventarc pushes as it)."""
    scheduler = iam_model.account_email("scheduler", PROJECT)
    broker = iam_model.account_email("broker", PROJECT)
    assert iam_model.invokers("expire_approvals", PROJECT) == {scheduler}
    assert iam_model.invokers("approvals", PROJECT) == {"allUsers"}
    for fn in ("notify_approvers", "finalize_recording"):
        assert iam_model.invokers(fn, PROJECT) == {iam_model.account_email(f"fn:{fn}", PROJECT)}
    expire_url = stack.env["JITGATE_EXPIRE_URL"]
    invoker = CloudRunInvoker(expire_url, google_public_key=google.public_key,
                              invokers=iam_model.invokers("expire_approvals", PROJECT)).start()
    try:
        import httpx

        as_scheduler = httpx.post(invoker.url, json={}, timeout=30,
                                  headers={"Authorization": f"Bearer {google.mint(invoker.url, email=scheduler)}"})
        assert as_scheduler.status_code == 200, as_scheduler.text
        as_broker = httpx.post(invoker.url, json={}, timeout=30,
                               headers={"Authorization": f"Bearer {google.mint(invoker.url, email=broker)}"})
        assert as_broker.status_code == 403
        assert httpx.post(invoker.url, json={}, timeout=30).status_code == 401
    finally:
        invoker.stop()
