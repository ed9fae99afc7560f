"""The local web approval console: the approvals UI when Slack is not configured.

    python -m jitgate.console --port 8790      (started by `jitgate up`)

GET  /                          pending and recent requests, with Approve / Deny forms
GET  /api/approvals[?status=]   JSON
POST /approvals/<id>/approve    form or JSON {token, reason}
POST /approvals/<id>/deny       form or JSON {token, reason}

Approvers identify with an OIDC token (paste `jitgate login --dev --user ... --groups ...`),
verified against policy.identity, so groups are real. Decisions go through
jitgate.approvals.apply_decision, the same code as Slack and the CLI. Binds 127.0.0.1 only.
A background sweep expires pending requests past their TTL every SWEEP_SECONDS.
"""
from __future__ import annotations

import argparse
import html
import json
import logging
import os
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from jitgate import approvals as ap
from jitgate import logs
from jitgate.backends import open_backends
from jitgate.identity.oidc import OIDCVerifier, TokenError
from jitgate.logs import log
from jitgate.policy import PolicyHolder
from jitgate.settings import Settings
from jitgate.slack.messages import refresh_if_configured

logger = logging.getLogger("jitgate.console")
SWEEP_SECONDS = 30
MAX_BODY = 64 * 1024
_DECIDE = re.compile(r"^/approvals/(apr_[0-9a-f]{1,32})/(approve|deny)$")


