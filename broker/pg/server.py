"""The PostgreSQL listener: TLS, OIDC sign-in, held-credential login upstream, and the relay.

Only bytes move here; the codec (broker/pg/codec.py) parses and builds messages,
and the session pipeline (broker/session.py) decides and records.

Denying a statement in the middle of a pipelined stream must keep the client's
and the server's protocol state in step. Instead of forging responses out of
order, the broker forwards a harmless marker statement in place of the refused
one (it fails in PostgreSQL's parser, so nothing runs), and rewrites the
upstream's ErrorResponse for that marker into the refusal. The upstream thus
keeps its own bookkeeping (skip-until-Sync, aborted transaction) exactly as for
any failed statement.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import ssl
import time
from dataclasses import dataclass, field

from broker import metrics
from broker.authz import AuthorizeClient, Refused
from broker.pg import codec
from broker.masking import NOT_PLANNED
from broker.pg.lineage_step import UNFOLLOWED
from broker.pg.masking_step import copy_plan_for, follow_for_relay, mask_rows, statement_error_fields, stream_large_row
from broker.pg.measure import UNMEASURABLE_EXECUTE, Batch, RowLimit
from broker.pg.upstream import UpstreamLoginError, open_upstream
from broker.session import Session, Verdict, new_backend_key
from jitgate.masking import MalformedRow, MaskingRefused
from jitgate.backends import Backends
from jitgate.guardrails.pinned import PINNED_SETTINGS, startup_refusal, unexpected_report
from jitgate.logs import log
from jitgate.policy import PolicyHolder, Target
from jitgate.recording.spool import describe_params
from jitgate.settings import Settings

logger = logging.getLogger("jitgate.broker.pg")

# Startup parameters the client may pass through to the upstream. Others (user,
# database, replication, options with -c role settings...) are the broker's business.
FORWARDED_PARAMS = {
    "application_name",
    "client_encoding",
    "datestyle",
    "timezone",
    "extra_float_digits",
    "intervalstyle",
    "search_path",
    "standard_conforming_strings",
    "bytea_output",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
}
READ_SIZE = 256 * 1024
# A batch with a row-writing Execute is held until its Sync (broker/pg/measure.py); past this
# size the Execute is refused instead of holding more.
MAX_HELD_BATCH = 16 * 1024 * 1024
# While a statement is held, how often the broker looks whether its client is still there.
CLIENT_GONE_CHECK_SECONDS = 0.5


class UnexpectedSetting(Exception):
    """The server reported a value of a pinned lexing setting that the gateway did not expect."""


class ClientError(Exception):
    """Refuse the client with this SQLSTATE and message, then close."""

    def __init__(self, message: str, code: str = "28000", hint: str = ""):
        super().__init__(message)
        self.code = code
        self.hint = hint


@dataclass(slots=True)
class Pending:
    """A statement sent upstream whose result has not come back yet."""

    statement_id: int
    started: float
    cycle: int
    simple: bool
    rows: int = 0
    tags: list = field(default_factory=list)
    error: str | None = None
    # Masking: which statement/portal produced the rows, and in which formats.
    statement: str = ""
    portal: str = ""
    result_formats: tuple = ()
    plan: object = None
    planned: bool = False
    copy_plan: object = None
    # Column lineage (masking): one per statement of a simple Query, or the prepared statement's.
    lineages: list = field(default_factory=list)
    noticed: bool = False
    uncounted: bool = False  # rows passed on whole: add the count of its CommandComplete
    sql: str = ""  # the text sent (masking: an error may keep only what this text holds)

    def lineage(self):
        """The lineage of the statement whose rows come next (None when lineage is not followed)."""
        index = len(self.tags) if self.simple else 0  # each statement of a Query ends with one CommandComplete
        if index < len(self.lineages) and self.lineages[index] is not None:
            return self.lineages[index]
        return UNFOLLOWED if self.lineages else None


@dataclass
class CancelRoute:
    host: str
    port: int
    pid: int
    secret: bytes
    connection: "PgConnection"


class PgBroker:
    def __init__(self, settings: Settings, backends: Backends, policy: PolicyHolder, authz: AuthorizeClient,
                 ssl_context: ssl.SSLContext | None):
        self.settings = settings
        self.backends = backends
        self.policy = policy
        self.authz = authz
        self.ssl_context = ssl_context
        self.cancel_routes: dict[tuple[int, bytes], CancelRoute] = {}
        self.live_sessions: set[str] = set()
        self.connections: set["PgConnection"] = set()
        self.approval_step = None
        self.masker_factory = None  # (target, principal) -> masker | None
        self.server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> asyncio.base_events.Server:
        self.server = await asyncio.start_server(self._accept, host, port, limit=READ_SIZE)
        return self.server

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = PgConnection(self, reader, writer)
        self.connections.add(connection)
        try:
            await connection.run()
        except Exception:
            logger.exception("connection handler failed")
        finally:
            self.connections.discard(connection)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let live sessions finish for up to ``timeout`` seconds, then close them."""
        if self.server:
            self.server.close()
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for connection in list(self.connections):
            connection.shutdown("broker shutting down")
        while self.connections and time.monotonic() < deadline + 5:
            await asyncio.sleep(0.05)


