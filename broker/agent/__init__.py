"""The agent endpoint: an HTTP API and an MCP server on one HTTPS listener (JITGATE_HTTP_LISTEN).

listener.py  the ASGI app under uvicorn in the broker's loop; /mcp authentication
service.py   the pipeline for agents: authenticate, decide, hold for approval, run, mask, record
http.py      /v1 routes, the OpenAPI document, problem+json errors
mcp.py       the MCP tools (list_targets, query, exec, approval_status)
pgquery.py   one statement on a PostgreSQL target with the held credential, masked like the relay
sshexec.py   one command on an SSH target with the held key
"""
