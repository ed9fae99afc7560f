#!/usr/bin/env python3
"""Seconds per seal, and Cloud Storage requests per seal, as the ledger grows (gcp backend set).

    python bench/bench_seal_rate.py                 # 300 one-statement sessions, reported per 50
    python bench/bench_seal_rate.py --sessions 600 --step 100
    python bench/bench_seal_rate.py --concurrency 4 # seal with 4 finalizers at once (the push handler's threads)

Starts its own emulators (fake-gcs-server, Firestore, Pub/Sub) in a temp dir and seals through
``finalize_session`` as the finalize_recording function does, in one process with one backend set
(as a warm function instance). The chunks are stored before the clock starts; each step's line
gives wall seconds per seal and the store's HTTP requests per seal (every Cloud Storage call is an
HTTP request: list, read, create, exists). Then it verifies the last session once, as a console
page view does, and counts the ledger objects that read.
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jitgate.backends import open_backends  # noqa: E402
from jitgate.backends.gcp.emulators import Emulators  # noqa: E402
from jitgate.recording.audit import verify_session  # noqa: E402
from jitgate.recording.closing import sign_closing  # noqa: E402
from jitgate.recording.finalize import finalize_session  # noqa: E402
from jitgate.recording.seal import Chain  # noqa: E402
from jitgate.settings import Settings  # noqa: E402

EVENTS = [
    b'{"seq":0,"ts":1.0,"type":"session.start","principal":{"username":"alice@example.com","groups":["sre"]},'
    b'"target":"demo","kind":"postgres"}',
    b'{"seq":1,"ts":1.5,"type":"statement","id":1,"sql":"SELECT 1","decision":"allow"}',
    b'{"seq":2,"ts":1.6,"type":"result","id":1,"rows":1,"error":null}',
    b'{"seq":3,"ts":2.0,"type":"session.end","reason":"client closed"}',
]


class Requests:
    """Counts HTTP requests by method and path kind (requests.Session.request, which the GCS client uses)."""

    def __init__(self):
        import requests

        self.counts: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        original = requests.Session.request
        counter = self

        def request(session, method, url, *args, **kwargs):
            kind = "ledger" if "ledger" in url else "session"
            with counter.lock:
                counter.counts[f"{method} {kind}"] += 1
            return original(session, method, url, *args, **kwargs)

        requests.Session.request = request

    def take(self) -> collections.Counter:
        with self.lock:
            out, self.counts = self.counts, collections.Counter()
        return out


class Calls(Requests):
    def __init__(self):  # noqa: D107 - counts and times calls of the store's and the index's methods
        self.counts: collections.Counter = collections.Counter()
        self.seconds: collections.Counter = collections.Counter()
        self.lock = threading.Lock()

    def take_seconds(self) -> collections.Counter:
        with self.lock:
            out, self.seconds = self.seconds, collections.Counter()
        return out


def count_calls(b) -> Calls:
    calls = Calls()
    for owner, names in ((b.recordings, ("read_chunks", "get_chunk", "list_chunks", "get_object", "object_exists", "open_object",
                                         "put_object", "put_object_stream", "get_ledger", "put_ledger",
                                         "list_ledger")),
                         (b.index, ("put_session", "get_session", "mark_finalized"))):
        for name in names:
            original = getattr(owner, name, None)
            if original is None:
                continue

            def counted(*args, _original=original, _name=name, **kwargs):
                started = time.perf_counter()
                try:
                    result = _original(*args, **kwargs)
                    if _name in ("open_object", "read_chunks"):
                        result = list(result)  # a generator: its reads happen while it is consumed
                    return result
                finally:
                    with calls.lock:
                        calls.counts[_name] += 1
                        calls.seconds[_name] += time.perf_counter() - started

            setattr(owner, name, counted)
    return calls


def store_session(b, session_id: str) -> dict:
    data = b"\n".join(EVENTS) + b"\n"
    cut = data.index(b"\n") + 1
    b.recordings.put_chunk(session_id, 0, data[:cut])
    b.recordings.put_chunk(session_id, 1, data[cut:])
    chain = Chain(session_id)
    for line in EVENTS:
        chain.add(line)
    return sign_closing(b.closing_signer, session_id, events=chain.count, chain_head=chain.head)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--step", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--iam-proxy", action="store_true",
                        help="Cloud Storage through the tests' IAM proxy as jitgate-fn-finalize-recording (as in the "
                             "test stack, where finalize's 65 s lag was seen)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-seal-"))
    emulators = Emulators(root / "emulators").start()
    try:
        project = "bench-seal"
        env = {**emulators.env(project), "JITGATE_HOME": str(root / "home"), "JITGATE_BACKENDS": "gcp",
               "JITGATE_POLICY": str(root / "policy.yaml")}
        (root / "policy.yaml").write_text("version: 1\n")
        b = writer = open_backends(Settings.from_env(env))  # provisions the bucket
        if args.iam_proxy:
            from tests.cloud import iam_model
            from tests.cloud.gcs_iam import GcsIamProxy

            bucket = f"{project}-jitgate-recordings"
            grants = iam_model.bucket_grants("fn:finalize_recording", {"recordings": bucket})
            proxy = GcsIamProxy(env["STORAGE_EMULATOR_HOST"], grants, identity="fn:finalize_recording").start()
            writer = b  # the broker's chunks go straight to the emulator
            b = open_backends(Settings.from_env({**env, "STORAGE_EMULATOR_HOST": proxy.url}))
        counter = Requests()
        calls = count_calls(b)
        print(f"sealing {args.sessions} one-statement sessions, {args.concurrency} at a time, on the gcp emulators")
        print("| sessions | s per seal | GCS requests per seal | of which ledger | by kind |")
        print("|---|---|---|---|---|")
        done = 0
        with ThreadPoolExecutor(args.concurrency) as pool:
            while done < args.sessions:
                batch = [f"s{n:05d}" for n in range(done, min(args.sessions, done + args.step))]
                closings = [store_session(writer, sid) for sid in batch]
                counter.take(), calls.take(), calls.take_seconds()
                started = time.perf_counter()
                results = list(pool.map(lambda c: finalize_session(b, c), closings))
                seconds = time.perf_counter() - started
                bad = [r for r in results if r.status != "sealed"]
                if bad:
                    raise SystemExit(f"not sealed: {bad[0]}")
                counts = counter.take()
                total = sum(counts.values())
                ledger_requests = sum(v for k, v in counts.items() if k.endswith("ledger"))
                done += len(batch)
                kinds = ", ".join(f"{k} {v / len(batch):.1f}" for k, v in sorted(counts.items()))
                kinds += "; " + ", ".join(f"{k} {v / len(batch):.1f}" for k, v in sorted(calls.take().items()))
                spent = calls.take_seconds()
                kinds += f"; ms per seal: " + ", ".join(f"{k} {1000 * v / len(batch):.0f}" for k, v in spent.most_common())
                print(f"| {done - len(batch) + 1}-{done} | {seconds / len(batch):.3f} | {total / len(batch):.1f} "
                      f"| {ledger_requests / len(batch):.1f} | {kinds} |", flush=True)
        counter.take()
        calls.take()
        started = time.perf_counter()
        result = verify_session(b, batch[-1])
        seconds = time.perf_counter() - started
        counts = counter.take()
        print(f"verify_session({batch[-1]}) with {done} sealed sessions: {result.status}, ledger entry "
              f"{result.ledger_entry}, {seconds:.2f} s, {sum(counts.values())} GCS requests "
              f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}; "
              f"{', '.join(f'{k} {v}' for k, v in sorted(calls.take().items()))})")
        b.close()
    finally:
        emulators.stop()


if __name__ == "__main__":
    main()
