#!/usr/bin/env python3
"""Memory of sealing a large recording (issue 21): finalize streams, so its peak is bounded by a chunk.

    python bench/bench_seal_memory.py      # 100 MiB of 1 MiB chunks in a temp embedded store

Prints the tracemalloc peak during finalize_session and the process max RSS before/after.
tests/jitgate/test_recording.py asserts the same bound (< 16 MiB traced for 100 MiB).
"""
import json, sys, tempfile, tracemalloc, resource
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from jitgate.backends import open_backends
from jitgate.settings import Settings
from jitgate.recording.seal import Chain
from jitgate.recording.closing import sign_closing
from jitgate.recording.finalize import finalize_session
d = tempfile.mkdtemp()
b = open_backends(Settings.from_env({"JITGATE_HOME": d, "JITGATE_POLICY": d + "/p.yaml"}))
line = json.dumps({"seq": 0, "ts": 1.0, "type": "result", "pad": "x" * 900}, separators=(",", ":")).encode()
chain, total, i = Chain("big"), 0, 0
per = (1024 * 1024) // (len(line) + 1)
while total < 100 * 1024 * 1024:
    data = b"\n".join([line] * per) + b"\n"
    for _ in range(per): chain.add(line)
    b.recordings.put_chunk("big", i, data); total += len(data); i += 1
closing = sign_closing(b.closing_signer, "big", events=chain.count, chain_head=chain.head)
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
r = finalize_session(b, closing)
cur, peak = tracemalloc.get_traced_memory()
print(r.status, f"recording {total/2**20:.0f} MiB, tracemalloc peak {peak/2**20:.1f} MiB, maxrss before {rss0/1024:.0f} MiB after {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024:.0f} MiB")
