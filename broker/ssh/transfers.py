"""File transfers seen in passing: SFTP and legacy scp streams parsed without touching a socket.

The relay forwards every byte unchanged and feeds a copy to an observer here,
which returns what happened (a file uploaded or downloaded, with its size and
SHA-256; a rename or removal). The observers never alter the stream, so a
parser gap costs a record, not a broken transfer; but a stream the observer
cannot follow at all (a packet above the size limit, a malformed header) is
reported as ``TransferProtocolError`` and the relay closes the channel instead
of letting an unrecorded transfer through.

SFTP (draft-ietf-secsh-filexfer-02, version 3 as OpenSSH speaks it): the
client's OPEN is matched with the server's HANDLE by request id; READ requests
are matched with DATA replies; WRITE carries its data. Each handle keeps one
SHA-256 per direction over the bytes at consecutive offsets. OpenSSH's sftp
pipelines requests but sends and answers them in offset order; a small
reorder buffer absorbs the rest. A transfer that seeks (reads the same bytes
twice, skips a hole) is recorded with ``sequential: false`` and no digest,
because its bytes are not one file's content.

scp (the legacy protocol, ``scp -O``; newer scp speaks SFTP): the stream from
the sending side carries ``C<mode> <size> <name>`` lines, the file's bytes and a
NUL; ``D``/``E`` enter and leave directories; ``T`` lines carry times.
"""
from __future__ import annotations

import hashlib
import shlex
import struct
from dataclasses import dataclass, field

# OpenSSH's sftp-server refuses packets above 256 KiB; allow some slack for other servers.
MAX_SFTP_PACKET = 4 * 1024 * 1024
# Bytes held out of order per file before giving up on its digest.
MAX_REORDER_BYTES = 32 * 1024 * 1024
# A legacy scp control line ("C0644 123 name") is short; a longer one is not scp.
MAX_SCP_LINE = 64 * 1024

SSH_FXP_OPEN, SSH_FXP_CLOSE, SSH_FXP_READ, SSH_FXP_WRITE = 3, 4, 5, 6
SSH_FXP_SETSTAT, SSH_FXP_REMOVE, SSH_FXP_MKDIR, SSH_FXP_RMDIR = 9, 13, 14, 15
SSH_FXP_RENAME, SSH_FXP_SYMLINK = 18, 20
SSH_FXP_EXTENDED = 200
SSH_FXP_STATUS, SSH_FXP_HANDLE, SSH_FXP_DATA = 101, 102, 103
SSH_FXF_WRITE = 0x02

_PATH_OPS = {SSH_FXP_REMOVE: "remove", SSH_FXP_MKDIR: "mkdir", SSH_FXP_RMDIR: "rmdir", SSH_FXP_SETSTAT: "setstat"}


class TransferProtocolError(ValueError):
    """The stream is not the file-transfer protocol it claims to be."""


