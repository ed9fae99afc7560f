"""Opening a logged-in connection to a PostgreSQL target with the held credential.

One code path for every caller (the wire-protocol relay and the agent API):
TCP, the target's TLS mode, the startup packet, and the authentication exchange
(broker/pg/upstream_auth.py), up to the first ReadyForQuery.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

from broker.pg import codec
from broker.pg.upstream_auth import DEFAULT_MAX_SCRAM_ITERATIONS, UpstreamAuthError, UpstreamLogin, is_expensive
from broker.tls import upstream_context
from jitgate.policy import Target

READ_SIZE = 256 * 1024
# Login messages are a few hundred bytes (ParameterStatus, BackendKeyData, a notice or two). These
# bound what a hostile target can make the broker hold before the session even starts.
LOGIN_MAX_MESSAGE = 1024 * 1024
LOGIN_MAX_BYTES = 4 * 1024 * 1024


class UpstreamLoginError(Exception):
    """The target could not be reached or refused the gateway. ``code`` is a SQLSTATE for
    the client; the message never contains the held credential."""

    def __init__(self, message: str, code: str, *, upstream_fields: dict | None = None):
        super().__init__(message)
        self.code = code
        self.upstream_fields = upstream_fields or {}


# SQLSTATEs of PostgreSQL's answer to a bad credential (28P01 invalid_password, 28000
# invalid_authorization_specification): only these mean the held credential must change.
_CREDENTIAL_REFUSED = ("28P01", "28000")


def login_refusal(fields: dict[str, str]) -> UpstreamLoginError:
    """The client's error for an ErrorResponse during the held-credential login.

    A bad credential is the administrator's to fix; anything else (53300 too many
    connections, 57P03 the server is starting up, 3D000 no such database) passes
    through with the server's SQLSTATE and reason, so pools retry what is retryable.
    """
    code = fields.get("C", "")
    if not re.fullmatch(r"[0-9A-Z]{5}", code):
        code = ""  # not a SQLSTATE: never pass arbitrary upstream text as one
    if code in _CREDENTIAL_REFUSED or not code:
        return UpstreamLoginError(
            f"the target refused the gateway's held credential (upstream SQLSTATE {code or '?'}); "
            "an administrator must rotate or fix it", "28000", upstream_fields=fields)
    return UpstreamLoginError(f"the target refused the connection: {fields.get('M', 'no reason given')[:500]} "
                              f"(upstream SQLSTATE {code})", code, upstream_fields=fields)


@dataclass
class UpstreamConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    key: codec.BackendKeyData | None = None
    # ParameterStatus and NoticeResponse messages of the login, as raw messages, in order.
    messages: list[bytes] = field(default_factory=list)
    ready: bytes = b"Z\x00\x00\x00\x05I"  # the ReadyForQuery that ended the login


async def open_upstream(target: Target, password: str, params: dict[str, str], *, timeout: float = 30,
                        max_scram_iterations: int = DEFAULT_MAX_SCRAM_ITERATIONS) -> UpstreamConnection:
    """Connect and log in as target.username; raises UpstreamLoginError (and nothing else)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(target.host, target.port, limit=READ_SIZE), 15)
    except (OSError, asyncio.TimeoutError) as exc:
        raise UpstreamLoginError(f"the target is unreachable ({type(exc).__name__})", "08001") from None
    try:
        return await _login(target, password, params, reader, writer, timeout, max_scram_iterations)
    except codec.ProtocolError as exc:
        writer.close()
        raise UpstreamLoginError(f"the target broke the PostgreSQL protocol during login: {exc}", "08P01") from None
    except (asyncio.TimeoutError, TimeoutError):
        writer.close()
        raise UpstreamLoginError("the target did not finish the login in time", "08006") from None
    except (OSError, asyncio.IncompleteReadError) as exc:
        writer.close()
        raise UpstreamLoginError(f"the connection to the target broke during login ({type(exc).__name__})", "08006") from None
    except BaseException:
        writer.close()
        raise


async def _login(target, password, params, reader, writer, timeout, max_scram_iterations) -> UpstreamConnection:
    encrypted = False
    if target.tls != "disable":
        writer.write(codec.build_ssl_request())
        await writer.drain()
        answer = await asyncio.wait_for(reader.readexactly(1), 15)
        if answer == b"S":
            await writer.start_tls(upstream_context(target.tls), server_hostname=target.host)
            encrypted = True
        elif target.tls in ("require", "verify-full"):
            raise UpstreamLoginError("the target does not offer TLS, which its policy requires", "08001")
    writer.write(codec.build_startup({"user": target.username, "database": target.database, **params}))
    await writer.drain()
    login = UpstreamLogin(target.username, password, encrypted=encrypted, max_scram_iterations=max_scram_iterations)
    connection = UpstreamConnection(reader, writer)
    framer = codec.MessageReader(LOGIN_MAX_MESSAGE)
    received = 0
    while True:
        chunk = await asyncio.wait_for(reader.read(READ_SIZE), timeout)
        if not chunk:
            raise UpstreamLoginError("the target closed the connection during login", "08006")
        received += len(chunk)
        if received > LOGIN_MAX_BYTES:
            raise UpstreamLoginError(f"the target sent more than {LOGIN_MAX_BYTES} bytes during login", "08P01")
        framer.feed(chunk)
        for kind, payload in framer.messages():
            if kind == "R":
                auth = codec.parse_authentication(payload)
                try:
                    if is_expensive(auth):  # PBKDF2 of the password: never on the event loop
                        reply = await asyncio.wait_for(asyncio.to_thread(login.respond, auth), timeout)
                    else:
                        reply = login.respond(auth)
                except UpstreamAuthError as exc:
                    raise UpstreamLoginError(f"the gateway could not log in: {exc}", "28000") from None
                if reply:
                    writer.write(reply)
                    await writer.drain()
            elif kind == "E":
                raise login_refusal(codec.parse_fields(payload))
            elif kind == "K":
                connection.key = codec.parse_backend_key(payload)
            elif kind in ("S", "N"):
                connection.messages.append(codec.message(kind, payload))
            elif kind == "v":
                continue  # the upstream negotiated our (3.0) request down: nothing to pass on
            elif kind == "Z":
                if not login.done:
                    raise UpstreamLoginError("the target finished login without authenticating", "28000")
                if framer.buffered:
                    raise codec.ProtocolError("upstream sent data after ReadyForQuery during login")
                connection.ready = codec.message("Z", payload)
                return connection
            else:
                raise UpstreamLoginError(f"unexpected message {kind!r} from the target during login", "08P01")
