"""The Kubernetes adapter: bearer-token sign-in, read-only pass-through, and the exec/attach relay.

    kubectl ──https──▶ /targets/<target>/api/... ──▶ K8sGateway ──https──▶ API server (held credential)
                                                     └─ ExecRelay per exec/attach ──wss──▶ pods/exec

The kubeconfig's server URL names the target (``https://broker:8443/targets/gke-prod``);
kubectl appends the API paths. The bearer token is the caller's OIDC token, checked
by functions/authorize like every other protocol's; upstream the broker sends its
own held credential and strips anything the client could use to act as someone
else (Impersonate-* headers never pass).

Each exec or attach is one jitgate session: the command passes the shell guardrails
(``Session.decide_command``), the namespace and pod must be allowed by the target,
a protected namespace turns an allowed command into one that needs approval, and
the streams are recorded as an asciicast terminal (``term.*`` events) with the exit
status from the status stream. Read-only calls of one person on one target share a
session that closes after API_SESSION_IDLE seconds without calls.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import shlex
import time
from dataclasses import dataclass

import aiohttp
import yarl
from aiohttp import web

from broker.authz import Refused
from broker.k8s import channels as ch
from broker.k8s.requests import ApiRequest, is_protected, namespace_allowed, parse_request, refusal
from broker.k8s.upstream import CredentialError, HeldCredential, ca_pem_of, parse_credential, ssl_context
from broker.session import Session, Verdict
from jitgate.logs import log
from jitgate.recording.asciicast import TERM_OUTPUT, TERM_RESIZE, TERM_START, Utf8Stream

logger = logging.getLogger("jitgate.broker.k8s")

TERM_INPUT = "term.input"  # stdin as asciicast "i" events (not replayed: a terminal echoes what matters)
API_SESSION_IDLE = 60
# Without a terminal, each stream is recorded up to this many bytes; beyond it only counts and SHA-256.
EXEC_RECORD_LIMIT = 1024 * 1024
MAX_MESSAGE = 16 * 1024 * 1024
# Response headers of the API server that mean something to kubectl.
PASSED_RESPONSE_HEADERS = ("Content-Type", "Audit-Id", "Warning", "X-Kubernetes-Pf-Flowschema-Uid",
                           "X-Kubernetes-Pf-Prioritylevel-Uid")
PASSED_REQUEST_HEADERS = ("Accept", "Content-Type", "User-Agent")
HTTP_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 502: "BadGateway",
                503: "ServiceUnavailable"}
TARGET_FORM = "https://<broker>:<port>/targets/<target> (`jitgate kubeconfig --target NAME` writes it)"


def status_response(code: int, message: str, *, reason: str | None = None) -> web.Response:
    body = ch.status_object(message, reason=reason or HTTP_REASONS.get(code, "Forbidden"), code=code)
    return web.json_response(body, status=code)


def _bearer(request: web.Request) -> str:
    kind, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if kind.lower() == "bearer" else ""


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


@dataclass
class ApiSession:
    session: Session
    last_used: float


class K8sGateway:
    """What the listener shares with every request: the broker context, upstream clients, live sessions."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.http: aiohttp.ClientSession | None = None
        self.api_sessions: dict[tuple[str, str], ApiSession] = {}
        self.relays: set[ExecRelay] = set()
        self._upstreams: dict[str, tuple[tuple, HeldCredential, object]] = {}
        self._sweeper: asyncio.Task | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_MESSAGE)
        app.router.add_route("*", r"/targets/{target}{tail:(/.*)?}", self.handle)
        app.router.add_route("*", r"/{tail:.*}", self.no_target)
        return app

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=15))
        self._sweeper = asyncio.create_task(self._sweep())

    async def stop(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
        for relay in list(self.relays):
            await relay.abort("broker shutting down")
        for key in list(self.api_sessions):
            await self._close_api_session(key, "broker shutting down")
        if self.http:
            await self.http.close()

    # -- routing -----------------------------------------------------------------------------

    async def no_target(self, request: web.Request) -> web.Response:
        return status_response(404, f"jitgate: the server URL must name a target: {TARGET_FORM}", reason="NotFound")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        target_name = request.match_info["target"]
        path = request.match_info["tail"] or "/"
        raw = request.rel_url.raw_path
        if "//" in raw or any(seg in (".", "..") for seg in raw.split("/")) or "%2f" in raw.lower() or "%2e" in raw.lower():
            # The path is classified decoded and forwarded as sent: nothing the two could read differently passes.
            return status_response(400, "jitgate: the request path has empty, '.', '..' or encoded '/' segments")
        token = _bearer(request)
        if not token:
            return status_response(401, "jitgate: send your OIDC token as the bearer token (jitgate kubeconfig writes a kubeconfig that does)")
        try:
            grant = await self.ctx.authz.authorize(token, target_name, "")
        except Refused as exc:
            code = {"invalid_token": 401, "unknown_target": 404, "unavailable": 503}.get(exc.code, 403)
            log(logger, logging.INFO, "kubernetes request refused", target=target_name, code=exc.code, client=request.remote)
            return status_response(code, f"jitgate: {exc.reason}")
        policy = self.ctx.policy.policy
        target = policy.target(target_name)
        principal = grant.principal
        if target is None or target.kind != "kubernetes":
            return status_response(404, f"jitgate: target {target_name!r} is not a Kubernetes target")
        if not target.allow.admits(principal.username, principal.groups):
            return status_response(403, f"jitgate: {principal.username} may no longer reach {target_name!r}")
        api = parse_request(request.method, path, dict(request.query))
        client = f"{request.remote}"
        if api.is_exec:
            relay = ExecRelay(self, request, principal, target_name, policy, api, client)
            self.relays.add(relay)
            try:
                return await relay.run()
            finally:
                self.relays.discard(relay)
        session = self._api_session(principal, target_name, policy, client)
        why = refusal(target_name, target, api)
        statement = f"{request.method} {request.path_qs.split('/targets/' + target_name, 1)[-1]}"
        if why:
            verdict = Verdict("deny", (api.verb,), (), why)
            sid = session.record_statement(statement, protocol="k8s-api", verdict=verdict)
            session.record_result(sid, started=time.perf_counter(), rows=None, tag="403", error=why)
            return status_response(403, why)
        return await self._pass_through(request, session, target_name, target, path, statement, api)

    # -- read-only pass-through ---------------------------------------------------------------

    def _api_session(self, principal, target_name: str, policy, client: str) -> Session:
        key = (principal.username.lower(), target_name)  # exec plugins mint a token per kubectl call
        entry = self.api_sessions.get(key)
        if entry is None:
            session = Session.open(principal=principal, target_name=target_name, policy=policy, client=client,
                                   kind="kubernetes", settings=self.ctx.settings, backends=self.ctx.backends,
                                   live=self.ctx.pg.live_sessions)
            session.recorder.event("k8s.api", purpose="read-only API calls of one person on this target")
            entry = self.api_sessions[key] = ApiSession(session, time.monotonic())
        entry.last_used = time.monotonic()
        return entry.session

    async def _close_api_session(self, key, reason: str) -> None:
        entry = self.api_sessions.pop(key, None)
        if entry is None:
            return
        try:
            await entry.session.close(reason)
        finally:
            self.ctx.pg.live_sessions.discard(entry.session.session_id)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(5)
            now = time.monotonic()
            for key, entry in list(self.api_sessions.items()):
                if now - entry.last_used > API_SESSION_IDLE:
                    await self._close_api_session(key, f"no API calls for {API_SESSION_IDLE}s")

    async def upstream(self, target_name: str, target) -> tuple[HeldCredential, object]:
        """The held credential and TLS context of a target, loaded once per (address, credential, CA)."""
        identity = (target.address, target.credential, target.ca_certificate)
        cached = self._upstreams.get(target_name)
        if cached and cached[0] == identity:
            return cached[1], cached[2]
        secrets = self.ctx.backends.secrets

        def load():
            raw = secrets.get(target.credential) if target.credential else None
            return parse_credential(raw), ssl_context(ca_pem_of(target.ca_certificate, secrets))

        try:
            credential, tls = await asyncio.to_thread(load)
        except CredentialError:
            raise
        except Exception as exc:
            log(logger, logging.ERROR, "held credential unavailable", target=target_name, error=str(exc))
            raise CredentialError(f"the gateway cannot load its credential or CA for target {target_name!r}; "
                                  "an administrator must fix the reference") from None
        self._upstreams[target_name] = (identity, credential, tls)
        return credential, tls

    def upstream_url(self, target, request: web.Request) -> yarl.URL:
        """The same path and query as the client sent, still percent-encoded, minus /targets/<name>."""
        raw = request.rel_url.raw_path
        path = "/" + raw.split("/", 3)[3] if raw.count("/") >= 3 else "/"
        query = request.rel_url.raw_query_string
        return yarl.URL(f"https://{target.address}{path}" + (f"?{query}" if query else ""), encoded=True)

    async def _pass_through(self, request: web.Request, session: Session, target_name: str, target, path: str,
                            statement: str, api: ApiRequest) -> web.StreamResponse:
        started = time.perf_counter()
        sid = session.record_statement(statement, protocol="k8s-api", verdict=Verdict("allow", (api.verb,)))
        try:
            credential, tls = await self.upstream(target_name, target)
            headers = {h: request.headers[h] for h in PASSED_REQUEST_HEADERS if h in request.headers}
            headers["Authorization"] = await credential.header()
        except CredentialError as exc:
            session.record_result(sid, started=started, rows=None, tag="503", error=str(exc))
            return status_response(503, f"jitgate: {exc}")
        try:
            async with self.http.request(request.method, self.upstream_url(target, request), headers=headers,
                                         ssl=tls, allow_redirects=False) as upstream:
                response = web.StreamResponse(status=upstream.status)
                for name in PASSED_RESPONSE_HEADERS:
                    if name in upstream.headers:
                        response.headers[name] = upstream.headers[name]
                await response.prepare(request)
                size = 0
                async for chunk in upstream.content.iter_any():
                    size += len(chunk)
                    await response.write(chunk)
                await response.write_eof()
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            session.record_result(sid, started=started, rows=None, tag="502", error=f"{type(exc).__name__}: {exc}")
            if "response" in locals() and response.prepared:
                raise
            return status_response(502, f"jitgate: the API server of target {target_name!r} is unreachable "
                                        f"({type(exc).__name__}: {exc})", reason="ServiceUnavailable")
        session.record_result(sid, started=started, rows=None, tag=str(upstream.status),
                              error=None if upstream.status < 400 else f"HTTP {upstream.status}")
        session.recorder.event("k8s.response", id=sid, status=upstream.status, bytes=size)
        return response


class UpstreamRefused(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class ExecRelay:
    """One ``pods/exec`` or ``pods/attach``: decide, (wait for approval), connect, relay, record."""

    def __init__(self, gateway: K8sGateway, request: web.Request, principal, target_name: str, policy,
                 api: ApiRequest, client: str) -> None:
        self.gw = gateway
        self.ctx = gateway.ctx
        self.request = request
        self.principal = principal
        self.target_name = target_name
        self.policy = policy
        self.api = api
        self.client = client
        query = request.query
        self.command = list(query.getall("command", [])) if api.subresource == "exec" else []
        self.container = query.get("container")
        self.tty = _flag(query.get("tty"))
        self.streams = {name: _flag(query.get(name)) for name in ("stdin", "stdout", "stderr")}
        self.offered = ch.offered_protocols(request.headers.get("Sec-WebSocket-Protocol"))
        self.session: Session | None = None
        self.ws: web.WebSocketResponse | None = None
        self.up: aiohttp.ClientWebSocketResponse | None = None
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.client_gone = asyncio.Event()
        self.statement_id: int | None = None
        self.started = time.monotonic()
        self.perf_started = time.perf_counter()
        self.size = (80, 24)
        self.term_started = False
        self.outcome: ch.Outcome | None = None
        self.counts = {"stdin": 0, "stdout": 0, "stderr": 0}
        self.digests = {s: hashlib.sha256() for s in self.counts}
        self.recorded = {s: 0 for s in self.counts}
        self.decoders = {s: Utf8Stream() for s in self.counts}
        self.closed_streams: list[int] = []
        self.end_reason: str | None = None

    # -- the request -----------------------------------------------------------------------------

    def statement(self) -> str:
        """What an approver reads and what an approval is bound to (its SHA-256)."""
        api = self.api
        container = f" -c {shlex.quote(self.container)}" if self.container else ""
        letters = ("i" if self.streams["stdin"] else "") + ("t" if self.tty else "")
        flags = f" -{letters}" if letters else ""
        if api.subresource == "attach":
            return f"kubectl attach{flags} -n {shlex.quote(api.namespace)} {shlex.quote(api.name)}{container}"
        return (f"kubectl exec{flags} -n {shlex.quote(api.namespace)} {shlex.quote(api.name)}{container} -- "
                f"{shlex.join(self.command)}")

    async def decide(self) -> Verdict:
        session, target, api = self.session, self.session.target, self.api
        if not api.namespace or not api.name:
            return Verdict("deny", ("namespace",), (), f"jitgate: {api.subresource} needs a namespaced pod "
                           "(/api/v1/namespaces/NS/pods/POD/...)")
        if not namespace_allowed(list(target.namespaces), api.namespace, api.name):
            return Verdict("deny", ("namespace",), (), f"jitgate: {api.subresource} into pod {api.namespace}/{api.name} is "
                           f"not allowed on target {self.target_name!r} (allowed: {', '.join(target.namespaces)})")
        if api.subresource == "attach":
            verdict = await session.decide_command_async("sh")  # attaching to the main process is an interactive shell
        elif not self.command:
            return Verdict("deny", ("unclassified",), (), "jitgate: exec needs a command (kubectl exec POD -- COMMAND)")
        else:
            verdict = await session.decide_command_async(self.command)
        if verdict.action == "allow" and is_protected(list(target.protected_namespaces), api.namespace):
            verdict = Verdict("approve", verdict.classes + ("protected_namespace",),
                              verdict.reasons + (f"namespace {api.namespace!r} is protected",),
                              f"jitgate: {api.subresource} into protected namespace {api.namespace!r} on target "
                              f"{self.target_name!r} needs approval")
        return verdict

    async def run(self) -> web.StreamResponse:
        session = self.session = Session.open(
            principal=self.principal, target_name=self.target_name, policy=self.policy, client=self.client,
            kind="kubernetes", settings=self.ctx.settings, backends=self.ctx.backends, live=self.ctx.pg.live_sessions)
        session.approval_step = self.ctx.pg.approval_step
        session.use_masking(self.ctx.pg.masker_factory)
        try:
            return await self._run()
        finally:
            self._finish_record()
            try:
                await session.close(self.end_reason or "exec ended")
            finally:
                self.ctx.pg.live_sessions.discard(session.session_id)

    async def _run(self) -> web.StreamResponse:
        session, api = self.session, self.api
        session.recorder.event(
            "k8s.exec", subresource=api.subresource, namespace=api.namespace, pod=api.name, container=self.container,
            command=[session.client_text_for_record(c) for c in self.command], tty=self.tty, **self.streams,
            protocols=[p for p in self.offered if p in ch.SUPPORTED])  # a token may ride in an offered subprotocol
        statement = self.statement()
        verdict = await self.decide()
        websocket = self.request.headers.get("Upgrade", "").lower() == "websocket"
        protocol = ch.pick_protocol(self.offered)
        if verdict.action != "deny" and not websocket:
            verdict = Verdict("deny", verdict.classes, verdict.reasons,
                              "jitgate relays exec and attach over WebSocket (v5.channel.k8s.io, v4.channel.k8s.io) only; "
                              "use kubectl 1.30 or newer without KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false")
        elif verdict.action != "deny" and protocol is None:
            verdict = Verdict("deny", verdict.classes, verdict.reasons,
                              f"jitgate: offer the subprotocol {ch.V5} or {ch.V4}")
        if verdict.action == "deny":
            self._record_decision(statement, verdict)
            self.end_reason = "refused"
            return status_response(403, verdict.message)
        if verdict.action == "approve":
            return await self._with_approval(statement, verdict, protocol)
        self._record_decision(statement, verdict)
        try:
            self.up = await self._connect([p for p in ch.SUPPORTED if p in self.offered])
        except UpstreamRefused as exc:
            self._record_failure(exc.message)
            return status_response(exc.code, exc.message)
        self.ws = await self._accept(self.up.protocol)
        self._start_reader()
        await self._relay()
        return self.ws

    async def _with_approval(self, statement: str, verdict: Verdict, protocol: str) -> web.StreamResponse:
        """Accept the WebSocket first so the person sees that the command waits, then hold it."""
        session = self.session
        self.ws = await self._accept(protocol)
        reader = self._start_reader()
        session.notify = self.notice
        await self.notice(verdict.message + "; waiting for an approver...")
        resolving = asyncio.create_task(session.resolve(statement, verdict))
        gone = asyncio.create_task(self.client_gone.wait())
        await asyncio.wait({resolving, gone}, return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if not resolving.done():
            resolving.cancel()  # the client went away: the approval step cancels its request
            try:
                await resolving
            except (asyncio.CancelledError, Exception):
                pass
            self._record_decision(statement, Verdict("deny", verdict.classes, verdict.reasons,
                                                     "jitgate: the client left while the command waited for approval"))
            self.end_reason = "client left while waiting for approval"
            return self.ws
        final = resolving.result()
        self._record_decision(statement, final)
        if not final.allowed:
            self.end_reason = "refused"
            await self._fail(final.message or "jitgate: command refused", code=403, reason="Forbidden")
            reader.cancel()
            return self.ws
        try:
            self.up = await self._connect([protocol])
        except UpstreamRefused as exc:
            self._record_failure(exc.message)
            await self._fail(exc.message, code=exc.code, reason=HTTP_REASONS.get(exc.code, "InternalError"))
            return self.ws
        await self._relay()
        return self.ws

    # -- pipeline helpers ---------------------------------------------------------------------------

    def _record_decision(self, statement: str, verdict: Verdict) -> None:
        session = self.session
        self.statement_id = session.record_statement(statement, protocol="k8s-exec", verdict=verdict)
        if not verdict.allowed:
            session.record_result(self.statement_id, started=self.perf_started, rows=None, tag=None,
                                  error=verdict.message or "refused")
            self.statement_id = None

    def _record_failure(self, message: str) -> None:
        self.session.recorder.event("upstream.refused", reason=message)
        if self.statement_id is not None:
            self.session.record_result(self.statement_id, started=self.perf_started, rows=None, tag=None, error=message)
            self.statement_id = None
        self.end_reason = f"upstream refused: {message}"

    async def notice(self, text: str) -> None:
        """A message from the gateway on the client's stderr (stdout with a terminal: kubectl drops stderr then)."""
        if self.ws is None or self.ws.closed:
            return
        self.session.recorder.event("k8s.notice", text=text)
        stream = ch.STDERR if self.streams["stderr"] and not self.tty else ch.STDOUT
        end = "\r\n" if self.tty else "\n"
        try:
            await self.ws.send_bytes(ch.encode(stream, (text.replace("\n", end) + end).encode()))
        except (ConnectionError, RuntimeError):
            pass

    async def _fail(self, message: str, *, code: int, reason: str) -> None:
        """Tell kubectl on the status stream; it prints ``error: <message>``."""
        try:
            await self.ws.send_bytes(ch.status_frame(ch.status_object(message, reason=reason, code=code)))
            await self.ws.close()
        except (ConnectionError, RuntimeError):
            pass

    async def _accept(self, protocol: str) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=(protocol,), max_msg_size=MAX_MESSAGE, autoping=True, heartbeat=None)
        await ws.prepare(self.request)
        return ws

    async def _connect(self, protocols: list[str]) -> aiohttp.ClientWebSocketResponse:
        target = self.session.target
        try:
            credential, tls = await self.gw.upstream(self.target_name, target)
            headers = {"Authorization": await credential.header()}
        except CredentialError as exc:
            raise UpstreamRefused(503, f"jitgate: {exc}") from None
        url = self.gw.upstream_url(target, self.request)
        try:
            up = await self.gw.http.ws_connect(url, protocols=protocols, headers=headers, ssl=tls,
                                               max_msg_size=MAX_MESSAGE, autoping=True, heartbeat=30)
        except aiohttp.WSServerHandshakeError as exc:
            what = {404: f"pod {self.api.namespace}/{self.api.name} not found",
                    403: "the gateway's credential may not do this on the cluster"}.get(exc.status, exc.message)
            raise UpstreamRefused(exc.status if exc.status in HTTP_REASONS else 502,
                                  f"jitgate: the API server of target {self.target_name!r} answered {exc.status}: {what}") from None
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise UpstreamRefused(503, f"jitgate: the API server of target {self.target_name!r} is unreachable "
                                       f"({type(exc).__name__}: {exc})") from None
        if up.protocol not in protocols:
            await up.close()
            raise UpstreamRefused(502, f"jitgate: the API server of target {self.target_name!r} did not accept "
                                       f"{' or '.join(protocols)}")
        self.session.recorder.event("upstream.connected", address=target.address, protocol=up.protocol)
        self.started = time.monotonic()
        return up

    # -- the relay ------------------------------------------------------------------------------------

    def _start_reader(self) -> asyncio.Task:
        async def read() -> None:
            try:
                async for message in self.ws:
                    await self.inbox.put(message)
            finally:
                self.client_gone.set()
                await self.inbox.put(None)

        return asyncio.create_task(read())

    async def _relay(self) -> None:
        to_upstream = asyncio.create_task(self._client_to_upstream())
        try:
            await self._upstream_to_client()
        except (ConnectionError, RuntimeError) as exc:  # the client vanished mid-stream
            self.end_reason = self.end_reason or f"client connection lost ({type(exc).__name__})"
        finally:
            to_upstream.cancel()
            if self.ws is not None and not self.ws.closed:
                await self.ws.close(code=self.up.close_code or aiohttp.WSCloseCode.OK)
            if self.up is not None and not self.up.closed:
                await self.up.close()

    async def _client_to_upstream(self) -> None:
        try:
            await self._pump_client()
        except (ConnectionError, RuntimeError) as exc:  # the upstream went away; its reader ends the relay
            self.end_reason = self.end_reason or f"upstream connection lost ({type(exc).__name__})"

    async def _pump_client(self) -> None:
        while True:
            message = await self.inbox.get()
            if message is None:
                if self.end_reason is None and self.outcome is None:
                    self.end_reason = "client closed the connection"
                await self.up.close()
                return
            if message.type == aiohttp.WSMsgType.BINARY:
                self._from_client(message.data)
                await self.up.send_bytes(message.data)
            elif message.type == aiohttp.WSMsgType.TEXT:  # the Python client sends str stdin as text frames
                self._from_client(message.data.encode())
                await self.up.send_str(message.data)

    async def _upstream_to_client(self) -> None:
        async for message in self.up:
            if message.type == aiohttp.WSMsgType.BINARY:
                self._from_upstream(message.data)
                await self.ws.send_bytes(message.data)
            elif message.type == aiohttp.WSMsgType.TEXT:
                await self.ws.send_str(message.data)
            elif message.type == aiohttp.WSMsgType.ERROR:
                self.end_reason = f"upstream error: {self.up.exception()}"
                break

    async def abort(self, reason: str) -> None:
        self.end_reason = reason
        await self.notice(f"jitgate: {reason}")
        if self.up is not None:
            await self.up.close()
        if self.ws is not None:
            await self.ws.close()

    # -- recording ------------------------------------------------------------------------------------

    def _t(self) -> float:
        return round(time.monotonic() - self.started, 6)

    def _term_start(self) -> None:
        if self.term_started:
            return
        self.term_started = True
        self.session.recorder.event(
            TERM_START, channel=0, width=self.size[0], height=self.size[1], term="xterm" if self.tty else None,
            command=self.session.client_text_for_record(shlex.join(self.command)) if self.command else None, tty=self.tty)

    def _record_stream(self, stream: str, data: bytes) -> None:
        self.counts[stream] += len(data)
        self.digests[stream].update(data)
        if not self.tty:
            left = EXEC_RECORD_LIMIT - self.recorded[stream]
            if left <= 0:
                return
            data = data[:left]
            self.recorded[stream] += len(data)
        text = self.decoders[stream].feed(data)
        if not text:
            return
        self._term_start()
        text = self.session.mask_for_record(text)
        if stream == "stdin":
            if self.tty:
                return  # keystrokes can be passwords typed at no-echo prompts: counted and hashed, not kept
            self.session.recorder.event(TERM_INPUT, channel=0, event=[self._t(), "i", text])
        elif self.tty:
            self.session.recorder.event(TERM_OUTPUT, channel=0, event=[self._t(), "o", text])
        else:
            self.session.recorder.event(TERM_OUTPUT, channel=0, stream=stream, event=[self._t(), "o", text])

    def _from_client(self, data: bytes) -> None:
        try:
            frame = ch.parse(data)
        except ch.ChannelError:
            return
        if frame.channel == ch.STDIN:
            self._record_stream("stdin", frame.payload)
        elif frame.channel == ch.RESIZE:
            size = ch.parse_resize(frame.payload)
            if size:
                first = not self.term_started
                self.size = size
                self._term_start()
                if not first:
                    self.session.recorder.event(TERM_RESIZE, channel=0, event=[self._t(), "r", f"{size[0]}x{size[1]}"])
        elif frame.channel == ch.CLOSE and frame.payload:
            self.closed_streams.append(frame.payload[0])
            self.session.recorder.event("k8s.stream_closed", stream=frame.payload[0], t=self._t())

    def _from_upstream(self, data: bytes) -> None:
        try:
            frame = ch.parse(data)
        except ch.ChannelError:
            return
        if frame.channel == ch.STDOUT:
            self._record_stream("stdout", frame.payload)
        elif frame.channel == ch.STDERR:
            self._record_stream("stderr", frame.payload)
        elif frame.channel == ch.ERROR and frame.payload:
            self.outcome = ch.parse_status(frame.payload)

    def _finish_record(self) -> None:
        session = self.session
        if session is None or self.up is None:
            return
        for stream, decoder in self.decoders.items():
            rest = decoder.flush()
            if rest and stream != "stdin":
                self._term_start()
                session.recorder.event(TERM_OUTPUT, channel=0, event=[self._t(), "o", session.mask_for_record(rest)])
        outcome = self.outcome
        fields = {
            "exit_status": outcome.exit_code if outcome else None,
            "status": outcome.status if outcome else None,
            "reason": outcome.reason if outcome else None,
            "message": session.mask_for_record(outcome.message) if outcome and outcome.message else None,
            "bytes_in": self.counts["stdin"], "bytes_out": self.counts["stdout"], "bytes_err": self.counts["stderr"],
            "stdout_sha256": self.digests["stdout"].hexdigest(), "stderr_sha256": self.digests["stderr"].hexdigest(),
            "stdin_sha256": self.digests["stdin"].hexdigest(),
            "duration_ms": round((time.monotonic() - self.started) * 1000, 3),
        }
        if self.end_reason:
            fields["end"] = self.end_reason
        if not self.tty and any(self.recorded[s] >= EXEC_RECORD_LIMIT for s in self.recorded):
            fields["output_truncated_at"] = EXEC_RECORD_LIMIT
        session.recorder.event("k8s.exit", **fields)
        if self.statement_id is not None:
            if outcome is None:
                tag, error = "closed", self.end_reason or "closed without a status"
            elif outcome.exit_code is not None:
                tag = f"exit {outcome.exit_code}"
                error = None if outcome.exit_code == 0 else tag
            else:
                tag, error = outcome.reason or "failure", outcome.message
            session.record_result(self.statement_id, started=self.perf_started, rows=None, tag=tag, error=error)
        if outcome is not None and not self.end_reason:
            self.end_reason = tag