class _Digest:
    """SHA-256 over the bytes of one direction of one open file, in offset order."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.next = 0
        self.bytes = 0
        self.held: dict[int, bytes] = {}
        self.held_bytes = 0
        self.sequential = True

    def add(self, offset: int, data: bytes) -> None:
        if not data:
            return
        self.bytes += len(data)
        if not self.sequential:
            return
        if offset < self.next or offset in self.held:
            self._give_up()
            return
        if offset > self.next:
            self.held[offset] = bytes(data)
            self.held_bytes += len(data)
            if self.held_bytes > MAX_REORDER_BYTES:
                self._give_up()
            return
        self.sha.update(data)
        self.next += len(data)
        while self.next in self.held:
            chunk = self.held.pop(self.next)
            self.held_bytes -= len(chunk)
            self.sha.update(chunk)
            self.next += len(chunk)

    def _give_up(self) -> None:
        self.sequential = False
        self.held.clear()
        self.held_bytes = 0

    def result(self) -> tuple[str | None, bool]:
        complete = self.sequential and not self.held
        return (self.sha.hexdigest() if complete else None), complete


@dataclass
class FileEvent:
    """What the recording says about one file: a transfer or an operation."""

    protocol: str  # sftp | scp
    action: str  # upload | download | copy | remove | rename | hardlink | mkdir | rmdir | setstat | symlink | extended
    path: str
    bytes: int | None = None
    sha256: str | None = None
    sequential: bool = True
    extra: dict = field(default_factory=dict)

    def fields(self) -> dict:
        out = {"protocol": self.protocol, "action": self.action, "path": self.path}
        if self.bytes is not None:
            out.update(bytes=self.bytes, sha256=self.sha256, sequential=self.sequential)
        out.update(self.extra)
        return out


@dataclass
class _OpenFile:
    path: str
    writing: bool
    read: _Digest = field(default_factory=_Digest)
    written: _Digest = field(default_factory=_Digest)
    # server-side copies into this file (copy-data: sftp cp): (source path, offset, length; 0 = to EOF)
    copies: list = field(default_factory=list)

    def events(self) -> list[FileEvent]:
        if self.copies and not self.written.bytes:
            # sftp cp: the server copied the bytes itself; no content crossed the channel to hash
            return [FileEvent("sftp", "copy", self.path, extra={"from": src, "offset": offset, "length": length})
                    for src, offset, length in self.copies]
        out = []
        for action, digest in (("upload", self.written), ("download", self.read)):
            if digest.bytes or (action == "upload" and self.writing and not self.read.bytes):
                sha, sequential = digest.result()
                if digest.bytes == 0:
                    sha = hashlib.sha256(b"").hexdigest()
                out.append(FileEvent("sftp", action, self.path, digest.bytes, sha, sequential))
        return out


class _Packets:
    """uint32-length-prefixed packets out of a byte stream."""

    def __init__(self, limit: int) -> None:
        self.buf = bytearray()
        self.limit = limit

    def feed(self, data: bytes) -> list[memoryview]:
        self.buf += data
        out = []
        pos = 0
        buf = self.buf
        while len(buf) - pos >= 4:
            (length,) = struct.unpack_from(">I", buf, pos)
            if length == 0 or length > self.limit:
                raise TransferProtocolError(f"SFTP packet of {length} bytes (limit {self.limit})")
            if len(buf) - pos - 4 < length:
                break
            out.append(bytes(buf[pos + 4 : pos + 4 + length]))
            pos += 4 + length
        if pos:
            del buf[:pos]
        return out


class _Reader:
    def __init__(self, packet: bytes) -> None:
        self.p = packet
        self.pos = 0

    def u8(self) -> int:
        value = self.p[self.pos]
        self.pos += 1
        return value

    def u32(self) -> int:
        (value,) = struct.unpack_from(">I", self.p, self.pos)
        self.pos += 4
        return value

    def u64(self) -> int:
        (value,) = struct.unpack_from(">Q", self.p, self.pos)
        self.pos += 8
        return value

    def string(self) -> bytes:
        n = self.u32()
        if self.pos + n > len(self.p):
            raise TransferProtocolError("SFTP string runs past its packet")
        value = self.p[self.pos : self.pos + n]
        self.pos += n
        return value


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


class SftpObserver:
    """Feed it both directions of an SFTP subsystem channel; it returns file events as they complete."""

    def __init__(self) -> None:
        self._up = _Packets(MAX_SFTP_PACKET)
        self._down = _Packets(MAX_SFTP_PACKET)
        self._opening: dict[int, tuple[str, bool]] = {}
        self._reads: dict[int, tuple[bytes, int]] = {}
        self._files: dict[bytes, _OpenFile] = {}

    def client_data(self, data: bytes) -> list[FileEvent]:
        events: list[FileEvent] = []
        for packet in self._up.feed(data):
            try:
                events.extend(self._request(_Reader(packet)))
            except (struct.error, IndexError):
                raise TransferProtocolError("truncated SFTP request") from None
        return events

    def server_data(self, data: bytes) -> list[FileEvent]:
        for packet in self._down.feed(data):
            try:
                self._reply(_Reader(packet))
            except (struct.error, IndexError):
                raise TransferProtocolError("truncated SFTP reply") from None
        return []

    def finish(self) -> list[FileEvent]:
        """Files still open when the channel closed (the client died mid-transfer)."""
        events = []
        for f in self._files.values():
            for e in f.events():
                e.extra["closed"] = False
                events.append(e)
        self._files.clear()
        return events

    def _request(self, r: _Reader) -> list[FileEvent]:
        kind = r.u8()
        if kind == 1:  # INIT carries a version, no request id
            return []
        rid = r.u32()
        if kind == SSH_FXP_OPEN:
            path = _name(r.string())
            pflags = r.u32()
            self._opening[rid] = (path, bool(pflags & SSH_FXF_WRITE))
        elif kind == SSH_FXP_READ:
            handle = r.string()
            self._reads[rid] = (handle, r.u64())
        elif kind == SSH_FXP_WRITE:
            handle = r.string()
            offset = r.u64()
            f = self._files.get(handle)
            if f is not None:
                f.written.add(offset, r.string())
        elif kind == SSH_FXP_CLOSE:
            f = self._files.pop(r.string(), None)
            if f is not None:
                return f.events()
        elif kind in _PATH_OPS:
            return [FileEvent("sftp", _PATH_OPS[kind], _name(r.string()))]
        elif kind == SSH_FXP_RENAME:
            old = _name(r.string())
            return [FileEvent("sftp", "rename", old, extra={"to": _name(r.string())})]
        elif kind == SSH_FXP_SYMLINK:
            first = _name(r.string())
            return [FileEvent("sftp", "symlink", first, extra={"other": _name(r.string())})]
        elif kind == SSH_FXP_EXTENDED:
            return self._extended(_name(r.string()), r)
        return []

    def _extended(self, name: str, r: _Reader) -> list[FileEvent]:
        """OpenSSH's extensions that change files: posix-rename (what `sftp rename` sends),
        hardlink (`sftp ln`) and copy-data (`sftp cp`)."""
        if name == "posix-rename@openssh.com":
            old = _name(r.string())
            return [FileEvent("sftp", "rename", old, extra={"to": _name(r.string()), "posix": True})]
        if name == "hardlink@openssh.com":
            old = _name(r.string())
            return [FileEvent("sftp", "hardlink", _name(r.string()), extra={"target": old})]
        if name == "copy-data":
            source = self._files.get(r.string())
            offset, length = r.u64(), r.u64()
            destination = self._files.get(r.string())
            if destination is not None:
                destination.copies.append((source.path if source else "?", offset, length))
            return []
        if name in ("statvfs@openssh.com", "fstatvfs@openssh.com", "limits@openssh.com", "expand-path@openssh.com",
                    "home-directory", "users-groups-by-id@openssh.com", "fsync@openssh.com", "check-file-name",
                    "check-file-handle"):
            return []
        return [FileEvent("sftp", "extended", name)]  # an extension this observer does not know: still on record

    def _reply(self, r: _Reader) -> None:
        kind = r.u8()
        if kind == 2:  # VERSION
            return
        rid = r.u32()
        if kind == SSH_FXP_HANDLE:
            opening = self._opening.pop(rid, None)
            if opening is not None:
                self._files[r.string()] = _OpenFile(*opening)
        elif kind == SSH_FXP_DATA:
            read = self._reads.pop(rid, None)
            if read is not None:
                f = self._files.get(read[0])
                if f is not None:
                    f.read.add(read[1], r.string())
        elif kind == SSH_FXP_STATUS:
            self._opening.pop(rid, None)
            self._reads.pop(rid, None)


class ScpObserver:
    """The sending side's stream of a legacy scp transfer (``scp -t`` input or ``scp -f`` output)."""

    def __init__(self, action: str, remote_path: str) -> None:
        self.action = action
        self.remote_path = remote_path
        self._line = bytearray()
        self._dirs: list[str] = []
        self._file: tuple[str, int] | None = None
        self._left = 0
        self._digest: _Digest | None = None
        self._await_nul = False

    def feed(self, data: bytes) -> list[FileEvent]:
        events: list[FileEvent] = []
        view = memoryview(data)
        while view:
            if self._file is not None and self._left:
                take = view[: self._left]
                self._digest.add(self._digest.next, take)
                self._left -= len(take)
                view = view[len(take):]
                if not self._left:
                    events.append(self._done())
                continue
            if self._await_nul:
                self._await_nul = False
                view = view[1:]  # the sender's status byte after the data
                continue
            newline = bytes(view).find(b"\n")
            if newline < 0:
                self._line += view
                if len(self._line) > MAX_SCP_LINE:
                    raise TransferProtocolError("scp control line too long")
                return events
            self._line += view[:newline]
            view = view[newline + 1:]
            line, self._line = bytes(self._line), bytearray()
            events.extend(self._control(line))
        return events

    def _control(self, line: bytes) -> list[FileEvent]:
        if not line:
            return []
        kind = line[:1]
        if kind in (b"C", b"D"):
            try:
                _mode, size, name = line[1:].decode("utf-8", "backslashreplace").split(" ", 2)
                size_n = int(size)
            except ValueError:
                raise TransferProtocolError(f"malformed scp line {line[:80]!r}") from None
            if size_n < 0:  # a negative size would leave the byte counter stuck at a non-zero value
                raise TransferProtocolError(f"negative size in scp line {line[:80]!r}")
            if kind == b"D":
                self._dirs.append(name)
                return []
            self._file = ("/".join(self._dirs + [name]), size_n)
            self._digest = _Digest()
            self._left = size_n
            if size_n == 0:
                return [self._done()]
        elif kind == b"E":
            if self._dirs:
                self._dirs.pop()
        elif kind in (b"T", b"\x00", b"\x01", b"\x02"):
            pass
        else:
            raise TransferProtocolError(f"unexpected scp line {line[:80]!r}")
        return []

    def _done(self) -> FileEvent:
        name, size = self._file
        sha, sequential = self._digest.result()
        self._file = None
        self._await_nul = True
        return FileEvent("scp", self.action, name, size, sha, sequential, extra={"remote_path": self.remote_path})


