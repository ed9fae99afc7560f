"""A small stand-in for kube-apiserver over TLS: discovery, GET pods, and pods/exec + pods/attach
speaking the real WebSocket remote-command protocol (v5.channel.k8s.io and v4.channel.k8s.io).

No kube-apiserver can run on the test machine, so this plays one, closely enough for the
real kubectl and the official Python client: discovery documents (/version, /api, /api/v1,
/apis), Pod and PodList objects, Status objects for errors, and exec that actually runs the
command (``sh -c``-free argv, in a scratch directory) in a subprocess: with pipes, or with a
PTY when ``tty=true`` (resize messages set its window size). The exit status goes back on
stream 3 as kube-apiserver sends it. Every request is logged in ``requests`` so tests can
check what the broker sent (its held token, never the caller's, and no Impersonate-* header).
"""
from __future__ import annotations

import asyncio
import datetime
import fcntl
import ipaddress
import json
import os
import pty
import ssl
import struct
import subprocess
import termios
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker.k8s import channels as ch

PODS = {"default": ["web-0"], "team": ["api-0"], "prod": ["db-0"], "kube-system": ["dns-0"]}
SECRET_NAME = "db-password"


def make_cert(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stand-in kube-apiserver")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "apiserver.crt", directory / "apiserver.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(ch.status_object(message, reason=reason, code=code), status=code)


def _pod(ns: str, name: str) -> dict:
    return {"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}", "resourceVersion": "1",
                         "creationTimestamp": "2026-01-01T00:00:00Z", "labels": {"app": name.split("-")[0]}},
            "spec": {"containers": [{"name": "main", "image": "busybox"}], "nodeName": "node-1"},
            "status": {"phase": "Running", "podIP": "10.0.0.2", "startTime": "2026-01-01T00:00:00Z",
                       "containerStatuses": [{"name": "main", "ready": True, "restartCount": 0, "image": "busybox",
                                              "imageID": "", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


API_RESOURCES = {
    "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
    "resources": [
        {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod", "shortNames": ["po"],
         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]},
        {"name": "pods/exec", "singularName": "", "namespaced": True, "kind": "PodExecOptions", "verbs": ["create", "get"]},
        {"name": "pods/attach", "singularName": "", "namespaced": True, "kind": "PodAttachOptions", "verbs": ["create", "get"]},
        {"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]},
        {"name": "pods/portforward", "singularName": "", "namespaced": True, "kind": "PodPortForwardOptions", "verbs": ["create", "get"]},
        {"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret",
         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]},
        {"name": "namespaces", "singularName": "namespace", "namespaced": False, "kind": "Namespace", "shortNames": ["ns"],
         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]},
    ],
}


@dataclass
class StandIn:
    token: str
    workdir: Path
    cert: Path = None
    key: Path = None
    port: int = 0
    requests: list[dict] = field(default_factory=list)
    # Run exec'd commands as this (unprivileged) account instead of the test's own user.
    run_as: str | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- lifecycle (a thread with its own event loop, so tests can call kubectl synchronously) --

    def start(self) -> "StandIn":
        self.cert, self.key = make_cert(self.workdir)
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._serve())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="apiserver-standin", daemon=True)
        self._thread.start()
        if not ready.wait(15):
            raise RuntimeError("the stand-in API server did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self) -> None:
        app = web.Application(middlewares=[self._auth])
        def document(body):
            async def serve(request):
                return web.json_response(body)
            return serve

        app.router.add_get("/version", document({"major": "1", "minor": "32", "gitVersion": "v1.32.4", "platform": "linux/amd64"}))
        app.router.add_get("/api", document({"kind": "APIVersions", "versions": ["v1"]}))
        app.router.add_get("/apis", document({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}))
        app.router.add_get("/api/v1", document(API_RESOURCES))
        app.router.add_get("/api/v1/pods", self._all_pods)
        app.router.add_get("/api/v1/namespaces", self._namespaces)
        app.router.add_get("/api/v1/namespaces/{ns}/pods", self._pods)
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}", self._get_pod)
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}/log", self._log)
        app.router.add_route("*", "/api/v1/namespaces/{ns}/pods/{name}/exec", self._exec)
        app.router.add_route("*", "/api/v1/namespaces/{ns}/pods/{name}/attach", self._exec)
        app.router.add_get("/api/v1/namespaces/{ns}/secrets/{name}", self._secret)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(self.cert, self.key)
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        self.requests.append({"method": request.method, "path": request.path, "query": request.query_string,
                              "authorization": request.headers.get("Authorization", ""),
                              "impersonate": [h for h in request.headers if h.lower().startswith("impersonate-")]})
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        return await handler(request)

    async def _not_found(self, request):
        return _status(404, "NotFound", "the server could not find the requested resource")

    # -- objects -----------------------------------------------------------------------------------

    async def _all_pods(self, request):
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                                  "items": [_pod(ns, n) for ns, names in PODS.items() for n in names]})

    async def _namespaces(self, request):
        return web.json_response({"kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                                  "items": [{"metadata": {"name": ns}, "status": {"phase": "Active"}} for ns in PODS]})

    async def _pods(self, request):
        ns = request.match_info["ns"]
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                                  "items": [_pod(ns, n) for n in PODS.get(ns, [])]})

    def _known(self, request) -> tuple[str, str] | None:
        ns, name = request.match_info["ns"], request.match_info["name"]
        return (ns, name) if name in PODS.get(ns, []) else None

    async def _get_pod(self, request):
        known = self._known(request)
        if not known:
            return _status(404, "NotFound", f'pods "{request.match_info["name"]}" not found')
        return web.json_response(_pod(*known))

    async def _log(self, request):
        return web.Response(text=f"log line of {request.match_info['name']}\n")

    async def _secret(self, request):
        return web.json_response({"kind": "Secret", "apiVersion": "v1", "metadata": {"name": SECRET_NAME},
                                  "data": {"password": "aHVudGVyMg=="}})

    # -- exec / attach ---------------------------------------------------------------------------------

    async def _exec(self, request: web.Request):
        if not self._known(request):
            return _status(404, "NotFound", f'pods "{request.match_info["name"]}" not found')
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return _status(400, "BadRequest", "this stand-in speaks WebSocket only")
        offered = ch.offered_protocols(request.headers.get("Sec-WebSocket-Protocol"))
        protocol = ch.pick_protocol(offered)
        if protocol is None:
            return _status(400, "BadRequest", f"unsupported subprotocols {offered}")
        q = request.query
        command = q.getall("command", []) if request.path.endswith("/exec") else ["sh"]
        tty = q.get("tty") == "true"
        stdin = q.get("stdin") == "true"
        ws = web.WebSocketResponse(protocols=(protocol,))
        await ws.prepare(request)
        await Process(ws, protocol, command, tty, stdin, self.workdir, self.run_as).run()
        return ws


