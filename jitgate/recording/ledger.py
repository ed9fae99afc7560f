"""The seal ledger: an append-only, hash-chained list of every seal, with signed checkpoints.

In the spirit of Certificate Transparency: each seal appends an entry naming the session and
the SHA-256 of its manifest; entry n carries the hash of entry n-1, and every
``checkpoint_every`` entries (default: every entry) finalize signs a checkpoint (size, head hash)
with the seal key. Entries after the newest checkpoint (the tail) are covered by no signature
yet, only by create-once objects and retention; ``jitgate audit`` names them.
Entries and checkpoints are objects created once (O_EXCL / if_generation_match=0), in the
recordings bucket under its retention policy on GCP and in ``$JITGATE_HOME/ledger`` embedded,
so two concurrent finalizers take consecutive numbers instead of overwriting each other.

``jitgate audit`` walks it: a deleted or changed session, a session sealed without an entry,
a removed or altered entry and a checkpoint that does not verify all show.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field

from jitgate.recording.seal import canonical

GENESIS = hashlib.sha256(b"jitgate-ledger-v1").hexdigest()
ENTRIES = "entries"
CHECKPOINTS = "checkpoints"
MARKER = "ledger-entry.json"  # in the session's folder: which entry sealed it (a hint; audit checks)

_last: dict[str, tuple[int, str]] = {}  # ledger location -> (number, hash) of the newest entry seen
_lock = threading.Lock()


def entry_name(number: int) -> str:
    return f"{ENTRIES}/{number:012d}.json"


def checkpoint_name(size: int) -> str:
    return f"{CHECKPOINTS}/{size:012d}.json"


def entry_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _newest(store) -> tuple[int, str]:
    """(number, hash) of the newest entry, -1 and GENESIS when the ledger is empty."""
    with _lock:
        number, head = _last.get(store.ledger_location, (-1, GENESIS))
    if number >= 0:  # the remembered entry must still be the one we saw (else: read from the start)
        try:
            if entry_hash(store.get_ledger(entry_name(number))) != head:
                number, head = -1, GENESIS
        except FileNotFoundError:
            number, head = -1, GENESIS
    names = store.list_ledger(ENTRIES, start_after=entry_name(number) if number >= 0 else "")
    if names:
        number = int(names[-1].rpartition("/")[2].split(".")[0])
        head = entry_hash(store.get_ledger(names[-1]))
    return number, head


def append(store, signer, *, session_id: str, manifest_sha256: str, checkpoint_every: int = 1,
           continues: str | None = None) -> int:
    """Append one seal; returns its entry number. Signs a checkpoint when the size reaches a multiple
    of ``checkpoint_every``. ``continues``: the session a continuation part follows (so the first
    part's verification finds its continuation in the ledger)."""
    number, head = _newest(store)
    for _ in range(1000):
        number += 1
        body = {"n": number, "prev": head, "session_id": session_id, "manifest_sha256": manifest_sha256,
                "appended_at": round(time.time(), 3)}
        if continues:
            body["continues"] = continues
        raw = canonical(body) + b"\n"
        try:
            store.put_ledger(entry_name(number), raw)
        except FileExistsError:  # another finalizer took this number: chain onto its entry
            head = entry_hash(store.get_ledger(entry_name(number)))
            continue
        head = entry_hash(raw)
        with _lock:
            _last[store.ledger_location] = (number, head)
        if (number + 1) % checkpoint_every == 0:
            write_checkpoint(store, signer, size=number + 1, head=head)
        return number
    raise RuntimeError("the ledger kept moving while appending; try again")


def write_checkpoint(store, signer, *, size: int, head: str) -> None:
    body = {"size": size, "head": head, "signed_at": round(time.time(), 3), "key_id": signer.key_id}
    body["signature"] = base64.b64encode(signer.sign(b"jitgate-ledger-checkpoint-v1:" + canonical(
        {k: v for k, v in body.items() if k != "signature"}))).decode()
    try:
        store.put_ledger(checkpoint_name(size), json.dumps(body, sort_keys=True).encode() + b"\n")
    except FileExistsError:
        pass


@dataclass
class LedgerWalk:
    entries: dict[int, dict] = field(default_factory=dict)  # number -> entry
    by_session: dict[str, list[int]] = field(default_factory=dict)
    continued_by: dict[str, list[int]] = field(default_factory=dict)  # session -> entries of its continuations
    problems: list[str] = field(default_factory=list)
    checkpoints: int = 0
    verified_size: int = 0  # entries covered by the newest checkpoint that verifies

    @property
    def size(self) -> int:
        return len(self.entries)

    def unsigned_tail(self) -> list[tuple[int, str]]:
        """(entry number, session id) of the entries no verified checkpoint covers yet."""
        return [(n, str(e.get("session_id"))) for n, e in sorted(self.entries.items()) if n >= self.verified_size]


# Ledger entries read at once: a walk reads one object per sealed session, and one after the
# other a console page view took over 30 s against a bucket of a few thousand sessions.
READ_THREADS = 16


def _read_all(store, names: list[str]):
    """(name, bytes) of every entry, in the listed order, fetched by a pool of readers."""
    if len(names) < 2 * READ_THREADS:
        return ((name, store.get_ledger(name)) for name in names)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="ledger-read") as pool:
        return list(zip(names, pool.map(store.get_ledger, names)))


