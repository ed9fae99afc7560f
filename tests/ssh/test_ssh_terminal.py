"""An interactive terminal through the broker: PTY, resize, and the recording as asciicast v2."""
from __future__ import annotations

import os
import shutil
import subprocess

import pexpect
import pytest

from jitgate.recording.asciicast import read_asciicast
from tests.ssh.helpers import jitgate, of_type, recording_events, sealed_session

PROMPT = r"\$ $"


def askpass_env(ssh_targets, token_value: str) -> dict:
    """SSH_ASKPASS feeds the token, so ssh itself owns the terminal pexpect gives it."""
    script = ssh_targets.work / "askpass.sh"
    if not script.exists():
        script.write_text('#!/bin/sh\nprintf "%s\\n" "$JITGATE_TEST_TOKEN"\n')
        os.chmod(script, 0o755)
    return dict(os.environ, SSH_ASKPASS=str(script), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0",
                JITGATE_TEST_TOKEN=token_value, TERM="xterm")


def spawn_shell(ssh_targets, token, user: str) -> pexpect.spawn:
    env = askpass_env(ssh_targets, token(user))
    args = ["-tt", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "PreferredAuthentications=password,keyboard-interactive", "-o", "PubkeyAuthentication=no",
            "-p", str(ssh_targets.port), "-l", f"{user}+vm-test", "127.0.0.1"]
    child = pexpect.spawn("ssh", args, env=env, dimensions=(24, 80), timeout=30, encoding="utf-8")
    child.expect(PROMPT)
    return child


@pytest.fixture(scope="module")
def terminal_session(ssh_targets, token, stack):
    """One recorded interactive session shared by the tests below."""
    user = "tty@example.com"
    child = spawn_shell(ssh_targets, token, user)
    child.sendline("stty size")
    child.expect(r"24 80")
    child.expect(PROMPT)
    child.setwinsize(40, 120)
    child.sendline("stty size")
    child.expect(r"40 120")
    child.expect(PROMPT)
    child.sendline("echo marker-$((6*7)); printf 'caf\\303\\251\\n'")
    child.expect("marker-42")
    child.expect(PROMPT)
    child.sendline("exit 0")
    child.expect(pexpect.EOF)
    child.close()
    return sealed_session(stack, user), child.exitstatus


def test_interactive_shell_with_resize(terminal_session):
    _, status = terminal_session
    assert status == 0


def test_terminal_recorded_as_events(terminal_session, stack):
    session_id, _ = terminal_session
    events = recording_events(stack, session_id)
    [start] = of_type(events, "term.start")
    assert (start["width"], start["height"]) == (80, 24)
    assert [e["event"][2] for e in of_type(events, "term.resize")] == ["120x40"]
    output = "".join(e["event"][2] for e in of_type(events, "term.output"))
    assert "marker-42" in output and "40 120" in output and "café" in output
    assert of_type(events, "ssh.exit")[0]["exit_status"] == 0


def test_asciicast_export_plays_in_asciinema(terminal_session, stack, tmp_path):
    session_id, _ = terminal_session
    exported = jitgate(stack, "replay", session_id, "--asciicast")
    cast = read_asciicast(exported.stdout)
    assert (cast.header["width"], cast.header["height"]) == (80, 24)
    assert "marker-42" in cast.output
    path = tmp_path / "session.cast"
    path.write_text(exported.stdout)
    asciinema = shutil.which("asciinema")
    if asciinema is None:
        pytest.fail("asciinema is not installed: scripts/install.sh installs requirements-test.txt")
    played = subprocess.run([asciinema, "cat", str(path)], capture_output=True, text=True, timeout=60)
    assert played.returncode == 0, played.stderr
    assert "marker-42" in played.stdout
    # `asciinema play` as well, sped up, with its output captured through a terminal.
    child = pexpect.spawn(asciinema, ["play", "-s", "100", "-i", "0.01", str(path)], timeout=60, encoding="utf-8",
                          dimensions=(40, 120))
    child.expect("marker-42")
    child.expect(pexpect.EOF)


def test_plain_replay_shows_the_terminal(terminal_session, stack):
    session_id, _ = terminal_session
    replay = jitgate(stack, "replay", session_id)
    assert "marker-42" in replay.stdout
    assert "session ended" in replay.stdout


def test_terminal_recording_verifies_and_detects_tampering(terminal_session, stack):
    session_id, _ = terminal_session
    ok = jitgate(stack, "verify", session_id, check=False)
    assert ok.returncode == 0 and ok.stdout.startswith("OK:"), ok.stdout + ok.stderr
    recording = stack.home / "recordings" / session_id / "recording.jsonl"
    assert recording.exists(), f"the sealed recording is not readable at {recording}"
    original = recording.read_bytes()
    index = original.index(b"marker-42")
    os.chmod(recording, 0o644)
    recording.write_bytes(original[:index] + b"M" + original[index + 1:])
    try:
        tampered = jitgate(stack, "verify", session_id, check=False)
        assert tampered.returncode == 1
        assert "TAMPERED" in tampered.stdout
    finally:
        recording.write_bytes(original)


def test_echoed_lines_are_classified_for_the_recording(terminal_session, stack):
    """Best effort: each line the shell echoed when Enter was pressed is classified (shell.line);
    the shells setting, not this, decides whether the shell may run."""
    session_id, _ = terminal_session
    lines = of_type(recording_events(stack, session_id), "shell.line")
    texts = [line["text"] for line in lines]
    assert "stty size" in texts
    marker = next(line for line in lines if line["text"].startswith("echo marker-"))
    assert marker["classes"] == ["command"]


def test_keystrokes_echoed_one_at_a_time_are_all_recorded_and_verify(ssh_targets, token, stack):
    """The echo path's speed-ups (broker/ssh/coalesce.py: one AESGCM per key, no per-packet log
    call, no line-editor layer) keep every echoed byte in the recording, in order: one keystroke
    per SSH packet, each echo waited for, as bench/bench_ssh.py types them."""
    user = "keys@example.com"
    child = spawn_shell(ssh_targets, token, user)
    child.sendline("exec cat")
    child.expect("exec cat\r\n")
    typed = "".join("abcdefghijklmnopqrstuvwxyz0123456789"[i % 36] for i in range(120))
    for key in typed:
        child.send(key)
        child.expect_exact(key)
    child.send("\r")
    child.expect_exact(typed + "\r\n")  # cat's own copy of the line
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    session_id = sealed_session(stack, user)
    events = recording_events(stack, session_id)
    output = "".join(e["event"][2] for e in of_type(events, "term.output"))
    assert output.count(typed) == 2, output[-400:]  # the terminal's echo, then cat's line
    [end] = of_type(events, "ssh.exit")
    # "exec cat" and Enter, the keys, Enter, Ctrl-D: each byte went upstream once
    assert end["bytes_in"] == len("exec cat\r") + len(typed) + 1 + 1
    ok = jitgate(stack, "verify", session_id, check=False)
    assert ok.returncode == 0 and ok.stdout.startswith("OK:"), ok.stdout + ok.stderr