class PgConnection:
    def __init__(self, broker: PgBroker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.broker = broker
        self.c_reader, self.c_writer = reader, writer
        self.u_reader: asyncio.StreamReader | None = None
        self.u_writer: asyncio.StreamWriter | None = None
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.client = f"{peer[0]}:{peer[1]}"
        self.session: Session | None = None
        self.tls = False
        self.pending: collections.deque[Pending] = collections.deque()
        self.denials: collections.deque[tuple[int, str, bytes]] = collections.deque()
        self.client_cycle = 0  # Sync/Query messages sent upstream
        self.ready_cycle = 0  # ReadyForQuery messages received
        self.statements: dict[str, tuple[str, Verdict]] = {}
        self.portals: dict[str, tuple[str, tuple]] = {}
        self.key: tuple[int, bytes] | None = None
        self.upstream_key: codec.BackendKeyData | None = None
        self.target: Target | None = None
        self.hold: asyncio.Task | None = None
        # Masking bookkeeping: Describe requests in flight, and what their answers said.
        self.describes: collections.deque[tuple[int, str, str]] = collections.deque()
        # RowDescription payloads answering a Describe of a statement or portal, by name.
        self.statement_fields: dict[str, bytes] = {}
        self.portal_fields: dict[str, bytes] = {}
        self.checked_description = b""  # the last RowDescription payload read whole (it parsed)
        self.statement_lineages: dict[str, object] = {}
        self.copy_plan = None
        self._closing_reason: str | None = None
        # Client bytes read together with an earlier message, not yet handled.
        self.early = b""
        # Measured row limit: the runner, the run in flight (the pump routes to it), the
        # client's transaction status and how many client cycles the pump has answered.
        self.row_limit = RowLimit(self)
        self.measurement = None
        self.tx_status = "I"
        self.flushed_cycle = 0
        self.answered = asyncio.Event()
        # The open extended-protocol batch (since the last Sync), see measure.Batch.
        self.batch = Batch()
        self.held_out = b""  # a measured batch's bytes kept until its Sync arrives

    # -- helpers --------------------------------------------------------------------

    async def _send_client(self, data: bytes) -> None:
        self.c_writer.write(data)
        await self.c_writer.drain()

    async def _refuse(self, message: str, code: str = "28000", hint: str = "") -> None:
        try:
            await self._send_client(codec.build_error(message, code, "FATAL", hint=hint))
        except (ConnectionError, OSError):
            pass

    async def _notice(self, text: str) -> None:
        await self._send_client(codec.build_notice(text))

    def shutdown(self, reason: str) -> None:
        self._closing_reason = reason
        for w in (self.c_writer, self.u_writer):
            if w is not None:
                w.close()

    # -- startup --------------------------------------------------------------------

    async def _read_startup(self):
        buf = bytearray()
        while True:
            parsed = codec.parse_startup(buf)
            if parsed is None:
                chunk = await asyncio.wait_for(self.c_reader.read(codec.MAX_STARTUP_PACKET), timeout=30)
                if not chunk:
                    return None
                buf += chunk
                continue
            msg, used = parsed
            del buf[:used]
            self.early = bytes(buf)  # a client may pipeline its password (and more) after the startup packet
            if isinstance(msg, codec.SSLRequest):
                if buf:
                    raise codec.ProtocolError("data received after SSLRequest before the TLS handshake")
                if self.broker.ssl_context is None or self.tls:
                    await self._send_client(b"N")
                    continue
                await self._send_client(b"S")
                await self.c_writer.start_tls(self.broker.ssl_context)
                self.tls = True
                continue
            if isinstance(msg, codec.GSSENCRequest):
                await self._send_client(b"N")
                continue
            return msg

    async def _read_message(self, reader: codec.MessageReader, stream: asyncio.StreamReader, timeout: float = 60):
        """The client's next message; bytes after it stay in ``self.early`` for the relay."""
        reader.feed(self.early)
        self.early = b""
        while True:
            data, spans = reader.spans()
            if spans:
                kind, start, end = spans[0]
                self.early = data[end:] + reader.take()
                return chr(kind), data[start + 5 : end]
            chunk = await asyncio.wait_for(stream.read(READ_SIZE), timeout=timeout)
            if not chunk:
                raise ConnectionError("peer closed the connection")
            reader.feed(chunk)

    async def run(self) -> None:
        reason = "client closed the connection"
        try:
            startup = await self._read_startup()
            if startup is None:
                return
            if isinstance(startup, codec.CancelRequest):
                await self.broker_cancel(startup)
                return
            await self._login(startup)
            reason = await self._relay()
        except codec.ProtocolError as exc:
            log(logger, logging.WARNING, "protocol error from client", client=self.client, error=str(exc))
            await self._refuse(f"jitgate: protocol violation: {exc}", exc.sqlstate)
            reason = f"protocol error: {exc}"
        except ClientError as exc:
            log(logger, logging.INFO, "connection refused", client=self.client, reason=str(exc))
            if self.session is None:
                metrics.REFUSED_CONNECTIONS.labels("postgres", exc.code).inc()
            await self._refuse(str(exc), exc.code, exc.hint)
            reason = f"refused: {exc}"
        except (asyncio.TimeoutError, TimeoutError):
            reason = "timed out"
            await self._refuse("jitgate: timed out waiting for the client", "08006")
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            reason = f"connection lost: {type(exc).__name__}"
        finally:
            if self.key:
                self.broker.cancel_routes.pop(self.key, None)
            for w in (self.c_writer, self.u_writer):
                if w is not None:
                    w.close()
            if self.session:
                try:
                    await self.session.close(self._closing_reason or reason)
                finally:
                    self.broker.live_sessions.discard(self.session.session_id)

    async def _login(self, startup: codec.StartupMessage) -> None:
        settings = self.broker.settings
        if startup.protocol != codec.PROTOCOL_3_0:
            unsupported = [k for k in startup.params if k.startswith("_pq_.")]
            await self._send_client(codec.build_negotiate_protocol(0, unsupported))
        if "replication" in startup.params and startup.params["replication"].lower() not in ("false", "0", "off", "no"):
            raise ClientError("jitgate: replication connections are not allowed through the gateway", "28000")
        if settings.tls_required and not self.tls:
            raise ClientError(
                "jitgate: TLS is required; connect with sslmode=require (or prefer)", "28000",
                hint="psql \"host=... sslmode=require\"",
            )
        refusal = startup_refusal(startup.params)
        if refusal:
            raise ClientError(f"jitgate: {refusal}", "22023")
        target_name = startup.database
        user = startup.user
        if not user:
            raise ClientError("jitgate: the startup packet names no user; connect as your IdP username", "28000")
        await self._send_client(codec.AUTHENTICATION_CLEARTEXT)
        # An ID token with many groups runs to tens of KiB; 256 KiB still bounds a hostile client.
        kind, payload = await self._read_message(codec.MessageReader(256 * 1024), self.c_reader)
        if kind != "p":
            raise codec.ProtocolError(f"expected a password message, got {kind!r}")
        token = codec.parse_password(payload).strip()
        try:
            grant = await self.broker.authz.authorize(token, target_name, user)
        except Refused as exc:
            code = "57P03" if exc.code == "unavailable" else "28000"
            raise ClientError(f"jitgate: {exc.reason}", code) from None
        policy = self.broker.policy.policy
        target = policy.target(target_name)
        if target is None or target.kind != "postgres":
            raise ClientError(f"jitgate: target {target_name!r} is not a PostgreSQL target", "3D000")
        if not target.allow.admits(grant.principal.username, grant.principal.groups):
            raise ClientError(f"jitgate: {grant.principal.username} may no longer reach {target_name!r}", "28000")
        self.target = target
        self.session = Session.open(
            principal=grant.principal, target_name=target_name, policy=policy, client=self.client, kind="postgres",
            settings=settings, backends=self.broker.backends, live=self.broker.live_sessions,
        )
        self.session.approval_step = self.broker.approval_step
        self.session.recorder.batching = True
        self.session.notify = self._notice
        self.session.use_masking(self.broker.masker_factory)
        # The settings that decide how the server reads SQL are the gateway's, not the client's.
        params = {k: v for k, v in startup.params.items() if k.lower() in FORWARDED_PARAMS and k.lower() not in PINNED_SETTINGS}
        await self._connect_upstream(target, {**params, **PINNED_SETTINGS})

    async def _connect_upstream(self, target: Target, params: dict[str, str]) -> None:
        try:
            password = (await asyncio.to_thread(self.broker.backends.secrets.get, target.credential)).decode()
        except Exception as exc:
            log(logger, logging.ERROR, "held credential unavailable", target=self.session.target_name, error=str(exc))
            raise ClientError(
                f"jitgate: the gateway cannot load its credential for target {self.session.target_name!r}; "
                "an administrator must fix the credential reference", "28000") from None
        name = self.session.target_name
        try:
            upstream = await open_upstream(target, password, params,
                                           max_scram_iterations=self.broker.settings.pg_max_scram_iterations)
        except UpstreamLoginError as exc:
            log(logger, logging.ERROR, "upstream login failed", target=name, error=str(exc),
                sqlstate=exc.upstream_fields.get("C"), upstream_message=exc.upstream_fields.get("M"))
            raise ClientError(f"jitgate: target {name!r}: {exc}", exc.code) from None
        finally:
            del password
        self.u_reader, self.u_writer = upstream.reader, upstream.writer
        for raw in upstream.messages:
            if raw[:1] == b"S":
                problem = unexpected_report(*codec.parse_parameter_status(raw[5:]))
                if problem:
                    raise ClientError(f"jitgate: target {name!r}: {problem}", "08P01")
        to_client = [codec.AUTHENTICATION_OK, *upstream.messages]
        if upstream.key is not None:
            self.upstream_key = upstream.key
            self.key = new_backend_key(upstream.key.pid)
            while self.key in self.broker.cancel_routes:  # same pid on another target, same secret: draw again
                self.key = new_backend_key(upstream.key.pid)
            self.broker.cancel_routes[self.key] = CancelRoute(target.host, target.port, upstream.key.pid, upstream.key.secret, self)
            to_client.append(codec.build_backend_key(*self.key))
        # The session id, so clients and agents can cite their recording.
        to_client.append(codec.build_parameter_status("jitgate_session_id", self.session.session_id))
        to_client.append(upstream.ready)
        await self._send_client(b"".join(to_client))

    # -- cancel ---------------------------------------------------------------------

    async def broker_cancel(self, request: codec.CancelRequest) -> None:
        route = self.broker.cancel_routes.get((request.pid, request.secret))
        if route is None:
            return  # like PostgreSQL: an unknown key is silently ignored
        connection = route.connection
        if connection.hold is not None and not connection.hold.done():
            # A statement held for approval: the broker answers the cancel itself. Nothing of this
            # client runs upstream now, so forwarding it could only cancel its *next* statement.
            connection.hold.cancel("the client cancelled the statement")
            return
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(route.host, route.port), 10)
            writer.write(codec.build_cancel_request(route.pid, route.secret))
            await writer.drain()
            writer.close()
        except (OSError, asyncio.TimeoutError) as exc:
            log(logger, logging.WARNING, "cancel could not reach upstream", error=type(exc).__name__)

    async def _cancel_upstream(self) -> None:
        if self.upstream_key and self.target:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(self.target.host, self.target.port), 5)
                writer.write(codec.build_cancel_request(self.upstream_key.pid, self.upstream_key.secret))
                await writer.drain()
                writer.close()
            except (OSError, asyncio.TimeoutError):
                pass

    # -- relay ----------------------------------------------------------------------

    async def _relay(self) -> str:
        upstream_task = asyncio.create_task(self._pump_upstream())
        client_task = asyncio.create_task(self._pump_client())
        done, _ = await asyncio.wait({upstream_task, client_task}, return_when=asyncio.FIRST_COMPLETED)
        if client_task in done:
            exc = client_task.exception()
            if isinstance(exc, codec.ProtocolError):
                # A malformed Query/Parse/Bind/...: the client hears why, the session ends cleanly.
                await self._refuse(f"jitgate: protocol violation: {exc}", exc.sqlstate)
                reason = f"protocol error: {exc}"
            else:
                reason = client_task.result() if exc is None else f"client error: {exc!r}"
            if self.pending and "terminated" not in reason:
                await self._cancel_upstream()  # the client vanished mid-query: stop the work upstream
            if self.u_writer:
                self.u_writer.close()
            try:
                await asyncio.wait_for(upstream_task, 5)
            except (asyncio.TimeoutError, Exception):
                upstream_task.cancel()
        else:
            exc = upstream_task.exception()
            reason = upstream_task.result() if exc is None else f"upstream error: {exc!r}"
            if isinstance(exc, (codec.ProtocolError, MalformedRow)):
                # Never forward what could not be inspected: end the session with a clear error.
                await self._refuse(f"jitgate: upstream protocol error: {exc}", "08P01")
            elif isinstance(exc, MaskingRefused):
                await self._refuse(f"jitgate: {exc}", "42501")
            elif isinstance(exc, UnexpectedSetting):
                log(logger, logging.ERROR, "pinned setting changed upstream; session ended",
                    session_id=self.session.session_id, reason=str(exc))
                await self._refuse(f"jitgate: {exc}", "08P01")
            self.c_writer.close()
            client_task.cancel()
            await asyncio.gather(client_task, return_exceptions=True)
        return reason

    async def _client_gone(self) -> None:
        """Returns once the client has closed or lost its connection (checked while a statement is
        held: the pump does not read then, so nothing else would notice)."""
        reader, transport = self.c_reader, self.c_writer.transport
        while not (reader.exception() is not None or getattr(reader, "_eof", False) or transport.is_closing()):
            await asyncio.sleep(CLIENT_GONE_CHECK_SECONDS)

    async def _await_hold(self) -> Verdict:
        """Await self.hold; a client that goes away meanwhile cancels it (its request is withdrawn)."""
        watch = asyncio.ensure_future(self._client_gone())
        try:
            await asyncio.wait({self.hold, watch}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self.hold.cancel("the session ended")
            raise
        finally:
            watch.cancel()
        if not self.hold.done():
            self.hold.cancel("the client disconnected")
        return await self.hold

    async def _admit(self) -> Verdict:
        """Hold the session's first statement until its time-boxed access is approved."""
        self.hold = asyncio.ensure_future(self.session.admit())
        try:
            return await self._await_hold()
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise
            return Verdict("deny", ("session",), (), "jitgate: canceled while waiting for session approval")
        finally:
            self.hold = None

    def _denial_marker(self) -> str:
        return f"jitgate_refused_{secrets.token_hex(6)}"

    async def wait_answered(self, cycles: int) -> None:
        """Until the pump has answered the client's first ``cycles`` cycles."""
        while self.flushed_cycle < cycles:
            self.answered.clear()
            await self.answered.wait()

    async def hold_for(self, sql: str, verdict: Verdict) -> Verdict:
        """Wait for an approval of this statement; a client's CancelRequest gives up waiting."""
        if verdict.action == "approve":
            self.hold = asyncio.ensure_future(self.session.resolve(sql, verdict))
            try:
                verdict = await self._await_hold()
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise
                verdict = Verdict("deny", verdict.classes, verdict.reasons, "jitgate: canceled while waiting for approval")
            finally:
                self.hold = None
        return verdict

    async def _pump_client(self) -> str:
        framer = codec.MessageReader(self.broker.settings.pg_max_message)
        session = self.session
        writer = self.u_writer
        while True:
            try:
                chunk, self.early = (self.early, b"") if self.early else (await self.c_reader.read(READ_SIZE), b"")
            except (ConnectionError, OSError) as exc:
                return f"client connection lost: {type(exc).__name__}"
            if not chunk:
                return "client closed the connection"
            framer.feed(chunk)
            try:
                data, spans = framer.spans()
            except codec.ProtocolError as exc:
                await self._send_client(codec.build_error(f"jitgate: protocol violation: {exc}", exc.sqlstate, "FATAL"))
                return f"protocol error: {exc}"
            if session.target.session_approval and session._admission is None:
                admission = await self._admit()
                if not admission.allowed:
                    await self._send_client(codec.build_error(admission.message or "jitgate: session not approved", "28000", "FATAL"))
                    return f"session not approved: {admission.message}"
                window = session.target.approvals.session_access
                if window:
                    asyncio.get_running_loop().call_later(window, self.shutdown, f"approved access window of {window}s elapsed")
            out, self.held_out = bytearray(self.held_out), b""
            for kind, start, end in spans:
                if kind == 0x51:  # 'Q'
                    sql = codec.parse_query(data[start + 5 : end]).sql
                    verdict = self.row_limit.unmeasurable(await session.decide_sql_async(sql))
                    verdict, lineages = await follow_for_relay(self, sql, verdict)  # masking's classes join it
                    if verdict.action == "approve":
                        session.recorder.flush()  # spooled before it goes upstream
                        writer.write(out)
                        self.batch.flushed(len(out))
                        out = bytearray()
                        await writer.drain()
                        verdict = await self.hold_for(sql, verdict)
                    copy_plan = None
                    if verdict.allowed and session.masker is not None:
                        copy_plan, refusal = await copy_plan_for(self, sql, lineages)
                        if refusal:
                            verdict = Verdict("deny", verdict.classes, verdict.reasons, f"jitgate: {refusal}")
                    statement_id = session.record_statement(sql, protocol="simple", verdict=verdict)
                    self.client_cycle += 1
                    if verdict.allowed:
                        entry = Pending(statement_id, time.perf_counter(), self.client_cycle - 1, True, sql=sql)
                        entry.copy_plan = copy_plan
                        entry.lineages = lineages
                        self.pending.append(entry)
                        if self.row_limit.applies(verdict):  # counted by the server, see broker/pg/measure.py
                            session.recorder.flush()
                            writer.write(out)
                            await writer.drain()
                            rest = data[end:] + framer.take()
                            self.early = await self.row_limit.run(data[start:end], sql, verdict) + rest
                            out = bytearray()
                            break
                        out += data[start:end]
                    else:
                        marker = self._denial_marker()
                        self.denials.append((self.client_cycle - 1, marker, self._refusal(verdict)))
                        out += codec.build_query(marker)
                elif kind == 0x50:  # 'P'
                    self.batch.message(len(out))
                    parse = codec.parse_parse(data[start + 5 : end])
                    verdict = await session.decide_sql_async(parse.sql)
                    verdict, lineages = await follow_for_relay(self, parse.sql, verdict)  # masking's classes join it
                    if verdict.action == "approve":
                        session.recorder.flush()  # spooled before it goes upstream
                        if self.batch.measured is not None:
                            out = self._refuse_measured(out, "a later Parse of its batch waits for approval")
                        writer.write(out)
                        self.batch.flushed(len(out))
                        out = bytearray()
                        await writer.drain()
                        verdict = await self.hold_for(parse.sql, verdict)
                    self.statement_lineages[parse.name] = lineages[0] if lineages else None
                    self.statements[parse.name] = (parse.sql, verdict)
                    if verdict.allowed:
                        self.batch.parsed.append(parse.name)
                        out += data[start:end]
                    else:
                        session.record_statement(parse.sql, protocol="extended", verdict=verdict)
                        marker = self._denial_marker()
                        self.denials.append((self.client_cycle, marker, self._refusal(verdict)))
                        out += codec.build_parse(parse.name, marker)
                elif kind == 0x42:  # 'B'
                    self.batch.message(len(out))
                    bind = codec.parse_bind(data[start + 5 : end])
                    formats = bind.param_formats  # none, one for all, or one per parameter (codec checked)
                    if len(formats) == 1:
                        formats *= len(bind.params)
                    self.portals[bind.portal] = (bind.statement, describe_params(bind.params, formats), bind.result_formats)
                    self.portal_fields.pop(bind.portal, None)
                    out += data[start:end]
                elif kind == 0x45:  # 'E'
                    execute = codec.parse_execute(data[start + 5 : end])
                    statement_name, params, result_formats = self.portals.get(execute.portal, ("", (), ()))
                    sql, verdict = self.statements.get(statement_name, ("", None))
                    self.batch.message(len(out), execute=True)
                    measured = verdict is not None and self.row_limit.applies(verdict)
                    if measured and self.batch.sent_execute:
                        why = "an earlier Execute of its batch already went upstream"
                        verdict = Verdict("deny", verdict.classes, verdict.reasons, UNMEASURABLE_EXECUTE.format(why=why))
                        session.record_statement(sql, protocol="extended", verdict=verdict, params=list(params))
                        marker = self._denial_marker()
                        self.denials.append((self.client_cycle, marker, self._refusal(verdict)))
                        out += codec.build_parse("jitgate_refused", marker)
                        continue
                    if verdict is not None and verdict.allowed:
                        statement_id = session.record_statement(sql, protocol="extended", verdict=verdict, params=list(params))
                        self.pending.append(Pending(statement_id, time.perf_counter(), self.client_cycle, False,
                                                    statement=statement_name, portal=execute.portal,
                                                    result_formats=result_formats, sql=sql,
                                                    lineages=[self.statement_lineages.get(statement_name)]))
                    if measured and self.batch.measured is None:
                        self.batch.measured = (sql, verdict)
                        self.batch.execute_at = (len(out), end - start)
                    out += data[start:end]
                elif kind == 0x44:  # 'D' Describe: its answer tells the columns of a statement or portal
                    self.batch.message(len(out))
                    if session.masker is not None:
                        describe = codec.parse_describe(data[start + 5 : end])
                        self.describes.append((self.client_cycle, describe.kind, describe.name))
                    out += data[start:end]
                elif kind == 0x53:  # 'S' Sync
                    self.client_cycle += 1
                    if self.batch.measured is not None:  # the batch changes rows: run it measured
                        at = self.batch.start or 0
                        sql, verdict = self.batch.measured
                        parsed, flush_first = self.batch.parsed, self.batch.sent
                        self.batch.reset()
                        session.recorder.flush()
                        writer.write(out[:at])
                        await writer.drain()
                        rest = data[end:] + framer.take()
                        request = bytes(out[at:]) + data[start:end]
                        self.early = await self.row_limit.run(request, sql, verdict, parsed=parsed, extended=True,
                                                              flush_first=flush_first) + rest
                        out = bytearray()
                        break
                    self.batch.reset()
                    out += data[start:end]
                elif kind == 0x48:  # 'H' Flush: the client wants answers before its Sync
                    if self.batch.measured is not None:
                        out = self._refuse_measured(out, "Flush asks for its answer before Sync")
                    out += data[start:end]
                elif kind == 0x43:  # 'C' Close
                    self.batch.message(len(out))
                    close = codec.parse_close(data[start + 5 : end])
                    (self.statements if close.kind == "S" else self.portals).pop(close.name, None)
                    out += data[start:end]
                elif kind == 0x46:  # 'F' FunctionCall (fast path): no SQL text to classify
                    call = codec.parse_function_call(data[start + 5 : end])
                    text = f"-- fastpath function call oid={call.oid}"
                    verdict = self.session.target.decide(frozenset({"side_effect_function"}), session.principal.groups)
                    verdict = Verdict(verdict[0], ("side_effect_function",), (), f"jitgate: fast-path function calls need approval or are refused on {session.target_name!r}")
                    if verdict.action == "approve":
                        session.recorder.flush()  # spooled before it goes upstream
                        writer.write(out)
                        self.batch.flushed(len(out))
                        out = bytearray()
                        await writer.drain()
                        verdict = await self.session.resolve(text, verdict)
                    statement_id = session.record_statement(text, protocol="fastpath", verdict=verdict)
                    self.client_cycle += 1
                    if verdict.allowed:
                        self.pending.append(Pending(statement_id, time.perf_counter(), self.client_cycle - 1, True))
                        out += data[start:end]
                    else:
                        marker = self._denial_marker()
                        self.denials.append((self.client_cycle - 1, marker, self._refusal(verdict)))
                        out += codec.build_query(marker)
                elif kind == 0x58:  # 'X' Terminate
                    out += data[start:end]
                    session.recorder.flush()  # spooled before it goes upstream
                    writer.write(out)
                    await writer.drain()
                    return "client terminated the session"
                else:
                    out += data[start:end]
            if self.batch.measured is not None and len(out) - (self.batch.start or 0) > MAX_HELD_BATCH:
                out = self._refuse_measured(out, f"its batch grew over {MAX_HELD_BATCH >> 20} MiB before Sync")
            if self.batch.measured is not None and self.batch.start is not None:
                out, self.held_out = self.batch.held_back(out)  # a measured batch waits for its Sync
            else:
                self.batch.flushed(len(out))
            if out:
                session.recorder.flush()  # spooled before it goes upstream
                writer.write(out)
                if must_drain(writer):
                    await writer.drain()

    def _refuse_measured(self, out: bytearray, why: str) -> bytearray:
        """Replace the batch's row-writing Execute by a failing marker: it cannot be measured."""
        sql, verdict = self.batch.measured
        at, length = self.batch.execute_at
        refused = Verdict("deny", verdict.classes, verdict.reasons, UNMEASURABLE_EXECUTE.format(why=why))
        marker = self._denial_marker()
        self.denials.append((self.client_cycle, marker, self._refusal(refused)))
        self.batch.measured = None
        return bytearray(out[:at] + codec.build_parse("jitgate_refused", marker) + out[at + length :])

    def _refusal(self, verdict: Verdict) -> bytes:
        code = "57014" if "canceled" in verdict.message else "42501"
        return codec.build_error(
            verdict.message or "jitgate: statement refused by policy", code, "ERROR",
            hint="Ask an approver, or change the statement; `jitgate approvals list` shows pending requests."
            if verdict.action == "deny" and verdict.approval_id is None and "approval" in verdict.message else "",
        )

    async def _pump_upstream(self) -> str:
        framer = codec.MessageReader(max(self.broker.settings.pg_max_message, 1 << 30))
        reader, writer = self.u_reader, self.c_writer
        session = self.session
        pending = self.pending
        masker = session.masker
        max_message = self.broker.settings.pg_max_message
        streaming = 0  # bytes left of a large DataRow passed through without being held
        while True:
            chunk = await reader.read(READ_SIZE)
            if not chunk:
                return "upstream closed the connection"
            if streaming:
                passed, chunk = chunk[:streaming], chunk[streaming:]
                streaming -= len(passed)
                if self.measurement is not None:
                    self.measurement.withhold(passed)
                else:
                    writer.write(passed)
                if not chunk:
                    await writer.drain()
                    continue
            framer.feed(chunk)
            # DataRows are framed and checked but not listed (the hot path): the runs of them
            # between listed messages are passed on whole unless their statement has a masking
            # plan; rows are counted from CommandComplete. The broker's own queries during a
            # measurement need every message listed.
            measuring = self.measurement is not None
            data, spans = framer.spans(-1 if measuring else 0x44)
            if measuring:  # answers to the broker's own queries go to the measurement
                data, spans = self.measurement.take_own(data, spans, self.ready_cycle)
            parts = None  # set to a list once any message is rewritten
            last = 0
            rows_from = 0  # where the DataRows not listed in spans may start
            for kind, start, end in spans:
                if start != rows_from and masker is not None and not measuring and not self._rows_pass(data, rows_from, start):
                    parts, last = await self._data_rows(data, rows_from, start, parts, last)
                rows_from = end
                if kind == 0x44:  # 'D' DataRow (listed during a measurement only)
                    if pending:
                        pending[0].rows += 1
                    if masker is not None:
                        parts, last = await self._data_rows(data, start, end, parts, last, counted=True)
                    continue
                if kind == 0x64:  # 'd' CopyData (COPY TO STDOUT rows)
                    if self.copy_plan is not None:
                        if parts is None:
                            parts = []
                        parts.append(data[last:start])
                        masked = self.copy_plan.mask_data(data[start + 5 : end])
                        if masked:  # binary COPY holds back a tuple until it is complete
                            parts.append(codec.message("d", masked))
                        last = end
                    continue
                if kind == 0x63 and self.copy_plan is not None:  # 'c' CopyDone
                    self.copy_plan.finish()
                if kind == 0x43:  # 'C' CommandComplete
                    tag = codec.parse_command_complete(data[start + 5 : end])
                    if pending:
                        head = pending[0]
                        if head.uncounted:  # its rows were passed on without being counted one by one
                            head.rows += codec.rows_from_tag(tag) or 0
                            head.uncounted = False
                        head.tags.append(tag)
                        if not head.simple:
                            self._finish(pending.popleft())
                elif kind == 0x45:  # 'E' ErrorResponse
                    payload = data[start + 5 : end]
                    fields = codec.parse_fields(payload)
                    replacement = None
                    refused_here = bool(self.denials) and self.denials[0][1] in fields.get("M", "")
                    if refused_here:  # the marker of a statement the broker refused (already recorded)
                        replacement = self.denials.popleft()[2]
                    else:
                        if masker is not None:
                            fields = statement_error_fields(self, fields)
                            replacement = await self._mask_fields("E", fields)
                        if pending:
                            pending[0].error = f"{fields.get('C', '')}: {fields.get('M', '')}"
                            await self.session.mask_for_record_off_loop(pending[0].error)
                            if not pending[0].simple:
                                self._finish(pending.popleft())
                    if replacement is not None:
                        if parts is None:
                            parts = []
                        parts.append(data[last:start])
                        parts.append(replacement)
                        last = end
                elif kind == 0x5A:  # 'Z' ReadyForQuery
                    self.tx_status = chr(data[end - 1])
                    cycle = self.ready_cycle
                    while pending and pending[0].cycle <= cycle:
                        self._finish(pending.popleft())
                    while self.denials and self.denials[0][0] <= cycle:
                        self.denials.popleft()
                    while self.describes and self.describes[0][0] <= cycle:
                        self.describes.popleft()  # skipped after an error: they will not be answered
                    self.copy_plan = None
                    self.ready_cycle += 1
                elif kind == 0x54:  # 'T' RowDescription
                    if masker is not None:
                        description = bytes(data[start + 5 : end])
                        if self.describes:
                            _, described, name = self.describes.popleft()
                            if description != self.checked_description:  # (a repeated answer was checked)
                                codec.parse_row_description(description)  # checked now, planned at Execute
                                self.checked_description = description
                            (self.statement_fields if described == "S" else self.portal_fields)[name] = description
                        elif pending and pending[0].simple:
                            head = pending[0]
                            lineage = head.lineage()
                            plan = masker.known_plan(description, lineage)
                            if plan is NOT_PLANNED:
                                plan = await masker.plan_for(description, lineage)
                            head.plan, head.planned = plan, True
                            if head.plan is not None and head.plan.notice:
                                if parts is None:
                                    parts = []
                                parts.append(data[last:start])
                                parts.append(codec.build_notice(head.plan.notice))
                                last = start
                                head.noticed = True
                elif kind == 0x6E:  # 'n' NoData answers a Describe too
                    if masker is not None and self.describes:
                        self.describes.popleft()
                elif kind == 0x48:  # 'H' CopyOutResponse
                    self.copy_plan = pending[0].copy_plan if pending else None
                elif kind in (0x73, 0x49):  # 's' PortalSuspended, 'I' EmptyQueryResponse
                    if pending:
                        pending[0].tags.append("PORTAL SUSPENDED" if kind == 0x73 else "EMPTY QUERY")
                        if not pending[0].simple:
                            self._finish(pending.popleft())
                elif kind == 0x53:  # 'S' ParameterStatus: a pinned lexing setting must never move
                    problem = unexpected_report(*codec.parse_parameter_status(data[start + 5 : end]))
                    if problem:
                        raise UnexpectedSetting(problem)
                elif kind == 0x41:  # 'A' NotificationResponse: text another session sent (pg_notify, NOTIFY)
                    if masker is not None:  # scanned like a notice's text: it passed the relay in clear
                        if parts is None:
                            parts = []
                        parts.append(data[last:start])
                        note = codec.parse_notification(data[start + 5 : end])
                        parts.append(codec.build_notification(note, await masker.mask_text_off_loop(note.payload)))
                        last = end
                elif kind == 0x4E:  # 'N' NoticeResponse
                    if masker is not None:
                        if parts is None:
                            parts = []
                        parts.append(data[last:start])
                        parts.append(await self._mask_fields("N", statement_error_fields(self, codec.parse_fields(data[start + 5 : end]))))
                        last = end
            if rows_from != len(data) and masker is not None and not measuring and not self._rows_pass(data, rows_from, len(data)):
                parts, last = await self._data_rows(data, rows_from, len(data), parts, last)
            session.recorder.flush()
            if parts is not None:
                parts.append(data[last:])
                data = b"".join(parts)
            if self.measurement is not None:
                self.measurement.withhold(data)  # released once the rows are counted
            else:
                writer.write(data)
            self.flushed_cycle = self.ready_cycle
            self.answered.set()
            if self.measurement is not None:  # a large row is never passed on before the count
                streaming = self.measurement.swallow_large_row(framer, max_message)
            else:
                large = framer.head()
                streaming = await stream_large_row(self, framer) if large and large[0] == 0x44 and large[1] > max_message else 0
            if streaming or must_drain(writer):
                await writer.drain()

    def _rows_pass(self, data: bytes, begin: int, stop: int) -> bool:
        """The common case of ``_data_rows`` without an await: the statement at the head of the
        queue is planned and its plan masks nothing. Its rows pass on as they are: counted from
        its CommandComplete (simple) or here (an Execute's: a PortalSuspended carries no count)."""
        head = self.pending[0] if self.pending else None
        if head is None or (not head.planned and not self._plan_known(head)) or head.plan is not None:
            return False
        if head.simple:
            head.uncounted = True
        else:
            head.rows += codec.count_messages(data, begin, stop)
        return True

    def _plan_known(self, head: Pending) -> bool:
        """``_plan_for_rows`` without an await when the masker has the plan already (an Execute of
        a result shape the session has seen): True when ``head`` is planned now."""
        masker = self.session.masker
        description = self.portal_fields.get(head.portal)
        if description is not None:
            plan = masker.known_plan(description, head.lineage())
        elif head.statement in self.statement_fields:
            plan = masker.known_plan(self.statement_fields[head.statement], head.lineage(),
                                     result_formats=tuple(head.result_formats))
        else:
            return False
        if plan is NOT_PLANNED:
            return False
        head.plan, head.planned = plan, True
        return True

    async def _data_rows(self, data: bytes, begin: int, stop: int, parts: list | None, last: int, *,
                         counted: bool = False) -> tuple[list | None, int]:
        """DataRows data[begin:stop] (a run of whole messages) of the statement at the head of the
        queue, under masking: passed on as they are when its plan masks nothing, else each row
        through the plan. Returns (parts, last) for the caller's rewrite of ``data``."""
        head = self.pending[0] if self.pending else None
        plan = head.plan if head is not None and head.planned else await self._plan_for_rows(b"")
        if plan is None:
            if head is not None and not counted:
                if head.simple:
                    head.uncounted = True  # counted from its CommandComplete tag
                else:  # an Execute's rows: a PortalSuspended carries no count
                    head.rows += codec.count_messages(data, begin, stop)
            return parts, last
        if parts is None:
            parts = []
        parts.append(data[last:begin])
        if plan.notice and head is not None and not head.noticed:
            head.noticed = True
            parts.append(codec.build_notice(plan.notice))
        masked, rows = await mask_rows(plan, data, begin, stop)  # the whole run in one call (row core)
        if head is not None and not counted:
            head.rows += rows
        parts.append(masked)
        return parts, stop

    async def _plan_for_rows(self, payload: bytes):
        """The masking plan for the DataRows of the statement at the head of the queue.

        When the columns of a result cannot be known (an Execute of a statement that was
        never described), every value becomes NULL: masking never lets a value through
        that it could not inspect.
        """
        if not self.pending:
            return _NULL_ALL
        head = self.pending[0]
        if not head.planned:
            masker = self.session.masker
            description = self.portal_fields.get(head.portal)
            if description is not None:  # a portal's RowDescription carries its formats
                head.plan = await masker.plan_for(description, head.lineage())
            elif head.statement in self.statement_fields:
                head.plan = await masker.plan_for(self.statement_fields[head.statement], head.lineage(),
                                                  result_formats=tuple(head.result_formats))
            else:
                log(logger, logging.WARNING, "result columns unknown; masking every value as NULL",
                    session_id=self.session.session_id)
                head.plan = _NULL_ALL
            head.planned = True
        return head.plan

    async def _mask_fields(self, kind: str, fields: dict[str, str]) -> bytes:
        masker = self.session.masker
        masked = {k: (await masker.mask_text_off_loop(v) if k in ("M", "D", "H", "W", "q") else v) for k, v in fields.items()}
        return codec.build_fields(kind, masked)

    def _finish(self, entry: Pending) -> None:
        tag = "; ".join(entry.tags) if entry.tags else None
        rows = entry.rows
        if entry.tags and not entry.rows:
            counted = [codec.rows_from_tag(t) for t in entry.tags]
            rows = sum(c for c in counted if c is not None) if any(c is not None for c in counted) else 0
        error = entry.error
        if error is None and not entry.tags and not entry.simple:
            error = "not executed: an earlier message in the same batch failed"
        self.session.record_result(entry.statement_id, started=entry.started, rows=rows, tag=tag, error=error)


def must_drain(writer: asyncio.StreamWriter) -> bool:
    """Would ``writer.drain()`` wait or raise? Only when its transport is over the high-water
    mark (the protocol paused writing), is closing, or the stream's reader failed; otherwise
    drain() returns at once and the relay skips its two coroutines per write. Backpressure is
    unchanged: a paused transport is always drained (tests/broker/test_relay_drain.py checks
    these asyncio internals still mean that)."""
    reader = writer._reader
    return (writer._protocol._paused or writer.transport.is_closing()
            or (reader is not None and reader._exception is not None))


class _NullAllPlan:
    """Fail-closed plan: every column of the row becomes SQL NULL."""

    def mask_row(self, payload: bytes) -> bytes:
        count = int.from_bytes(payload[:2], "big", signed=True)
        return codec.build_data_row([None] * max(count, 0))


_NULL_ALL = _NullAllPlan()

