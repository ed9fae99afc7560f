"""The local stack stops and restarts cleanly: children are restarted (then reported), and the GCP
set's emulator data stays in the home across restarts."""
from __future__ import annotations

import io
import sys
import time
from types import SimpleNamespace

from jitgate.cli import Supervisor
from jitgate.devstack import spawn


def test_a_child_that_exits_is_restarted_then_reported_and_the_rest_keeps_running(tmp_path):
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    steady = spawn("steady", sleeper, tmp_path)
    flaky = spawn("flaky", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path)
    issuer = SimpleNamespace(proc=spawn("issuer", sleeper, tmp_path))
    stack = SimpleNamespace(procs=[steady, flaky], issuer=issuer)
    out = io.StringIO()
    supervisor = Supervisor(stack, out=out)
    try:
        deadline = time.monotonic() + 60
        while "left down" not in out.getvalue() and time.monotonic() < deadline:
            supervisor.check()
            time.sleep(0.1)
        text = out.getvalue()
        assert text.count("flaky exited (code 3); restarting it") == Supervisor.MAX_RESTARTS, text
        assert "flaky exited again (code 3) after 3 restarts; left down, the rest keeps running" in text
        assert stack.procs[0] is steady and steady.popen.poll() is None and issuer.proc.popen.poll() is None
        issuer.proc.stop(sig=9)
        supervisor.check()
        assert issuer.proc.popen.poll() is None and "issuer exited" in out.getvalue()  # restarted
    finally:
        for proc in (*stack.procs, issuer.proc):
            proc.stop(timeout=5)


def test_gcp_set_emulator_data_survives_a_restart_in_the_same_home(tmp_path, monkeypatch):
    from google.cloud import firestore

    from jitgate.backends.gcp.emulators import Emulators
    from jitgate.devstack import ExportingProc

    def start() -> Emulators:
        emulators = Emulators(tmp_path / "emulators").start(persistent=True)
        proc = emulators.procs["firestore"]
        emulators.procs["firestore"] = ExportingProc(proc.name, proc.popen, proc.log_path, proc.argv, proc.env,
                                                     proc.cwd, export=lambda: emulators.export_firestore("p-keep"))
        return emulators

    def client(emulators):
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", emulators.env()["FIRESTORE_EMULATOR_HOST"])
        return firestore.Client(project="p-keep")

    first = start()
    try:
        client(first).collection("sessions").document("s-kept").set({"entry": "sealed before the restart"})
    finally:
        first.stop()  # what `jitgate up` does at Ctrl-C: the Firestore emulator exports first
    second = start()
    try:
        doc = client(second).collection("sessions").document("s-kept").get()
        assert doc.exists and doc.to_dict()["entry"] == "sealed before the restart"
    finally:
        second.stop()
