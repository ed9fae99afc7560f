"""The MCP face of the agent endpoint: four tools over streamable HTTP (official ``mcp`` SDK).

The bearer token of the HTTP request is the caller's identity (checked by the
listener's middleware before the SDK sees the request, and again per target by
``AgentService``). One MCP session = one recorded jitgate session per target it
touches (keyed by the ``Mcp-Session-Id`` header).

Tool results always start with one line in capitals saying the state (OK,
APPROVAL REQUIRED, REFUSED, ERROR), then what to do next, then the data as
JSON; ``structured_content`` carries the same data for clients that read it.
"""
from __future__ import annotations

import json
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from broker.agent.service import MAX_BYTES, MAX_ROWS, MAX_TIMEOUT, MAX_WAIT, AgentService, Problem

INSTRUCTIONS = """\
jitgate is an access gateway: it runs SQL and shell commands on company systems for you with credentials
you never see. Every call is recorded. Start with list_targets to learn which targets you may use and which
operations need a human's approval there. Sensitive values in results may be masked (e.g. ***@example.com);
that is intended, do not try to work around it. When a call answers APPROVAL REQUIRED, nothing has run:
tell the user an approval is pending, poll approval_status, and re-send exactly the same call once approved."""


def _bearer(ctx: Context) -> str:
    headers = ctx.headers or {}
    value = headers.get("authorization", "")
    return value[7:].strip() if value[:7].lower() == "bearer " else ""


def _conversation(ctx: Context) -> str:
    headers = ctx.headers or {}
    return "mcp:" + (headers.get("mcp-session-id") or f"anon-{id(ctx.request_context.session)}")


def _ok(headline: str, data: dict) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=f"{headline}\n{json.dumps(data, default=str)}")],
                          structured_content=data, is_error=False)


def _problem(p: Problem) -> CallToolResult:
    body = p.body()
    if p.code == "approval_required":
        head = (f"APPROVAL REQUIRED (approval_id {body.get('approval_id')}, status pending). Nothing has run yet.\n"
                f"Next: {p.next_step}")
        return CallToolResult(content=[TextContent(type="text", text=f"{head}\n{json.dumps(body)}")],
                              structured_content=body, is_error=False)
    state = "REFUSED" if p.status in (401, 403, 404) else "ERROR"
    text = f"{state}: {p.detail}\nNext: {p.next_step}\n{json.dumps(body)}"
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=body, is_error=True)


