"""File transfer through the broker: sftp, scp (SFTP and legacy mode), rsync; each recorded."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

from tests.ssh.helpers import of_type, recording_events, sealed_session

REMOTE_DIR = "/tmp/jitgate-ssh-files"


@pytest.fixture(scope="module")
def payload(tmp_path_factory) -> tuple[bytes, str]:
    data = os.urandom(3 * 1024 * 1024 + 123)  # several SFTP packets, not a round size
    path = tmp_path_factory.mktemp("payload") / "payload.bin"
    path.write_bytes(data)
    subprocess.run(["install", "-d", "-o", "jitgate-ssh", "-m", "0755", REMOTE_DIR], check=True)
    return data, str(path)


def transfers(stack, user: str, count: int = 1) -> list[dict]:
    return of_type(recording_events(stack, sealed_session(stack, user, count)), "file.transfer")


def test_sftp_upload_and_download_recorded(ssh_cmd, stack, payload, tmp_path):
    data, local = payload
    digest = hashlib.sha256(data).hexdigest()
    argv, env = ssh_cmd("sftp", user="sftp@example.com")
    back = tmp_path / "back.bin"
    batch = f"put {local} {REMOTE_DIR}/sftp.bin\nget {REMOTE_DIR}/sftp.bin {back}\nrm {REMOTE_DIR}/sftp.bin\n"
    # -b implies BatchMode (no passwords); ssh keeps the first value it is given, so say no first.
    r = subprocess.run(argv + ["-o", "BatchMode=no", "-b", "-", "127.0.0.1"], env=env, input=batch.encode(), capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == data
    seen = transfers(stack, "sftp@example.com")
    upload = next(t for t in seen if t["action"] == "upload")
    download = next(t for t in seen if t["action"] == "download")
    for t in (upload, download):
        assert (t["path"], t["bytes"], t["sha256"], t["protocol"]) == (f"{REMOTE_DIR}/sftp.bin", len(data), digest, "sftp")
    assert any(t["action"] == "remove" for t in seen)


def test_scp_recorded_in_both_modes(ssh_cmd, stack, payload, tmp_path):
    data, local = payload
    digest = hashlib.sha256(data).hexdigest()
    argv, env = ssh_cmd("scp", user="scp@example.com")
    r = subprocess.run(argv + [local, f"127.0.0.1:{REMOTE_DIR}/scp.bin"], env=env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    [up] = transfers(stack, "scp@example.com")
    assert (up["protocol"], up["action"], up["bytes"], up["sha256"]) == ("sftp", "upload", len(data), digest)

    legacy = tmp_path / "legacy.bin"  # scp -O: the old protocol over exec ("scp -f ...")
    r = subprocess.run(argv + ["-O", f"127.0.0.1:{REMOTE_DIR}/scp.bin", str(legacy)], env=env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert legacy.read_bytes() == data
    [down] = transfers(stack, "scp@example.com", count=2)
    assert (down["protocol"], down["action"], down["path"], down["bytes"], down["sha256"]) == (
        "scp", "download", "scp.bin", len(data), digest)


def test_rsync_over_ssh_recorded_as_command_with_bytes(ssh_cmd, ssh_targets, stack, payload, tmp_path):
    if shutil.which("rsync") is None:
        pytest.fail("rsync is not installed: scripts/install.sh installs it")
    data, local = payload
    argv, env = ssh_cmd(user="rsync@example.com")
    rsh = " ".join(argv[2:])  # ssh and its options, without "sshpass -e"
    r = subprocess.run(["sshpass", "-e", "rsync", "-a", "-e", rsh, local, f"127.0.0.1:{REMOTE_DIR}/rsync.bin"],
                       env=env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    events = recording_events(stack, sealed_session(stack, "rsync@example.com"))
    [statement] = of_type(events, "statement")
    assert statement["sql"].startswith("rsync --server") and statement["decision"] == "allow"
    [end] = of_type(events, "ssh.exit")
    assert end["exit_status"] == 0 and end["bytes_in"] >= len(data)
    assert not of_type(events, "exec.output")  # binary protocol streams are counted, not transcribed


def test_file_transfer_refused_when_policy_says_no(ssh_cmd, payload):
    _, local = payload
    argv, env = ssh_cmd("scp", target="vm-nofiles", user="nofiles@example.com")
    r = subprocess.run(argv + [local, f"127.0.0.1:{REMOTE_DIR}/no.bin"], env=env, capture_output=True, timeout=60)
    assert r.returncode != 0
    assert b"file transfer (sftp/scp) is not allowed" in r.stderr
    r = subprocess.run(argv + ["-O", local, f"127.0.0.1:{REMOTE_DIR}/no.bin"], env=env, capture_output=True, timeout=60)
    assert r.returncode != 0
    assert b"file transfer (scp/rsync) is not allowed" in r.stderr


def test_sftp_rename_hardlink_and_copy_recorded(ssh_cmd, stack, tmp_path):
    small = tmp_path / "small.txt"
    small.write_bytes(b"hello\n")
    argv, env = ssh_cmd("sftp", user="sftp-ops@example.com")
    batch = (f"put {small} {REMOTE_DIR}/ops-a.txt\nrename {REMOTE_DIR}/ops-a.txt {REMOTE_DIR}/ops-b.txt\n"
             f"ln {REMOTE_DIR}/ops-b.txt {REMOTE_DIR}/ops-link.txt\ncp {REMOTE_DIR}/ops-b.txt {REMOTE_DIR}/ops-copy.txt\n"
             f"rm {REMOTE_DIR}/ops-b.txt\nrm {REMOTE_DIR}/ops-link.txt\nrm {REMOTE_DIR}/ops-copy.txt\n")
    r = subprocess.run(argv + ["-o", "BatchMode=no", "-b", "-", "127.0.0.1"], env=env, input=batch.encode(),
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    seen = transfers(stack, "sftp-ops@example.com")
    [rename] = [t for t in seen if t["action"] == "rename"]
    assert (rename["path"], rename["to"]) == (f"{REMOTE_DIR}/ops-a.txt", f"{REMOTE_DIR}/ops-b.txt")
    [link] = [t for t in seen if t["action"] == "hardlink"]
    assert (link["path"], link["target"]) == (f"{REMOTE_DIR}/ops-link.txt", f"{REMOTE_DIR}/ops-b.txt")
    [copy] = [t for t in seen if t["action"] == "copy"]
    assert (copy["path"], copy["from"]) == (f"{REMOTE_DIR}/ops-copy.txt", f"{REMOTE_DIR}/ops-b.txt")
    uploads = [t for t in seen if t["action"] == "upload"]
    assert [u["path"] for u in uploads] == [f"{REMOTE_DIR}/ops-a.txt"]  # the copy is not a 0-byte upload


def test_appended_transfer_word_does_not_hide_exec_output(ssh_cmd, stack):
    argv, env = ssh_cmd(user="hide@example.com")
    r = subprocess.run(argv + ["127.0.0.1", "echo visible-output; rsync --version >/dev/null"], env=env,
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    events = recording_events(stack, sealed_session(stack, "hide@example.com"))
    assert "visible-output" in "".join(e["data"] for e in of_type(events, "exec.output"))
