"""The SSH adapter: OIDC sign-in, the held-key login upstream, and the channel relay.

One client connection is one jitgate session and one upstream connection:

    client ──ssh──▶ GatewayConnection (asyncssh server) ──ssh──▶ VM sshd
                     └─ RelayChannel per session channel ─▶ upstream channel

Sign-in: the SSH user name is ``<idp-user>+<target>`` (``alice@example.com+web-1``;
the last '+' splits, target names never contain one) and the password, or the
single keyboard-interactive answer, is the OIDC token. The token is checked by
functions/authorize like every other protocol's; the upstream login happens
before authentication completes, so a VM that is down or whose host key changed
refuses the sign-in with a message instead of a dead shell.

Each session channel (shell, exec, sftp) passes the pipeline before its first
byte goes upstream: time-boxed session approval when the target asks for it,
exec commands through the shell guardrails, file transfers against
``allow_file_transfer``. The relay then moves bytes with SSH flow control on
both sides (a paused writer pauses the other side's reader) and records:
terminals as asciicast events, exec output (up to a limit) with byte counts and
digests, exit status or signal, and every file that sftp or legacy scp moved.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time

import asyncssh

from broker.authz import Refused
from broker.session import Session, Verdict
from broker.ssh import upstream as upstream_login
from broker.ssh.coalesce import quiet_packet_log, speed_up, writes_of
from broker.ssh.transfers import (FileEvent, ScpObserver, SftpObserver, TransferProtocolError,
                                  is_file_transfer_command, is_transfer_endpoint, scp_mode)
from jitgate.guardrails.shell import classify_command
from jitgate.logs import log
from jitgate.recording.asciicast import TERM_OUTPUT, TERM_RESIZE, TERM_START, Utf8Stream

logger = logging.getLogger("jitgate.broker.ssh")

STDERR = asyncssh.EXTENDED_DATA_STDERR
# Output of a command without a terminal is recorded up to this many bytes per stream;
# beyond it only the byte count and SHA-256 are kept (a 10 GB pipe is not a transcript).
EXEC_RECORD_LIMIT = 1024 * 1024
# Exit status the client sees when the gateway refuses a command (as a shell does for "cannot execute").
REFUSED_EXIT = 126
# Client environment passed to the VM (its sshd's AcceptEnv still decides).
FORWARDED_ENV_PREFIXES = ("LANG", "LC_")
# The echoed terminal line kept for classifying what was typed (best effort, see _echoed_line).
ECHO_LINE_LIMIT = 4096
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\\\)|\x1b[@-Z\\-_]")
# Where a prompt ends: "user@host:~$ ", "root@host:/# ", "sh-5.2$ ", "> ".
_PROMPT_END = re.compile(r"^.*?[$#%>] ")
LOGIN_FORM = "<you>+<target>, e.g. ssh -l alice@example.com+web-1 -p 2222 <broker>"


class LoginRefused(Exception):
    pass


def parse_login(username: str) -> tuple[str, str]:
    """``alice@example.com+web-1`` -> (``alice@example.com``, ``web-1``)."""
    user, sep, target = username.rpartition("+")
    if not sep or not user or not target:
        raise LoginRefused(f"jitgate: log in as {LOGIN_FORM} (got {username!r})")
    return user, target


class SshGateway:
    """What the listener shares with every connection: the broker context and the live connections."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.connections: set[GatewayConnection] = set()
        self.closing: set[asyncio.Task] = set()

    def new_connection(self) -> "GatewayConnection":
        return GatewayConnection(self)

    async def stop(self) -> None:
        for connection in list(self.connections):
            connection.shutdown("broker shutting down")
        if self.closing:
            await asyncio.wait(list(self.closing), timeout=10)