def build_mcp(service: AgentService) -> MCPServer:
    server = MCPServer(name="jitgate", title="jitgate access gateway", instructions=INSTRUCTIONS, version="1")

    @server.tool(
        name="list_targets",
        title="List reachable targets",
        description=(
            "List the targets (PostgreSQL databases, SSH hosts) you may use through jitgate, with their kind, which tool "
            "to use for each (query or exec), which operation classes need a human approval there (needs_approval, "
            "e.g. ddl, dml_unbounded), which are always refused (denied), who approves, and whether results are masked. "
            "Call this first."
        ),
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False),
    )
    async def list_targets(ctx: Context) -> CallToolResult:
        try:
            data = await service.list_targets(_bearer(ctx))
        except Problem as p:
            return _problem(p)
        names = ", ".join(f"{t['name']} ({t['kind']})" for t in data["targets"]) or "none"
        return _ok(f"OK: {len(data['targets'])} target(s) reachable: {names}.", data)

    @server.tool(
        name="query",
        title="Run one SQL statement",
        description=(
            "Run ONE SQL statement on a PostgreSQL target and get columns and rows back as JSON. Put values in `params` "
            "and refer to them as $1, $2, ... (never paste values into the SQL). Reads run at once. Statements in a class "
            "that needs approval (see list_targets: e.g. ALTER/CREATE/DROP = ddl, UPDATE/DELETE without WHERE = "
            "dml_unbounded) are not run: the answer is APPROVAL REQUIRED with an approval_id; poll approval_status and "
            "re-send exactly the same call once approved. Each call is its own transaction (autocommit). Results are "
            f"capped (max_rows, default 500, at most {MAX_ROWS}); `truncated` says when rows were cut: then page with "
            "LIMIT/OFFSET. Masked values (e.g. ***@example.com, [email]) are intentional."
        ),
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False),
    )
    async def query(
        ctx: Context,
        target: Annotated[str, Field(description="Target name from list_targets (a postgres target), e.g. 'demo'.")],
        sql: Annotated[str, Field(description="Exactly one SQL statement, with $1, $2... placeholders for values.")],
        params: Annotated[list[Any] | None, Field(description="Values for $1, $2, ... in order (strings, numbers, booleans, null, or JSON objects).")] = None,
        max_rows: Annotated[int | None, Field(ge=1, le=MAX_ROWS, description="Most rows to return (default 500).")] = None,
        timeout_seconds: Annotated[float | None, Field(gt=0, le=MAX_TIMEOUT, description="Cancel the statement after this long (default 30).")] = None,
        wait_seconds: Annotated[float | None, Field(ge=0, le=MAX_WAIT, description="If approval is needed, wait this long for a human before answering APPROVAL REQUIRED (default 0: answer at once).")] = None,
    ) -> CallToolResult:
        try:
            data = await service.query(_bearer(ctx), target, sql, params, max_rows=max_rows, timeout=timeout_seconds,
                                       wait=wait_seconds, conversation=_conversation(ctx), client="mcp", via="mcp")
        except Problem as p:
            return _problem(p)
        head = f"OK: {data['returned_rows']} row(s) returned ({data['command_tag']})."
        if data["truncated"]:
            head += f" TRUNCATED: {data['truncation']}."
        if data["masked_columns"]:
            head += " Masked columns: " + "; ".join(f"{m['column']} ({m['rule']})" for m in data["masking"]) + "."
        if data.get("approval_id"):
            head += f" Ran under approval {data['approval_id']}."
        return _ok(head, data)

    @server.tool(
        name="exec",
        title="Run one shell command on an SSH target",
        description=(
            "Run one shell command line on an SSH target (non-interactive, no TTY, stdin closed) and get stdout, stderr "
            "and the exit status. Commands in classes that need approval (see list_targets: e.g. sudo = privilege, "
            "systemctl restart = service_control, rm -rf = destructive) answer APPROVAL REQUIRED with an approval_id: "
            "poll approval_status and re-send exactly the same call once approved. Output beyond max_bytes is cut "
            f"(`truncated`). Timeout default 30s, at most {MAX_TIMEOUT:g}s."
        ),
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False),
    )
    async def exec(
        ctx: Context,
        target: Annotated[str, Field(description="Target name from list_targets (an ssh target).")],
        command: Annotated[str, Field(description="One shell command line, e.g. 'df -h /var'.")],
        timeout_seconds: Annotated[float | None, Field(gt=0, le=MAX_TIMEOUT, description="Kill the command after this long (default 30).")] = None,
        max_bytes: Annotated[int | None, Field(ge=1024, le=MAX_BYTES, description="Most bytes kept per stream (default 1 MiB).")] = None,
        wait_seconds: Annotated[float | None, Field(ge=0, le=MAX_WAIT, description="If approval is needed, wait this long for a human first (default 0).")] = None,
    ) -> CallToolResult:
        try:
            data = await service.exec(_bearer(ctx), target, command, timeout=timeout_seconds, max_bytes=max_bytes,
                                      wait=wait_seconds, conversation=_conversation(ctx), client="mcp", via="mcp")
        except Problem as p:
            return _problem(p)
        head = f"OK: exit status {data['exit_status']}."
        if data["truncated"]:
            head += f" TRUNCATED: {data['truncation']}."
        return _ok(head, data)

    @server.tool(
        name="approval_status",
        title="Check an approval request",
        description=(
            "Check an approval request returned by query or exec (APPROVAL REQUIRED). status is one of pending, approved, "
            "denied, expired, cancelled, withdrawn, consumed; `next` says what to do. When approved, re-send exactly the same "
            "query/exec call to run it. Poll at most every 10 seconds."
        ),
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False),
    )
    async def approval_status(
        ctx: Context,
        approval_id: Annotated[str, Field(description="The approval_id from an APPROVAL REQUIRED answer, e.g. 'apr_0123456789abcdef'.")],
    ) -> CallToolResult:
        try:
            data = await service.approval(_bearer(ctx), approval_id)
        except Problem as p:
            return _problem(p)
        return _ok(f"{data['status'].upper()}: approval {approval_id} is {data['decision']}.\nNext: {data['next']}", data)

    return server
