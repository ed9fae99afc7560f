"""The file-transfer observers driven with bytes alone (no sockets)."""
from __future__ import annotations

import hashlib
import struct

import pytest

from broker.ssh.transfers import (ScpObserver, SftpObserver, TransferProtocolError, is_file_transfer_command,
                                  scp_mode)
from jitgate.recording.asciicast import read_asciicast, to_asciicast


def pkt(kind: int, *parts: bytes) -> bytes:
    body = bytes([kind]) + b"".join(parts)
    return struct.pack(">I", len(body)) + body


def s(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def test_sftp_download_out_of_order_replies_and_split_packets():
    data = bytes(range(256)) * 100
    obs = SftpObserver()
    obs.client_data(pkt(1, u32(3)) + pkt(3, u32(1), s(b"/etc/motd"), u32(1), u32(0)))
    obs.server_data(pkt(102, u32(1), s(b"H")))
    stream = pkt(5, u32(2), s(b"H"), u64(0), u32(10000)) + pkt(5, u32(3), s(b"H"), u64(10000), u32(10000))
    obs.client_data(stream)
    replies = pkt(103, u32(3), s(data[10000:])) + pkt(103, u32(2), s(data[:10000]))
    for i in range(0, len(replies), 777):  # arbitrary TCP-ish splits
        obs.server_data(replies[i:i + 777])
    [event] = obs.client_data(pkt(4, u32(4), s(b"H")))
    assert (event.action, event.path, event.bytes, event.sha256) == ("download", "/etc/motd", len(data),
                                                                      hashlib.sha256(data).hexdigest())


def test_sftp_upload_rename_and_oversized_packet():
    obs = SftpObserver()
    obs.client_data(pkt(3, u32(1), s(b"up.bin"), u32(0x1A), u32(0)))
    obs.server_data(pkt(102, u32(1), s(b"h1")))
    obs.client_data(pkt(6, u32(2), s(b"h1"), u64(0), s(b"hello ")) + pkt(6, u32(3), s(b"h1"), u64(6), s(b"world")))
    [up] = obs.client_data(pkt(4, u32(4), s(b"h1")))
    assert (up.action, up.bytes, up.sha256) == ("upload", 11, hashlib.sha256(b"hello world").hexdigest())
    [mv] = obs.client_data(pkt(18, u32(5), s(b"a"), s(b"b")))
    assert (mv.action, mv.path, mv.extra) == ("rename", "a", {"to": "b"})
    with pytest.raises(TransferProtocolError):
        obs.client_data(struct.pack(">I", 64 * 1024 * 1024) + b"\x06")


def test_sftp_seek_gives_no_digest():
    obs = SftpObserver()
    obs.client_data(pkt(3, u32(1), s(b"f"), u32(1), u32(0)))
    obs.server_data(pkt(102, u32(1), s(b"h")))
    for rid, off in ((2, 0), (3, 0)):  # the same bytes read twice
        obs.client_data(pkt(5, u32(rid), s(b"h"), u64(off), u32(4)))
        obs.server_data(pkt(103, u32(rid), s(b"abcd")))
    [event] = obs.client_data(pkt(4, u32(9), s(b"h")))
    assert event.sha256 is None and event.sequential is False and event.bytes == 8


def test_scp_stream_with_directory_and_empty_file():
    obs = ScpObserver("upload", "/tmp/dest")
    stream = b"D0755 0 dir\nT1 0 1 0\nC0644 5 a.txt\nhello\x00C0600 0 empty\n\x00E\n"
    events = []
    for i in range(len(stream)):  # one byte at a time
        events += obs.feed(stream[i:i + 1])
    assert [(e.path, e.bytes, e.sha256) for e in events] == [
        ("dir/a.txt", 5, hashlib.sha256(b"hello").hexdigest()),
        ("dir/empty", 0, hashlib.sha256(b"").hexdigest()),
    ]
    with pytest.raises(TransferProtocolError):
        ScpObserver("upload", ".").feed(b"garbage\n")


def test_command_detection():
    assert scp_mode("scp -t /tmp/x") == ("upload", "/tmp/x")
    assert scp_mode("scp -r -f -- dir") == ("download", "dir")
    assert scp_mode("ls -t") is None
    assert is_file_transfer_command("rsync --server -logDtpre.iLsfxCIvu . /tmp/x")
    assert not is_file_transfer_command("echo scp")


def test_asciicast_round_trip():
    events = [
        {"type": "term.start", "channel": 1, "ts": 1000.0, "width": 100, "height": 30, "term": "xterm-256color"},
        {"type": "term.output", "channel": 1, "event": [0.1, "o", "$ "]},
        {"type": "term.output", "channel": 2, "event": [0.2, "o", "other channel"]},
        {"type": "term.resize", "channel": 1, "event": [0.3, "r", "120x40"]},
        {"type": "term.output", "channel": 1, "event": [0.4, "o", "café\r\n"]},
    ]
    cast = read_asciicast(to_asciicast(events))
    assert (cast.header["width"], cast.header["height"], cast.header["env"]["TERM"]) == (100, 30, "xterm-256color")
    assert cast.output == "$ café\r\n"
    with pytest.raises(LookupError):
        to_asciicast([{"type": "statement"}])


@pytest.mark.parametrize("command", ["env X=1 scp -t /tmp", "/usr/bin/env rsync --server . /x", 'sh -c "scp -t /tmp"',
                                     "ls; scp -f secret", "sudo -u bob /usr/lib/openssh/sftp-server", "echo 'unclosed"])
def test_wrapped_transfers_are_still_transfers(command):
    assert is_file_transfer_command(command)


def test_negative_scp_size_is_a_protocol_error():
    with pytest.raises(TransferProtocolError, match="negative size"):
        ScpObserver("upload", ".").feed(b"C0644 -3 f\n")