class GatewayConnection(asyncssh.SSHServer):
    def __init__(self, gateway: SshGateway) -> None:
        self.gateway = gateway
        self.ctx = gateway.ctx
        self.conn: asyncssh.SSHServerConnection | None = None
        self.client = "?"
        self.client_writes = None  # the client connection's CoalescingTransport
        self.upstream_writes = None  # the VM connection's
        self.session: Session | None = None
        self.upstream: asyncssh.SSHClientConnection | None = None
        self.channels: set[RelayChannel] = set()
        self.next_channel = 0
        self._admitted: Verdict | None = None
        self._admit_lock = asyncio.Lock()
        self._expiry: asyncio.TimerHandle | None = None
        self._closing_reason: str | None = None

    # -- connection ------------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.client_writes = speed_up(conn)
        peer = conn.get_extra_info("peername") or ("?", 0)
        self.client = f"{peer[0]}:{peer[1]}"
        self.gateway.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gateway.connections.discard(self)
        reason = self._closing_reason or (f"connection lost: {exc}" if exc else "client closed the connection")
        task = asyncio.get_running_loop().create_task(self._close(reason))
        self.gateway.closing.add(task)
        task.add_done_callback(self.gateway.closing.discard)

    async def _close(self, reason: str) -> None:
        if self._expiry:
            self._expiry.cancel()
        for channel in list(self.channels):
            if not channel.finished:  # record the channel's end before the session's recording closes
                channel._finish_record(reason=f"connection ended: {reason}")
                channel.finished = True
            channel.abort()
        if self.upstream is not None:
            self.upstream.close()
        if self.session is not None:
            try:
                await self.session.close(reason)
            finally:
                self.ctx.pg.live_sessions.discard(self.session.session_id)

    def shutdown(self, reason: str) -> None:
        self._closing_reason = reason
        if self.conn is not None:
            self.conn.disconnect(asyncssh.DISC_BY_APPLICATION, f"jitgate: {reason}")

    # -- authentication ----------------------------------------------------------------

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True  # asyncssh offers keyboard-interactive with one "Password:" prompt on top of this

    async def validate_password(self, username: str, password: str) -> bool:
        if self.session is not None:
            return True
        try:
            await self._login(username, password.strip())
        except LoginRefused as exc:
            log(logger, logging.INFO, "ssh sign-in refused", client=self.client, user=username, reason=str(exc))
            try:
                self.conn.send_auth_banner(f"{exc}\r\n")
            except OSError:
                pass
            raise asyncssh.PermissionDenied(str(exc)) from None
        return True

    async def _login(self, username: str, token: str) -> None:
        user, target_name = parse_login(username)
        if not token:
            raise LoginRefused("jitgate: send your OIDC token as the password (e.g. jitgate login --dev)")
        try:
            grant = await self.ctx.authz.authorize(token, target_name, user)
        except Refused as exc:
            raise LoginRefused(f"jitgate: {exc.reason}") from None
        except Exception as exc:  # never drop the connection without a word (and never echo the token)
            log(logger, logging.ERROR, "ssh sign-in failed", target=target_name, error=type(exc).__name__)
            raise LoginRefused("jitgate: sign-in failed inside the gateway; try again, then tell an administrator") from None
        policy = self.ctx.policy.policy
        target = policy.target(target_name)
        if target is None or target.kind != "ssh":
            raise LoginRefused(f"jitgate: target {target_name!r} is not an SSH target")
        principal = grant.principal
        if not target.allow.admits(principal.username, principal.groups):
            raise LoginRefused(f"jitgate: {principal.username} may no longer reach {target_name!r}")
        session = Session.open(
            principal=principal, target_name=target_name, policy=policy, client=self.client, kind="ssh",
            settings=self.ctx.settings, backends=self.ctx.backends, live=self.ctx.pg.live_sessions,
        )
        session.approval_step = self.ctx.pg.approval_step
        session.use_masking(self.ctx.pg.masker_factory)
        try:
            try:
                key = await asyncio.to_thread(self.ctx.backends.secrets.get, target.credential)
            except Exception as exc:
                log(logger, logging.ERROR, "held credential unavailable", target=target_name, error=str(exc))
                raise upstream_login.UpstreamError(
                    f"jitgate: the gateway cannot load its credential for target {target_name!r}; "
                    "an administrator must fix the credential reference") from None
            agent_socket = None
            if target.allow_agent_forwarding:
                # The VM's agent requests reach the client's agent (ssh -A) through a UNIX socket that
                # asyncssh opens on this connection; the upstream client forwards to that socket.
                self.conn._agent_forwarding = True  # asyncssh has no public per-connection switch
                if await self.conn.create_agent_listener():
                    agent_socket = self.conn.get_agent_path()
            self.upstream = await upstream_login.connect(target_name, target, key, agent_socket=agent_socket)
            self.upstream_writes = writes_of(self.upstream)
        except upstream_login.UpstreamError as exc:
            session.recorder.event("upstream.refused", reason=str(exc))
            await session.close(f"refused: {exc}")
            self.ctx.pg.live_sessions.discard(session.session_id)
            raise LoginRefused(str(exc)) from None
        self.session = session
        session.recorder.event("upstream.connected", address=target.address, username=target.username,
                               host_key=upstream_login.pinned_key(target_name, target).get_fingerprint())

    # -- forwarding ------------------------------------------------------------------------

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int):
        allowed = self.session is not None and self.session.target.allow_port_forwarding
        self._record("forward", kind="local", destination=f"{dest_host}:{dest_port}", decision="allow" if allowed else "deny")
        if not allowed:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"jitgate: port forwarding is not allowed on target {self._target_name()!r}")
        return self.upstream  # the VM opens the connection, as if the client had run ssh -L there

    def server_requested(self, listen_host: str, listen_port: int):
        self._record("forward", kind="remote", listen=f"{listen_host}:{listen_port}", decision="deny")
        return False  # remote forwarding (-R) is not relayed, whatever the policy says

    def unix_connection_requested(self, dest_path: str):
        self._record("forward", kind="unix", destination=dest_path, decision="deny")
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                        "jitgate: forwarding to UNIX sockets is not allowed")

    def unix_server_requested(self, listen_path: str):
        return False

    def _target_name(self) -> str:
        return self.session.target_name if self.session else "?"

    def _record(self, event_type: str, **fields) -> None:
        if self.session is not None:
            self.session.recorder.event(event_type, **fields)

    # -- sessions ----------------------------------------------------------------------------

    def session_requested(self) -> "RelayChannel":
        channel = RelayChannel(self, self.next_channel)
        self.next_channel += 1
        return channel

    async def admit(self, channel: "RelayChannel") -> Verdict:
        """Session-level approval (Target.session_approval), asked once per connection."""
        session = self.session
        if not session.target.session_approval:
            return Verdict("allow", ())
        async with self._admit_lock:
            if self._admitted is None:
                session.notify = channel.notice
                await channel.notice(f"jitgate: target {session.target_name!r} needs an approval for each session "
                                     "(time-boxed access); waiting for an approver...")
                final = self._admitted = await session.admit()  # the pipeline's own session approval
                window = session.target.approvals.session_access
                if final.action == "allow" and window:
                    self._expiry = asyncio.get_running_loop().call_later(window, self._expire, window)
            return self._admitted

    def _expire(self, seconds: int) -> None:
        self._record("session.expired", seconds=seconds)
        for channel in list(self.channels):
            channel.say(f"jitgate: the approved access window ({seconds}s) is over; closing the session")
        self.shutdown(f"approved access window of {seconds}s elapsed")