def walk(store, trust, *, checkpoints: bool = True) -> LedgerWalk:
    """Read the whole ledger and check its chain and (unless ``checkpoints`` is False: verifying one
    session needs only the entries) its signed checkpoints, one object and one signature each."""
    from jitgate.recording.trust import signature_valid

    result = LedgerWalk()
    hashes: dict[int, str] = {}
    expected, previous = 0, GENESIS
    for name, raw in _read_all(store, store.list_ledger(ENTRIES)):
        try:
            entry = json.loads(raw)
            number = int(entry["n"])
        except (ValueError, KeyError, TypeError):
            result.problems.append(f"ledger {name} is not a ledger entry (altered)")
            continue
        if name != entry_name(number):
            result.problems.append(f"ledger {name} claims to be entry {number} (altered or moved)")
        if number != expected:
            result.problems.append(f"ledger entries {expected}..{number - 1} are missing (removed from the ledger)")
        elif entry.get("prev") != previous:
            result.problems.append(f"ledger chain breaks at entry {number}: it does not follow entry {number - 1} "
                                   "(an entry before it was altered or replaced)")
        hashes[number] = entry_hash(raw)
        previous, expected = hashes[number], number + 1
        result.entries[number] = entry
        result.by_session.setdefault(str(entry.get("session_id")), []).append(number)
        if entry.get("continues"):
            result.continued_by.setdefault(str(entry["continues"]), []).append(number)
    for name in store.list_ledger(CHECKPOINTS) if checkpoints else ():
        result.checkpoints += 1
        try:
            body = json.loads(store.get_ledger(name))
            signature = base64.b64decode(body.pop("signature"), validate=True)
            size = int(body["size"])
        except (ValueError, KeyError, TypeError, AttributeError):
            result.problems.append(f"ledger checkpoint {name} is unreadable")
            continue
        key = trust.seal_key(body.get("key_id"))
        if key is None:
            result.problems.append(f"ledger checkpoint {size} is signed by key {body.get('key_id')!r}, "
                                   f"which is not a configured seal key ({trust.where()})")
            continue
        if not signature_valid(key, signature, b"jitgate-ledger-checkpoint-v1:" + canonical(body)):
            result.problems.append(f"ledger checkpoint {size}: signature does not verify with {trust.describe(body.get('key_id'))}")
            continue
        if size - 1 not in hashes:
            result.problems.append(f"ledger checkpoint {size} signs {size} entries, but entry {size - 1} is gone "
                                   "(entries removed after they were checkpointed)")
        elif hashes[size - 1] != body.get("head"):
            result.problems.append(f"ledger checkpoint {size}: the entries up to {size - 1} differ from what was signed "
                                   "(the ledger was rewritten)")
        else:
            result.verified_size = max(result.verified_size, size)
    return result
