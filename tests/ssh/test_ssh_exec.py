"""Exec through the broker with the real OpenSSH client: streams, exit codes, signals, sign-in, refusals."""
from __future__ import annotations

import hashlib
import subprocess

from tests.ssh.helpers import of_type, recording_events, sealed_session


def run(argv, env, command, *, input_bytes=b"", timeout=60):
    return subprocess.run(argv + ["127.0.0.1", command], env=env, input=input_bytes, capture_output=True, timeout=timeout)


def direct(sshd, command, *, input_bytes=b""):
    argv = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "BatchMode=yes", "-i", str(sshd.client_key), "-p", str(sshd.port), "-l", "jitgate-ssh", "127.0.0.1", command]
    return subprocess.run(argv, input=input_bytes, capture_output=True, timeout=60)


def test_exec_keeps_streams_apart_and_passes_exit_code(ssh_cmd, stack):
    argv, env = ssh_cmd(user="exec@example.com")
    r = run(argv, env, "echo to-stdout; echo to-stderr >&2; cat; exit 3", input_bytes=b"from-stdin\n")
    assert r.returncode == 3
    assert r.stdout == b"to-stdout\nfrom-stdin\n"
    assert b"to-stderr\n" in r.stderr and b"to-stdout" not in r.stderr

    events = recording_events(stack, sealed_session(stack, "exec@example.com"))
    [statement] = of_type(events, "statement")
    assert statement["sql"].startswith("echo to-stdout") and statement["decision"] == "allow"
    [result] = of_type(events, "result")
    assert result["tag"] == "exit 3"
    [end] = of_type(events, "ssh.exit")
    assert (end["exit_status"], end["bytes_in"], end["bytes_out"]) == (3, 11, len(r.stdout))
    outputs = {(e["stream"], e["data"]) for e in of_type(events, "exec.output")}
    assert ("stderr", "to-stderr\n") in outputs


def test_exit_signal_matches_a_direct_connection(ssh_cmd, stack, sshd):
    argv, env = ssh_cmd(user="signal@example.com")
    via_broker = run(argv, env, "kill -TERM $$")
    plain = direct(sshd, "kill -TERM $$")
    assert via_broker.returncode == plain.returncode == 255
    events = recording_events(stack, sealed_session(stack, "signal@example.com"))
    [end] = of_type(events, "ssh.exit")
    assert end["exit_signal"] == "TERM"
    assert of_type(events, "result")[0]["tag"] == "signal TERM"


def test_large_binary_output_is_relayed_intact(ssh_cmd, stack):
    argv, env = ssh_cmd(user="bulk@example.com")
    r = run(argv, env, "head -c 5000000 /dev/urandom > /tmp/jitgate-bulk; sha256sum < /tmp/jitgate-bulk >&2; cat /tmp/jitgate-bulk")
    assert r.returncode == 0
    assert hashlib.sha256(r.stdout).hexdigest().encode() in r.stderr
    assert len(r.stdout) == 5_000_000
    # the recorded digest is that of the bytes the client received
    [end] = of_type(recording_events(stack, sealed_session(stack, "bulk@example.com")), "ssh.exit")
    assert (end["bytes_out"], end["stdout_sha256"]) == (len(r.stdout), hashlib.sha256(r.stdout).hexdigest())


def seq_output(size: int) -> bytes:
    """The first ``size`` bytes of `seq 1 N`'s output (every line different, so order shows)."""
    out, n, length = [], 1, 0
    while length < size:
        block = "".join(f"{i}\n" for i in range(n, n + 100_000)).encode()
        out.append(block)
        length += len(block)
        n += 100_000
    return b"".join(out)[:size]