class RelayChannel(asyncssh.SSHServerSession):
    """One client session channel and its upstream twin."""

    def __init__(self, gc: GatewayConnection, number: int) -> None:
        self.gc = gc
        self.number = number
        self.chan: asyncssh.SSHServerChannel | None = None
        self.up: asyncssh.SSHClientChannel | None = None
        self.term: tuple[str, tuple, dict] | None = None
        self.mode = "shell"
        self.command: str | None = None
        self.statement_id: int | None = None
        self.started = time.monotonic()
        self.perf_started = time.perf_counter()
        self.exit_status: int | None = None
        self.exit_signal: tuple | None = None
        self.eof_pending = False
        self.early: list[tuple[bytes, object]] = []
        self.finished = False
        self.record_streams = True
        self.sftp: SftpObserver | None = None
        self.scp: ScpObserver | None = None
        self.scp_from_client = False
        self.counts = {"stdin": 0, "stdout": 0, "stderr": 0}
        self.digests = {"stdout": hashlib.sha256(), "stderr": hashlib.sha256()}
        self.recorded = {"stdout": 0, "stderr": 0}
        self.decoders = {"stdout": Utf8Stream(), "stderr": Utf8Stream()}
        self.upstream_lost: str | None = None
        self.expiry: asyncio.TimerHandle | None = None
        # stdin of a channel without a terminal (a script fed to a shell): recorded up to the
        # target's record_stdin_bytes, then counted and hashed
        self.stdin_digest = hashlib.sha256()
        self.stdin_recorded = 0
        self.stdin_decoder = Utf8Stream()
        # the terminal line as the shell echoed it, classified when the client presses Enter
        self.echo_line = ""
        self.enters_pending = 0

    @property
    def session(self) -> Session:
        return self.gc.session

    # -- requests from the client --------------------------------------------------------------

    def connection_made(self, chan: asyncssh.SSHServerChannel) -> None:
        self.chan = chan
        quiet_packet_log(chan)
        self.gc.channels.add(self)

    def pty_requested(self, term_type: str, term_size: tuple, term_modes: dict) -> bool:
        self.term = (term_type, term_size, term_modes)
        return True

    def shell_requested(self) -> bool:
        self.mode = "shell"
        return True

    def exec_requested(self, command: str) -> bool:
        self.mode, self.command = "exec", command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem != "sftp":
            return False
        self.mode = "sftp"
        return True

    def session_started(self) -> None:
        self.chan.pause_reading()  # nothing goes upstream before the pipeline has decided
        self.started = time.monotonic()
        self.gc.conn.create_task(self._open())

    # -- pipeline ------------------------------------------------------------------------------

    async def notice(self, text: str) -> None:
        self.say(text)

    def say(self, text: str) -> None:
        """A message from the gateway on the client's stderr."""
        if self.chan is None or self.finished:
            return
        end = "\r\n" if self.term else "\n"
        try:
            self.chan.write((text.replace("\n", end) + end).encode(), STDERR)
        except (OSError, asyncssh.Error):
            pass

    def refuse(self, message: str, status: int = REFUSED_EXIT) -> None:
        self.say(message)
        self.finished = True
        self.gc.channels.discard(self)
        try:
            self.chan.exit(status)
        except OSError:
            pass

    async def _open(self) -> None:
        session, target = self.session, self.session.target
        fields = {"channel": self.number, "request": self.mode, "pty": self.term is not None}
        if self.command is not None:
            await session.mask_statement_for_record(self.command)  # a long one off the loop (refused if it fails)
            fields["command"] = session.client_text_for_record(self.command)
        session.recorder.event("ssh.channel", **fields)
        admitted = await self.gc.admit(self)
        if not admitted.allowed:
            self.refuse(admitted.message or "jitgate: this session was not approved")
            return
        if self.mode == "sftp" and not target.allow_file_transfer:
            session.recorder.event("file.refused", channel=self.number, request="sftp")
            self.refuse(f"jitgate: file transfer (sftp/scp) is not allowed on target {session.target_name!r}")
            return
        if self.mode == "exec":
            if not await self._decide_exec():
                return
        elif self.mode == "shell":
            if not await self._decide_shell():
                return
        if self.term is not None:
            term_type, (width, height, *_), _ = self.term
            session.recorder.event(TERM_START, channel=self.number, width=width, height=height, term=term_type,
                                   command=session.client_text_for_record(self.command) if self.command else None)
        try:
            await self._connect_upstream()
        except (asyncssh.Error, OSError) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            session.recorder.event("channel.error", channel=self.number, error=reason)
            self.refuse(f"jitgate: the target refused the channel: {reason}", 255)
            return
        self.chan.resume_reading()

    async def _decide_exec(self) -> bool:
        session, command = self.session, self.command
        transfer = is_file_transfer_command(command)
        if transfer and not session.target.allow_file_transfer:
            verdict = Verdict("deny", ("file_transfer",), (),
                              f"jitgate: file transfer (scp/rsync) is not allowed on target {session.target_name!r}")
        else:
            verdict = await session.decide_command_async(command)
            if verdict.action == "approve":
                session.notify = self.notice
                self.say(verdict.message + "; waiting for an approver...")
                verdict = await session.resolve(command, verdict)
        self.statement_id = session.record_statement(command, protocol="ssh-exec", verdict=verdict)
        if not verdict.allowed:
            session.record_result(self.statement_id, started=self.perf_started, rows=None, tag=None,
                                  error=verdict.message or "refused")
            self.refuse(verdict.message or "jitgate: command refused")
            return False
        if transfer and is_transfer_endpoint(command):
            self.record_streams = False  # binary protocol streams: counts, digests and files instead
            mode = scp_mode(command)
            if mode is not None:
                self.scp = ScpObserver(*mode)
                self.scp_from_client = mode[0] == "upload"
        return True

    async def _decide_shell(self) -> bool:
        """A shell that is not one exec command (a PTY session, or `ssh host` fed a script on
        stdin) is decided by the target's ``shells`` setting, not by classifying its lines."""
        session = self.session
        kind = "interactive shell (pty)" if self.term is not None else "shell reading its commands from stdin (no pty)"
        statement = f"ssh {kind} on {session.target_name} as {session.target.username}"
        verdict = await session.decide_command_async("")
        if verdict.action == "deny":
            verdict = Verdict("deny", verdict.classes, verdict.reasons,
                              f"jitgate: shells are not allowed on target {session.target_name!r} for you "
                              "(policy: shells: deny); run single commands with exec (ssh host CMD)")
        elif verdict.action == "approve":
            session.notify = self.notice
            self.say(f"jitgate: a shell on target {session.target_name!r} needs approval (policy: shells: approve); "
                     "waiting for an approver...")
            verdict = await session.resolve(statement, verdict)
        self.statement_id = session.record_statement(statement, protocol="ssh-shell", verdict=verdict)
        if not verdict.allowed:
            session.record_result(self.statement_id, started=self.perf_started, rows=None, tag=None,
                                  error=verdict.message or "refused")
            self.refuse(verdict.message or "jitgate: shell refused")
            return False
        window = session.target.approvals.session_access
        if verdict.approval_id and window:
            # time-boxed like session_approval: the approved shell closes when its window ends
            self.expiry = asyncio.get_running_loop().call_later(window, self._expire_shell, window)
        return True

    def _expire_shell(self, seconds: int) -> None:
        if self.finished:
            return
        self.session.recorder.event("shell.expired", channel=self.number, seconds=seconds)
        self.say(f"jitgate: the approved shell window ({seconds}s) is over; closing this shell")
        self._finish_record(reason=f"approved shell window of {seconds}s elapsed")
        self.finished = True
        self.gc.channels.discard(self)
        self.abort()

    async def _connect_upstream(self) -> None:
        env = {k: v for k, v in self.chan.get_environment().items() if k.startswith(FORWARDED_ENV_PREFIXES)}
        options: dict = {"encoding": None, "env": env or None}
        if self.term is not None:
            term_type, term_size, term_modes = self.term
            options.update(term_type=term_type, term_size=term_size, term_modes=term_modes, request_pty=True)
        else:
            options.update(request_pty=False)
        if self.mode == "sftp":
            options["subsystem"] = "sftp"
            self.sftp = SftpObserver()
            self.record_streams = False
        elif self.mode == "exec":
            options["command"] = self.command
        self.up, _ = await self.gc.upstream.create_session(lambda: UpstreamSide(self), **options)
        early, self.early = self.early, []
        for data, datatype in early:
            self.data_received(data, datatype)
        if self.eof_pending:
            self.up.write_eof()

    # -- client -> upstream -------------------------------------------------------------------

    def data_received(self, data: bytes, datatype) -> None:
        if self.finished:
            return
        if self.up is None:  # arrived before reading was paused; sent once the upstream channel is open
            self.early.append((data, datatype))
            return
        self.counts["stdin"] += len(data)
        try:
            if self.sftp is not None:
                self._file_events(self.sftp.client_data(data))
            elif self.scp is not None and self.scp_from_client:
                self._file_events(self.scp.feed(data))
            elif self.record_streams and self.term is None:
                self._record_stdin(data)
            elif self.term is not None and (b"\r" in data or b"\n" in data):
                # Enter: the line the shell echoes back before its newline is the command typed
                self.enters_pending = min(self.enters_pending + data.count(b"\r") + data.count(b"\n"), 64)
        except TransferProtocolError as exc:
            self._protocol_error(exc)
            return
        self.up.write(data, datatype)
        if self.term is not None and self.gc.upstream_writes is not None:
            self.gc.upstream_writes.flush()  # a keystroke goes to the VM now, not at the loop's next turn

    def _record_stdin(self, data: bytes) -> None:
        """What a client feeds a command or shell without a terminal (echo 'id' | ssh host)."""
        self.stdin_digest.update(data)
        left = self.session.target.record_stdin_bytes - self.stdin_recorded
        if left <= 0:
            return
        piece = data[:left]
        self.stdin_recorded += len(piece)
        text = self.stdin_decoder.feed(piece)
        if text:
            self.session.recorder.event("ssh.stdin", channel=self.number, t=self._t(),
                                        data=self.session.mask_for_record(text))

    def _echo(self, text: str) -> None:
        """Follow the terminal's output line by line; a line that ends after the client pressed
        Enter is the command as the shell echoed it."""
        *done, rest = (self.echo_line + text).split("\n")
        for line in done:
            if self.enters_pending:
                self.enters_pending -= 1
                self._echoed_line(line[-ECHO_LINE_LIMIT:])
        self.echo_line = rest[-ECHO_LINE_LIMIT:]

    def _echoed_line(self, echoed: str) -> None:
        """Best effort: the line the shell echoed when Enter was pressed, classified for the recording.
        Keystrokes themselves are never kept (a password at a no-echo prompt is not echoed)."""
        line = _visible_command(echoed)
        if not line:
            return
        result = classify_command(line)
        self.session.recorder.event("shell.line", channel=self.number, t=self._t(),
                                    text=self.session.mask_for_record(line), classes=sorted(result.classes),
                                    reasons=[r for s in result.statements for r in s.reasons][:10])

    def eof_received(self) -> bool:
        if self.up is not None:
            self.up.write_eof()
        else:
            self.eof_pending = True
        return True

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self.term is not None:
            self.term = (self.term[0], (width, height, pixwidth, pixheight), self.term[2])
            self.session.recorder.event(TERM_RESIZE, channel=self.number, event=[self._t(), "r", f"{width}x{height}"])
        if self.up is not None:
            self.up.change_terminal_size(width, height, pixwidth, pixheight)

    def signal_received(self, signal: str) -> None:
        self.session.recorder.event("ssh.signal", channel=self.number, signal=signal)
        if self.up is not None:
            self.up.send_signal(signal)

    def break_received(self, msec: int) -> bool:
        if self.up is not None:
            self.up.send_break(msec)
        return True

    def pause_writing(self) -> None:
        if self.up is not None:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None:
            self.up.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gc.channels.discard(self)
        if self.up is not None:
            self.up.close()
        if not self.finished:
            self._finish_record(reason="client closed the channel")
            self.finished = True

    def abort(self) -> None:
        if self.up is not None:
            self.up.close()
        if self.chan is not None:
            self.chan.close()

    # -- upstream -> client ------------------------------------------------------------------

    def _t(self) -> float:
        return round(time.monotonic() - self.started, 6)

    def from_upstream(self, data: bytes, datatype) -> None:
        if self.finished:
            return
        stream = "stderr" if datatype == STDERR else "stdout"
        try:
            if self.sftp is not None:
                self.sftp.server_data(data)
            elif self.scp is not None and not self.scp_from_client and stream == "stdout":
                self._file_events(self.scp.feed(data))
        except TransferProtocolError as exc:
            self._protocol_error(exc)
            return
        self.chan.write(data, datatype)
        if self.term is not None:
            self.gc.client_writes.flush()  # a terminal's echo goes out now, before it is recorded
        self.counts[stream] += len(data)
        self.digests[stream].update(data)
        if not self.record_streams:
            return
        if self.term is not None:
            text = self.decoders[stream].feed(data)
            if text:
                self._echo(text)
                self.session.recorder.event(TERM_OUTPUT, channel=self.number,
                                            event=[self._t(), "o", self.session.mask_for_record(text)])
            return
        left = EXEC_RECORD_LIMIT - self.recorded[stream]
        if left > 0:
            piece = data[:left]
            self.recorded[stream] += len(piece)
            text = self.decoders[stream].feed(piece)
            if text:
                self.session.recorder.event("exec.output", channel=self.number, stream=stream, t=self._t(),
                                            data=self.session.mask_for_record(text))

    def _file_events(self, events: list[FileEvent]) -> None:
        for event in events:
            self.session.recorder.event("file.transfer", channel=self.number, **event.fields())

    def _protocol_error(self, exc: TransferProtocolError) -> None:
        self.session.recorder.event("file.protocol_error", channel=self.number, error=str(exc))
        log(logger, logging.WARNING, "file transfer stream not understood; channel closed",
            session_id=self.session.session_id, error=str(exc))
        self.refuse(f"jitgate: the file transfer stream could not be recorded ({exc}); channel closed", 255)
        if self.up is not None:
            self.up.close()

    async def upstream_closed(self, exc: Exception | None) -> None:
        """The VM closed its channel: hand the exit status or signal to the client once all output is out."""
        if self.finished:
            return
        if exc is not None:
            self.upstream_lost = str(exc)
        deadline = time.monotonic() + 30
        while self.chan.get_write_buffer_size() and time.monotonic() < deadline and not self.chan.is_closing():
            await asyncio.sleep(0.01)
        self._finish_record()
        self.finished = True
        self.gc.channels.discard(self)
        try:
            if self.exit_signal is not None:
                self.chan.exit_with_signal(*self.exit_signal)
            elif self.exit_status is not None:
                self.chan.exit(self.exit_status)
            else:
                if self.upstream_lost:
                    self.say(f"jitgate: the connection to the target was lost ({self.upstream_lost})")
                self.chan.close()
        except OSError:
            pass

    def _finish_record(self, reason: str | None = None) -> None:
        session = self.session
        if session is None or session.recorder.spool.closed or getattr(self, "_recorded_end", False):
            return
        self._recorded_end = True
        if self.expiry is not None:
            self.expiry.cancel()
        if self.sftp is not None:
            self._file_events(self.sftp.finish())
        for stream, decoder in self.decoders.items():
            rest = decoder.flush()
            if rest and self.record_streams and self.term is not None:
                session.recorder.event(TERM_OUTPUT, channel=self.number, event=[self._t(), "o", session.mask_for_record(rest)])
        fields = {
            "channel": self.number,
            "exit_status": self.exit_status,
            "exit_signal": self.exit_signal[0] if self.exit_signal else None,
            "bytes_in": self.counts["stdin"],
            "bytes_out": self.counts["stdout"],
            "bytes_err": self.counts["stderr"],
            "stdout_sha256": self.digests["stdout"].hexdigest(),
            "stdin_sha256": self.stdin_digest.hexdigest() if self.term is None and self.record_streams else None,
            "stderr_sha256": self.digests["stderr"].hexdigest(),
            "duration_ms": round((time.monotonic() - self.started) * 1000, 3),
        }
        if reason or self.upstream_lost:
            fields["reason"] = reason or f"upstream lost: {self.upstream_lost}"
        if any(self.recorded[s] >= EXEC_RECORD_LIMIT for s in self.recorded):
            fields["output_truncated_at"] = EXEC_RECORD_LIMIT
        if self.stdin_recorded >= session.target.record_stdin_bytes and self.counts["stdin"] > self.stdin_recorded:
            fields["stdin_truncated_at"] = session.target.record_stdin_bytes
        session.recorder.event("ssh.exit", **fields)
        if self.statement_id is not None:
            tag = (f"signal {self.exit_signal[0]}" if self.exit_signal
                   else f"exit {self.exit_status}" if self.exit_status is not None else "closed")
            session.record_result(self.statement_id, started=self.perf_started, rows=None, tag=tag,
                                  error=None if self.exit_status == 0 else tag)


