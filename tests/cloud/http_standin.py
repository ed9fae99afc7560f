"""What the HTTP stand-ins share: a threaded loopback server, and relaying a request to a backend."""
from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import SplitResult

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length", "host"}


class Handler(BaseHTTPRequestHandler):
    """Quiet, HTTP/1.1; subclasses implement handle_request() for every method."""

    protocol_version = "HTTP/1.1"
    # The status line and headers go out in one write, the body in another: with Nagle's algorithm
    # on, the body waits for the client's delayed ACK (40 ms on Linux loopback) on every request.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(self, status: int, data: bytes, headers=()) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def forward(self, backend: SplitResult, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send this request to backend; (status, headers without hop-by-hop ones, body)."""
        conn = http.client.HTTPConnection(backend.hostname, backend.port, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP], data
        finally:
            conn.close()

    def handle_request(self) -> None:
        raise NotImplementedError

    def do_GET(self):
        self.handle_request()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET


class Server:
    """A ThreadingHTTPServer on a free loopback port, served from a daemon thread."""

    def __init__(self, handler: type[Handler]):
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