class Process:
    """One command behind one exec WebSocket."""

    def __init__(self, ws, protocol, command, tty, stdin, cwd, run_as=None) -> None:
        self.ws, self.protocol, self.command, self.tty, self.stdin, self.cwd = ws, protocol, command, tty, stdin, cwd
        self.account = {"user": run_as, "group": run_as} if run_as else {}
        self.send_lock = asyncio.Lock()

    async def send(self, channel: int, data: bytes) -> None:
        async with self.send_lock:
            if not self.ws.closed:
                await self.ws.send_bytes(ch.encode(channel, data))

    async def run(self) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.cwd), "PS1": "$ ", "TERM": "xterm",
               "ENV": ""}
        loop = asyncio.get_running_loop()
        try:
            if self.tty:
                master, slave = pty.openpty()
                proc = subprocess.Popen(self.command, stdin=slave, stdout=slave, stderr=slave, cwd=self.cwd, env=env,
                                        start_new_session=True, **self.account, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
                os.close(slave)
                readers = [loop.run_in_executor(None, self._pump_fd, loop, master, ch.STDOUT)]
                write_in = lambda data: os.write(master, data)  # noqa: E731
                close_in = lambda: None  # noqa: E731 - a terminal has no EOF of its own; ^D goes through as data
            else:
                master = None
                proc = subprocess.Popen(self.command, stdin=subprocess.PIPE if self.stdin else subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.cwd, env=env,
                                        **self.account)
                readers = [loop.run_in_executor(None, self._pump_fd, loop, proc.stdout.fileno(), ch.STDOUT),
                           loop.run_in_executor(None, self._pump_fd, loop, proc.stderr.fileno(), ch.STDERR)]
                write_in = (lambda data: (proc.stdin.write(data), proc.stdin.flush())) if self.stdin else (lambda data: None)
                close_in = (lambda: proc.stdin.close()) if self.stdin else (lambda: None)
        except OSError as exc:
            await self.send(ch.ERROR, json.dumps({"metadata": {}, "status": "Failure", "reason": "InternalError",
                                                  "message": f"exec: {exc}"}).encode())
            await self.ws.close()
            return
        inbound = asyncio.create_task(self._inbound(proc, master, write_in, close_in))
        await asyncio.gather(*readers)
        code = await loop.run_in_executor(None, proc.wait)
        inbound.cancel()
        if master is not None:
            os.close(master)
        await self.send(ch.ERROR, json.dumps(ch.exit_status_object(code if code >= 0 else 128 - code)).encode())
        await self.ws.close()

    def _pump_fd(self, loop, fd: int, channel: int) -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the PTY's last writer is gone
                return
            if not data:
                return
            asyncio.run_coroutine_threadsafe(self.send(channel, data), loop).result()

    async def _inbound(self, proc, master, write_in, close_in) -> None:
        async for message in self.ws:
            if message.type not in (web.WSMsgType.BINARY, web.WSMsgType.TEXT) or not message.data:
                continue  # text frames too, as kube-apiserver reads them (the Python client sends str as text)
            frame = ch.parse(message.data.encode() if isinstance(message.data, str) else message.data)
            try:
                if frame.channel == ch.STDIN and frame.payload:
                    await asyncio.to_thread(write_in, frame.payload)
                elif frame.channel == ch.RESIZE and master is not None:
                    size = ch.parse_resize(frame.payload)
                    if size:
                        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
                elif frame.channel == ch.CLOSE and self.protocol == ch.V5 and frame.payload[:1] == bytes([ch.STDIN]):
                    await asyncio.to_thread(close_in)
            except (OSError, ValueError):
                pass
        if proc.poll() is None:  # the client went away
            proc.kill()