def _fmt(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "-"


class Console:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.backends = open_backends(settings)
        self.policy = PolicyHolder(settings.policy_path)
        self._verifiers: dict[str, OIDCVerifier] = {}

    def verifier(self) -> OIDCVerifier:
        identity = self.policy.policy.identity
        key = identity.model_dump_json()
        if key not in self._verifiers:
            self._verifiers = {key: OIDCVerifier(identity)}
        return self._verifiers[key]

    def decide(self, approval_id: str, action: str, token: str, reason: str) -> tuple[int, dict]:
        try:
            approver = ap.approver_from_token(token, self.policy.policy.identity, via="console",
                                              store=self.backends.approvals, verifier=self.verifier())
        except TokenError as exc:
            return 401, {"ok": False, "error": f"token refused: {exc}"}
        if action == "deny" and not reason.strip():
            return 400, {"ok": False, "error": "a denial needs a reason (the requester sees it)"}
        try:
            record = ap.apply_decision(self.backends, approval_id, approver, action, reason=reason)
        except ap.DecisionError as exc:
            return (404 if exc.code == "not_found" else 409), {"ok": False, "code": exc.code, "error": str(exc)}
        refresh_if_configured(self.backends.approvals, record)
        return 200, {"ok": True, "status": record["status"], "summary": ap.describe_decision(record),
                     "approvals": len(record["approvals"]), "required": record["required"]}

    def sweep_forever(self) -> None:
        while True:
            time.sleep(SWEEP_SECONDS)
            try:
                url = os.environ.get("JITGATE_EXPIRE_URL")
                if url:  # locally the console plays Cloud Scheduler for functions/expire_approvals
                    httpx.post(url, timeout=30)
                else:
                    for record in ap.expire_due(self.backends):
                        refresh_if_configured(self.backends.approvals, record)
            except Exception as exc:  # noqa: BLE001 - keep sweeping
                log(logger, logging.WARNING, "expiry sweep failed", error=str(exc))

    def page(self, message: str = "") -> str:
        store = self.backends.approvals
        pending = [r for r in store.list_approvals(status=ap.PENDING, limit=100) if ap.is_request(r)]
        recent = [r for r in store.list_approvals(limit=100) if ap.is_request(r) and r["status"] != ap.PENDING][:20]
        e = html.escape
        rows = []
        for r in pending:
            rows.append(f"""
<div class="req"><h3>{e(r['approval_id'])} · {e(r['requester'])} → {e(r['target'])} · {e(', '.join(r['classes']))}</h3>
<p>session {e(r['session_id'])} · expires {_fmt(r['expires_at'])} · {len(r['approvals'])} of {r['required']} approvals ·
approvers: {e(', '.join(r['approver_groups'] + r['approver_users']) or 'none')}</p>
<pre>{e(r['statement'])}</pre>
<form method="post" action="/approvals/{e(r['approval_id'])}/approve"><input type="password" name="token" placeholder="your OIDC token" required>
<button>Approve</button></form>
<form method="post" action="/approvals/{e(r['approval_id'])}/deny"><input type="password" name="token" placeholder="your OIDC token" required>
<input name="reason" placeholder="reason" required><button>Deny</button></form></div>""")
        done = "".join(
            f"<tr><td>{e(r['approval_id'])}</td><td>{e(r['status'])}</td><td>{e(r['requester'])}</td><td>{e(r['target'])}</td>"
            f"<td>{e(ap.describe_decision(r))}</td><td>{_fmt(r.get('decided_at'))}</td></tr>" for r in recent)
        return f"""<!doctype html><html><head><meta charset="utf-8"><title>jitgate approvals</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}} pre{{background:#f4f4f4;padding:.5em;white-space:pre-wrap}}
.req{{border:1px solid #ccc;padding:0 1em 1em;margin:1em 0}} form{{display:inline-block;margin-right:1em}} .msg{{background:#ffd;padding:.5em}}</style>
</head><body><h1>jitgate approvals</h1>
<p>Get a token with <code>jitgate login --dev --user you@example.com --groups dba</code> (local stack).</p>
{f'<p class="msg">{e(message)}</p>' if message else ''}
<h2>Pending ({len(pending)})</h2>{''.join(rows) or '<p>nothing waits for a decision</p>'}
<h2>Recent decisions</h2><table><tr><th>id</th><th>status</th><th>requester</th><th>target</th><th>outcome</th><th>when</th></tr>{done}</table>
</body></html>"""


def make_handler(console: Console):
    class Handler(BaseHTTPRequestHandler):
        server_version = "jitgate-console"

        def log_message(self, fmt, *args):  # structured logs instead of stderr lines
            log(logger, logging.DEBUG, "request", line=fmt % args)

        def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data) -> None:
            self._send(status, json.dumps(data).encode(), "application/json")

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/healthz":
                return self._json(200, {"ok": True})
            if url.path == "/api/approvals":
                status = urllib.parse.parse_qs(url.query).get("status", [None])[0]
                rows = [r for r in console.backends.approvals.list_approvals(status=status, limit=200) if ap.is_request(r)]
                return self._json(200, rows)
            if url.path == "/":
                message = urllib.parse.parse_qs(url.query).get("msg", [""])[0]
                return self._send(200, console.page(message).encode(), "text/html; charset=utf-8")
            return self._json(404, {"error": "not found"})

        def do_POST(self):
            match = _DECIDE.match(urllib.parse.urlsplit(self.path).path)
            if not match:
                return self._json(404, {"error": "not found"})
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                return self._json(400, {"error": "Content-Length is not a number"})
            if length < 0 or length > MAX_BODY:
                return self._json(413, {"error": f"the body must be 0 to {MAX_BODY} bytes"})
            raw = self.rfile.read(length).decode(errors="replace")
            is_json = (self.headers.get("Content-Type") or "").startswith("application/json")
            if is_json:
                try:
                    form = json.loads(raw or "{}")
                except (ValueError, RecursionError):
                    return self._json(400, {"error": "invalid JSON"})
                if not isinstance(form, dict):
                    return self._json(400, {"error": "send a JSON object {token, reason}"})
            else:
                form = {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}
            status, result = console.decide(match.group(1), match.group(2), str(form.get("token", "")), str(form.get("reason", "")))
            if is_json:
                return self._json(status, result)
            msg = result.get("summary") or result.get("error", "")
            self._send(303, b"", "text/plain", {"Location": "/?msg=" + urllib.parse.quote(f"{match.group(1)}: {msg}")})

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jitgate.console", description="jitgate local approval console")
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    logs.setup()
    console = Console(Settings.from_env())
    import ipaddress

    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        # The console lists pending statements without a sign-in: it is a local-stack tool only.
        parser.error(f"--host {args.host}: the approval console only binds to a loopback address")
    server = ThreadingHTTPServer((args.host, args.port), make_handler(console))
    server.daemon_threads = True
    threading.Thread(target=console.sweep_forever, name="expiry-sweep", daemon=True).start()
    log(logger, logging.INFO, "approval console ready", url=f"http://{args.host}:{server.server_port}")
    server.serve_forever()


if __name__ == "__main__":
    main()