def _visible_command(echoed: str) -> str:
    """The command part of an echoed terminal line: escapes, carriage returns and the prompt removed."""
    text = _ANSI.sub("", echoed).rstrip("\r").rsplit("\r", 1)[-1]  # a carriage return redraws the line
    text = "".join(c for c in text if c == "\t" or c >= " ")
    match = _PROMPT_END.match(text)
    return (text[match.end():] if match else text).strip()


class UpstreamSide(asyncssh.SSHClientSession):
    """The VM's half of a relayed channel; everything goes to the RelayChannel."""

    def __init__(self, relay: RelayChannel) -> None:
        self.relay = relay

    def connection_made(self, chan: asyncssh.SSHClientChannel) -> None:
        quiet_packet_log(chan)

    def data_received(self, data: bytes, datatype) -> None:
        self.relay.from_upstream(data, datatype)

    def eof_received(self) -> bool:
        if not self.relay.finished:
            self.relay.chan.write_eof()
        return True

    def exit_status_received(self, status: int) -> None:
        self.relay.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.relay.exit_signal = (signal, core_dumped, msg, lang)

    def pause_writing(self) -> None:
        self.relay.chan.pause_reading()

    def resume_writing(self) -> None:
        self.relay.chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.gc.conn.create_task(self.relay.upstream_closed(exc))