def scp_mode(command: str) -> tuple[str, str] | None:
    """('upload', path) for ``scp -t path``, ('download', path) for ``scp -f path``; None for other commands."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    if not argv or argv[0].rsplit("/", 1)[-1] != "scp":
        return None
    flags = [a for a in argv[1:] if a.startswith("-")]
    paths = [a for a in argv[1:] if not a.startswith("-")]
    letters = "".join(f[1:] for f in flags if not f.startswith("--"))
    path = paths[-1] if paths else "."
    if "t" in letters:
        return "upload", path
    if "f" in letters:
        return "download", path
    return None


FILE_TRANSFER_PROGRAMS = {"scp", "sftp-server", "rsync", "sftp"}


def is_transfer_endpoint(command: str) -> bool:
    """Whether the whole command is one transfer program speaking its binary protocol (what
    scp, rsync and sftp clients run remotely): only then is the output recorded as files, byte
    counts and digests instead of text. Anything more (``ls; rsync --version``) is recorded as
    an ordinary command's output, so appending a transfer word cannot hide what ran."""
    if any(c in command for c in ";&|()<>`$\n\\"):
        return False
    try:
        argv = shlex.split(command)
    except ValueError:
        return False
    if not argv:
        return False
    program = argv[0].rsplit("/", 1)[-1]
    if program == "scp":
        return scp_mode(command) is not None
    if program == "rsync":
        return "--server" in argv
    return program == "sftp-server"


