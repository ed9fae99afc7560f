"""Schemathesis against the agent API's own OpenAPI document, on the running broker, with a valid token.

Checks: no server errors (500), every error is application/problem+json with
`code` and `next`, and responses conform to the document.
"""
from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings


@pytest.fixture(scope="session")
def agent_openapi(agent_url, broker_ca):
    doc = requests.get(agent_url + "/openapi.json", verify=broker_ca, timeout=30).json()
    return schemathesis.openapi.from_dict(doc)


@pytest.fixture(scope="session")
def fuzz_token(token):
    return token("fuzz@example.com", ["sre"])


schema = schemathesis.pytest.from_fixture("agent_openapi")


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
def test_agent_api_fuzz(case, agent_url, broker_ca, fuzz_token):
    response = case.call(base_url=agent_url, headers={"Authorization": f"Bearer {fuzz_token}"}, verify=broker_ca)
    assert response.status_code != 500, response.text
    if response.status_code >= 400 or response.status_code == 202:
        content_type = response.headers["content-type"]
        content_type = content_type[0] if isinstance(content_type, list) else content_type
        assert content_type.startswith("application/problem+json"), response.text
        body = response.json()
        assert body["status"] == response.status_code and body["code"] and body["next"], body
    case.validate_response(response, checks=[schemathesis.checks.not_a_server_error, schemathesis.checks.status_code_conformance,
                                             schemathesis.checks.content_type_conformance,
                                             schemathesis.checks.response_schema_conformance])
