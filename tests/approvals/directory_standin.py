"""A local stand-in of the Cloud Identity Groups API (the two calls jitgate makes), so the
approvals service's directory checks run against a real HTTP server the tests control.

GET /v1/groups:lookup?groupKey.id=<group email>                      -> {"name": "groups/<id>"} | 404
GET /v1/groups/<id>/memberships:checkTransitiveMembership?query=member_key_id == '<email>'
                                                                     -> {"hasMembership": bool}
Groups may contain groups (transitive). ``members`` is live: tests add and remove people.
``failing`` makes every call answer 503 (the directory is down).
"""
from __future__ import annotations

import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class DirectoryStandIn:
    def __init__(self, members: dict[str, set[str]]):
        self.members = {g: set(m) for g, m in members.items()}  # group email -> member emails / group emails
        self.failing = False
        self.calls: list[str] = []
        self._server: ThreadingHTTPServer | None = None

    def _ids(self) -> dict[str, str]:
        return {f"g{i}": g for i, g in enumerate(sorted(self.members))}

    def has(self, group: str, email: str, seen=None) -> bool:
        seen = seen or set()
        if group in seen:
            return False
        seen.add(group)
        direct = self.members.get(group, set())
        return email in direct or any(self.has(g, email, seen) for g in direct if g in self.members)

    def start(self) -> "DirectoryStandIn":
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                standin.calls.append(url.path)
                if standin.failing:
                    return self._send(503, {"error": {"code": 503, "status": "UNAVAILABLE"}})
                ids = standin._ids()
                if url.path == "/v1/groups:lookup":
                    key = (query.get("groupKey.id") or [""])[0]
                    found = next((i for i, g in ids.items() if g == key), None)
                    if found is None:
                        return self._send(404, {"error": {"code": 404, "status": "NOT_FOUND"}})
                    return self._send(200, {"name": f"groups/{found}"})
                match = re.fullmatch(r"/v1/groups/([^/]+)/memberships:checkTransitiveMembership", url.path)
                if match and match.group(1) in ids:
                    member = re.fullmatch(r"member_key_id == '([^']+)'", (query.get("query") or [""])[0])
                    if not member:
                        return self._send(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT"}})
                    return self._send(200, {"hasMembership": standin.has(ids[match.group(1)], member.group(1))})
                return self._send(404, {"error": {"code": 404, "status": "NOT_FOUND"}})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/v1"

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
