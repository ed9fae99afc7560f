"""The HTTP face of the agent endpoint (Starlette): /v1 routes, the OpenAPI document, problem+json errors.

Every answer that is not a 2xx with a result is ``application/problem+json``
(RFC 9457) with two extra members: ``code`` (stable, for programs) and ``next``
(a sentence for the agent: what to do now). 202 is the one non-error problem: the
statement waits for an approver; it carries ``approval_id`` and ``Retry-After``.
"""
from __future__ import annotations

import json
import re
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.agent.service import (DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS, DEFAULT_TIMEOUT, MAX_BYTES, MAX_ROWS,
                                  MAX_TIMEOUT, MAX_WAIT, AgentService, Problem)
from jitgate.logs import log

logger = logging.getLogger("jitgate.broker.agent.http")
PROBLEM = "application/problem+json"
MAX_BODY = 2 << 20


def problem_response(p: Problem) -> Response:
    return Response(json.dumps(p.body(), default=str), status_code=p.status, media_type=PROBLEM, headers=p.headers)


def bearer(request_headers) -> str:
    value = request_headers.get("authorization", "")
    return value[7:].strip() if value[:7].lower() == "bearer " else ""


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


async def _body(request: Request, allowed: set[str]) -> dict:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise Problem(413, "body_too_large", "Request body too large", f"the body exceeds {MAX_BODY} bytes",
                      "Send a smaller request.")
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurdly nested JSON
        raise Problem(400, "invalid_json", "Invalid JSON", "the body is not valid JSON",
                      "Send a JSON object with Content-Type: application/json.") from None
    if _SURROGATE_ESCAPE.search(raw):
        try:  # a \\ud800 escape alone decodes to a lone surrogate, which is not UTF-8 and cannot be sent on
            json.dumps(body, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise Problem(422, "invalid_argument", "Invalid argument",
                          "the body holds a lone UTF-16 surrogate (a \\uD800-\\uDFFF escape without its pair)",
                          "Send text that is valid Unicode.") from None
    if not isinstance(body, dict):
        raise Problem(422, "invalid_argument", "Invalid argument", "the body must be a JSON object",
                      "Send a JSON object, e.g. {\"sql\": \"SELECT 1\"}.")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Problem(422, "invalid_argument", "Invalid argument", f"unknown field(s): {', '.join(unknown)}",
                      f"Use only these fields: {', '.join(sorted(allowed))}.")
    return body


def _handler(fn):
    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request)
        except Problem as p:
            return problem_response(p)
        except Exception as exc:  # noqa: BLE001 - never a bare 500 page: an agent must be told what to do
            log(logger, logging.ERROR, "agent API call failed", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
            logger.exception("agent API call failed")
            return problem_response(Problem(500, "internal", "Internal error", f"the gateway failed ({type(exc).__name__})",
                                            "Retry once; if it fails again, tell a human (the gateway logged it)."))
    return endpoint


def routes(service: AgentService, openapi: dict) -> list[Route]:
    async def targets(request: Request) -> Response:
        return JSONResponse(await service.list_targets(bearer(request.headers)))

    async def query(request: Request) -> Response:
        token = bearer(request.headers)
        if not token:
            raise service._unauthenticated("no bearer token was sent")
        body = await _body(request, {"sql", "params", "max_rows", "max_bytes", "timeout_seconds", "wait_seconds"})
        return JSONResponse(await service.query(
            token, request.path_params["target"], body.get("sql"), body.get("params"), max_rows=body.get("max_rows"),
            max_bytes=body.get("max_bytes"), timeout=body.get("timeout_seconds"), wait=body.get("wait_seconds"),
            client=_client(request), via="http"))

    async def exec_(request: Request) -> Response:
        token = bearer(request.headers)
        if not token:
            raise service._unauthenticated("no bearer token was sent")
        body = await _body(request, {"command", "max_bytes", "timeout_seconds", "wait_seconds"})
        return JSONResponse(await service.exec(
            token, request.path_params["target"], body.get("command"), timeout=body.get("timeout_seconds"),
            max_bytes=body.get("max_bytes"), wait=body.get("wait_seconds"), client=_client(request), via="http"))

    async def approval(request: Request) -> Response:
        return JSONResponse(await service.approval(bearer(request.headers), request.path_params["approval_id"]))

    async def document(request: Request) -> Response:
        return JSONResponse(openapi)

    return [
        Route("/openapi.json", _handler(document), methods=["GET"]),
        Route("/v1/targets", _handler(targets), methods=["GET"]),
        Route("/v1/targets/{target}/query", _handler(query), methods=["POST"]),
        Route("/v1/targets/{target}/exec", _handler(exec_), methods=["POST"]),
        Route("/v1/approvals/{approval_id}", _handler(approval), methods=["GET"]),
    ]


def openapi_document(server_url: str) -> dict:
    problem = {"$ref": "#/components/responses/Problem"}
    errors = {"400": problem, "401": problem, "403": problem, "404": problem, "405": problem, "413": problem,
              "422": problem, "500": problem, "502": problem, "503": problem, "504": problem}
    target = {"name": "target", "in": "path", "required": True, "description": "Target name from GET /v1/targets.",
              "schema": {"type": "string"}}
    wait = {"type": "number", "minimum": 0, "maximum": MAX_WAIT, "default": 0,
            "description": "If approval is needed, block up to this many seconds for the decision before answering 202."}
    timeout = {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT, "default": DEFAULT_TIMEOUT,
               "description": "Seconds the statement or command may run before it is cancelled (504)."}
    max_bytes = {"type": "integer", "minimum": 1024, "maximum": MAX_BYTES, "default": DEFAULT_MAX_BYTES,
                 "description": "Most result bytes kept; past it the result is cut and `truncated` is true."}
    pending = {"description": "Approval required: nothing ran. Poll the approval (Location, Retry-After), then re-send the "
                              "same request.",
               "headers": {"Retry-After": {"schema": {"type": "integer"}}, "Location": {"schema": {"type": "string"}}},
               "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "jitgate agent API", "version": "1",
                 "description": "Run SQL and commands on company systems through jitgate with an OIDC bearer token. "
                                "Every call is recorded; sensitive values are masked; risky operations wait for a human "
                                "approval (202 + approval_id). Errors are application/problem+json with `next`: what to do."},
        "servers": [{"url": server_url}],
        "security": [{"bearer": []}],
        "paths": {
            "/v1/targets": {"get": {
                "operationId": "listTargets", "summary": "Targets you may reach, and what needs approval there",
                "responses": {"200": {"description": "Reachable targets", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Targets"}}}}, **errors}}},
            "/v1/targets/{target}/query": {"post": {
                "operationId": "query", "summary": "Run one SQL statement on a PostgreSQL target",
                "parameters": [target],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False, "required": ["sql"],
                    "properties": {
                        "sql": {"type": "string", "minLength": 1, "description": "One SQL statement; $1, $2... for params."},
                        "params": {"type": "array", "items": {}, "description": "Values for $1, $2, ..."},
                        "max_rows": {"type": "integer", "minimum": 1, "maximum": MAX_ROWS, "default": DEFAULT_MAX_ROWS},
                        "max_bytes": max_bytes, "timeout_seconds": timeout, "wait_seconds": wait}}}}},
                "responses": {"200": {"description": "The result (masked)", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/QueryResult"}}}}, "202": pending, **errors}}},
            "/v1/targets/{target}/exec": {"post": {
                "operationId": "exec", "summary": "Run one command on an SSH target",
                "parameters": [target],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False, "required": ["command"],
                    "properties": {"command": {"type": "string", "minLength": 1}, "max_bytes": max_bytes,
                                   "timeout_seconds": timeout, "wait_seconds": wait}}}}},
                "responses": {"200": {"description": "stdout, stderr, exit status", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ExecResult"}}}}, "202": pending, **errors}}},
            "/v1/approvals/{approval_id}": {"get": {
                "operationId": "approvalStatus", "summary": "State of one of your approval requests",
                "parameters": [{"name": "approval_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "The approval", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Approval"}}}}, **errors}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "OIDC ID token"}},
            "responses": {"Problem": {"description": "Problem details (RFC 9457)", "content": {
                PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}}},
            "schemas": {
                "Problem": {"type": "object", "required": ["type", "title", "status", "detail", "code", "next"],
                            "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                                           "status": {"type": "integer"}, "detail": {"type": "string"},
                                           "code": {"type": "string"}, "next": {"type": "string"},
                                           "approval_id": {"type": ["string", "null"]}}},
                "Targets": {"type": "object", "required": ["user", "targets"], "properties": {
                    "user": {"type": "string"}, "groups": {"type": "array", "items": {"type": "string"}},
                    "targets": {"type": "array", "items": {"type": "object", "required": ["name", "kind"], "properties": {
                        "name": {"type": "string"}, "kind": {"type": "string"}, "description": {"type": "string"},
                        "needs_approval": {"type": "array", "items": {"type": "string"}},
                        "denied": {"type": "array", "items": {"type": "string"}}, "masked": {"type": "boolean"}}}}}},
                "QueryResult": {"type": "object", "required": ["session_id", "columns", "rows", "truncated"], "properties": {
                    "session_id": {"type": "string"},
                    "columns": {"type": "array", "items": {"type": "object"}},
                    "rows": {"type": "array", "items": {"type": "array"}},
                    "row_count": {"type": ["integer", "null"]}, "returned_rows": {"type": "integer"},
                    "command_tag": {"type": ["string", "null"]}, "truncated": {"type": "boolean"},
                    "truncation": {"type": ["string", "null"]},
                    "masked_columns": {"type": "array", "items": {"type": "string"}},
                    "masking": {"type": "array", "items": {"type": "object", "required": ["column", "rule"], "properties": {
                        "column": {"type": "string"}, "rule": {"type": "string"}}}},
                    "notices": {"type": "array", "items": {"type": "string"}},
                    "approval_id": {"type": ["string", "null"]}}},
                "ExecResult": {"type": "object", "required": ["session_id", "stdout", "stderr", "exit_status"], "properties": {
                    "session_id": {"type": "string"}, "stdout": {"type": "string"}, "stderr": {"type": "string"},
                    "exit_status": {"type": ["integer", "null"]}, "truncated": {"type": "boolean"}}},
                "Approval": {"type": "object", "required": ["approval_id", "status", "next"], "properties": {
                    "approval_id": {"type": "string"},
                    "status": {"type": "string", "enum": ["pending", "approved", "denied", "expired", "cancelled", "withdrawn", "consumed"]},
                    "next": {"type": "string"}, "ready_to_run": {"type": "boolean"},
                    "covers": {"type": "string", "description": "What an approval releases: once, or repeated runs "
                                                                "within grant_window, or the session; with the expiry"}}},
            },
        },
    }