# Programs that only run another program: the transfer hides behind them.
_WRAPPERS = {"env", "sudo", "doas", "nice", "nohup", "timeout", "stdbuf", "ionice", "exec", "command", "builtin",
             "time", "xargs", "chrt", "setsid", "unbuffer"}
_SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "ash", "busybox"}


def is_file_transfer_command(command: str, _depth: int = 0) -> bool:
    """Commands that move files in bulk (scp -t/-f, rsync --server, sftp-server), also when
    wrapped (``env X=1 scp -t``, ``/usr/bin/env rsync ...``, ``sh -c "scp -t /tmp"``, after ``;``
    or ``&&``). Text that cannot be parsed counts as a transfer: the policy check fails closed."""
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError:
        return True
    at_start = True
    skip_option_values = False
    for i, token in enumerate(tokens):
        if token and set(token) <= set(";&|()<>"):
            at_start = True
            continue
        if not at_start:
            continue
        if "=" in token and not token.startswith("-") and token.split("=", 1)[0].isidentifier():
            continue  # VAR=value before the program
        if token.startswith("-") or (skip_option_values and token.replace(".", "").isdigit()):
            continue  # a wrapper's options (and timeout's duration)
        program = token.rsplit("/", 1)[-1]
        if program in FILE_TRANSFER_PROGRAMS:
            return True
        if program in _WRAPPERS:
            # Wrapper options take values we cannot tell from programs (sudo -u bob ...): any
            # transfer program later in this simple command counts (fail closed).
            for later in tokens[i + 1:]:
                if later and set(later) <= set(";&|()<>"):
                    break
                if later.rsplit("/", 1)[-1] in FILE_TRANSFER_PROGRAMS:
                    return True
            skip_option_values = True
            continue
        if program in _SHELLS and _depth < 3:
            rest = tokens[i + 1:]
            if "-c" in rest and rest.index("-c") + 1 < len(rest):
                if is_file_transfer_command(rest[rest.index("-c") + 1], _depth + 1):
                    return True
        at_start = False
        skip_option_values = False
    return False