def test_recorded_digest_is_exact_when_the_client_vanishes_mid_stream(ssh_cmd, stack):
    argv, env = ssh_cmd(user="vanish@example.com")
    client = subprocess.Popen(argv + ["127.0.0.1", "exec seq 1 1000000000"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    received = bytearray()
    try:
        while len(received) < 8 * 1024 * 1024:
            chunk = client.stdout.read1(1 << 20)
            assert chunk, "the stream ended early"
            received += chunk
    finally:
        client.kill()  # SIGKILL: no channel close, no EOF, the socket just goes away
        client.wait(30)
    [end] = of_type(recording_events(stack, sealed_session(stack, "vanish@example.com")), "ssh.exit")
    relayed = end["bytes_out"]
    assert relayed >= len(received)  # what the client got, plus what was in flight when it died
    expected = seq_output(relayed)
    assert bytes(received) == expected[:len(received)]
    assert end["stdout_sha256"] == hashlib.sha256(expected).hexdigest()
    assert end["reason"] == "client closed the channel"


def test_wrong_token_is_refused(ssh_cmd):
    argv, env = ssh_cmd(password="not-a-token")
    r = run(argv, env, "true")
    assert r.returncode != 0
    assert b"jitgate:" in r.stderr


def test_expired_token_is_refused_with_reason(ssh_cmd, token):
    argv, env = ssh_cmd(password=token(ttl=-120))
    r = run(argv, env, "true")
    assert r.returncode != 0
    assert b"expired" in r.stderr


def test_bad_username_form_says_how_to_log_in(ssh_cmd, ssh_targets, token):
    argv, env = ssh_cmd()
    argv = [a if not a.endswith("+vm-test") else "alice@example.com" for a in argv]
    r = run(argv, env, "true")
    assert r.returncode != 0
    assert b"log in as <you>+<target>" in r.stderr


def test_changed_upstream_host_key_is_refused(ssh_cmd, stack):
    argv, env = ssh_cmd(target="vm-rekeyed", user="rekeyed@example.com")
    r = run(argv, env, "echo should-not-run")
    assert r.returncode == 255
    assert b"should-not-run" not in r.stdout
    assert b"does not match the policy" in r.stderr
    events = recording_events(stack, sealed_session(stack, "rekeyed@example.com"))
    [refused] = of_type(events, "upstream.refused")
    assert "expected SHA256:" in refused["reason"] and "offered SHA256:" in refused["reason"]


def test_denied_command_is_refused_and_recorded(ssh_cmd, stack):
    argv, env = ssh_cmd(user="sudo@example.com")
    r = run(argv, env, "sudo id")
    assert r.returncode == 126
    assert b"refused by policy" in r.stderr and b"privilege" in r.stderr
    events = recording_events(stack, sealed_session(stack, "sudo@example.com"))
    [statement] = of_type(events, "statement")
    assert (statement["sql"], statement["decision"]) == ("sudo id", "deny")


def test_session_approval_nobody_decides_so_refused(ssh_cmd, stack):
    argv, env = ssh_cmd(target="vm-jit", user="jit@example.com")
    r = run(argv, env, "echo should-not-run")
    assert r.returncode == 126
    assert b"should-not-run" not in r.stdout
    assert b"needs an approval for each session" in r.stderr
    # Nobody decides within the target's 3 s wait: the request stays, and the client hears how to go on.
    assert b"waits for approval request apr_" in r.stderr and b"connect again" in r.stderr
    events = recording_events(stack, sealed_session(stack, "jit@example.com"))
    assert of_type(events, "session.approval")[0]["decision"] == "deny"


def test_port_forwarding_refused_unless_allowed(ssh_cmd, sshd, stack):
    argv, env = ssh_cmd(user="fwd@example.com")
    refused = subprocess.run(argv + ["-W", f"127.0.0.1:{sshd.port}", "127.0.0.1"], env=env, input=b"",
                             capture_output=True, timeout=60)
    assert refused.returncode == 255
    assert b"administratively prohibited" in refused.stderr and b"port forwarding is not allowed" in refused.stderr

    remote = subprocess.run(argv + ["-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9", "127.0.0.1", "true"],
                            env=env, capture_output=True, timeout=60)
    assert remote.returncode == 255 and b"forwarding failed" in remote.stderr

    argv, env = ssh_cmd(target="vm-forward", user="fwd-ok@example.com")
    allowed = subprocess.run(argv + ["-W", f"127.0.0.1:{sshd.port}", "127.0.0.1"], env=env,
                             input=b"SSH-2.0-probe\r\n", capture_output=True, timeout=60)
    assert allowed.stdout.startswith(b"SSH-2.0-OpenSSH")

    events = recording_events(stack, sealed_session(stack, "fwd@example.com", count=2))
    decisions = {(e["kind"], e["decision"]) for e in of_type(events, "forward")}
    assert decisions and all(d == "deny" for _, d in decisions)


def test_keyboard_interactive_sign_in(ssh_cmd):
    argv, env = ssh_cmd(user="kbd@example.com")
    argv = [a.replace("PreferredAuthentications=password,keyboard-interactive", "PreferredAuthentications=keyboard-interactive")
            for a in argv]
    r = run(argv, env, "echo kbd-ok")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"kbd-ok\n"
