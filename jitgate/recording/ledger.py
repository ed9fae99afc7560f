"""The seal ledger: an append-only, hash-chained list of every seal, with signed checkpoints.

In the spirit of Certificate Transparency: each seal appends an entry naming the session and
the SHA-256 of its manifest; entry n carries the hash of entry n-1. Finalize signs each entry
with the seal key, and every ``checkpoint_every`` entries (default: every entry) a checkpoint
(size, head hash). An entry's own signature is what makes it a seal's: the chain alone would let
anyone who can write the bucket append an entry that the next genuine seal then chains onto and
its checkpoint signs over. ``jitgate audit`` names an entry no seal key signed (an unsigned entry
of an older version passes when a signed checkpoint ends at it), and the entries after the newest
checkpoint (their count and order are not signed yet).
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
    """(number, hash) of the newest entry this process knows, -1 and GENESIS when the ledger is empty.
    Warm, one read: the remembered entry must still be the one we saw (else: read from the start);
    whether others appended since shows when the next number turns out taken (_catch_up)."""
    with _lock:
        number, head = _last.get(store.ledger_location, (-1, GENESIS))
    if number >= 0:
        try:
            if entry_hash(store.get_ledger(entry_name(number))) == head:
                return number, head
        except FileNotFoundError:
            pass
    return _find_newest(store)


def _number(name: str) -> int:
    return int(name.rpartition("/")[2].split(".")[0])


# Names one listing asks for when looking for the newest entry without a memory of it.
SEARCH_PAGE = 1000


def _find_newest(store) -> tuple[int, str]:
    """(number, hash) of the newest entry without listing the whole ledger (a new finalize instance
    would read a name per seal ever made): one page, and past it small listings that ask "is there
    an entry at or after k", doubling k and then halving the interval, about 2*log2(n/SEARCH_PAGE)
    listings of one name each. Gaps (removed entries) cannot mislead it: each answer is the first
    name the store actually has at or after k."""
    def first_at_or_after(k: int) -> int | None:
        names = store.list_ledger(ENTRIES, start_after=entry_name(k - 1) if k > 0 else "", limit=1)
        return _number(names[0]) if names else None

    page = store.list_ledger(ENTRIES, limit=SEARCH_PAGE)
    if not page:
        return -1, GENESIS
    low = _number(page[-1])  # an entry that exists
    if len(page) == SEARCH_PAGE:
        step = SEARCH_PAGE
        while (found := first_at_or_after(low + step)) is not None:
            low, step = found, step * 2
        high = low + step  # nothing at or after high
        while high - low > 1:
            middle = (low + high) // 2
            found = first_at_or_after(middle)
            if found is None:
                high = middle
            else:
                low = found
    return low, entry_hash(store.get_ledger(entry_name(low)))


def _catch_up(store, number: int) -> tuple[int, str]:
    """(number, hash) of the newest entry after entry ``number``, or of entry ``number`` itself when
    none follows it."""
    names = store.list_ledger(ENTRIES, start_after=entry_name(number))
    if names:
        return _number(names[-1]), entry_hash(store.get_ledger(names[-1]))
    return number, entry_hash(store.get_ledger(entry_name(number)))


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
        raw = sign_entry(signer, body)
        try:
            store.put_ledger(entry_name(number), raw)
        except FileExistsError:  # another finalizer took this number: chain onto the newest entry
            number, head = _catch_up(store, number)
            continue
        head = entry_hash(raw)
        with _lock:
            _last[store.ledger_location] = (number, head)
        if (number + 1) % checkpoint_every == 0:
            write_checkpoint(store, signer, size=number + 1, head=head)
        return number
    raise RuntimeError("the ledger kept moving while appending; try again")


ENTRY_CONTEXT = b"jitgate-ledger-entry-v1:"


def sign_entry(signer, body: dict) -> bytes:
    """The entry's bytes: its fields, the seal key's id and its signature over both."""
    body = {**body, "key_id": signer.key_id}
    signature = base64.b64encode(signer.sign(ENTRY_CONTEXT + canonical(body))).decode()
    return canonical({**body, "signature": signature}) + b"\n"


def entry_signature_problem(trust, entry: dict, number) -> str | None:
    """None when a configured seal key signed the entry; else what is wrong. An entry without a
    signature gets "unsigned" (older versions wrote none: a signed checkpoint must end at it)."""
    from jitgate.recording.trust import signature_valid

    if "signature" not in entry:
        return "unsigned"
    body = {k: v for k, v in entry.items() if k != "signature"}
    try:
        signature = base64.b64decode(entry["signature"], validate=True)
    except (ValueError, TypeError):
        return f"ledger entry {number} has an unreadable signature (altered)"
    key = trust.seal_key(body.get("key_id"))
    if key is None:
        return (f"ledger entry {number} is signed by key {body.get('key_id')!r}, which is not a configured seal key "
                f"({trust.where()}): it was not written by finalize")
    if not signature_valid(key, signature, ENTRY_CONTEXT + canonical(body)):
        return f"ledger entry {number}: signature does not verify with {trust.describe(body.get('key_id'))} (altered or forged)"
    return None


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
    unsigned: list[int] = field(default_factory=list)  # entries without a signature of their own (older versions)
    rejected: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # session -> (entry, why) no seal key signed

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
        problem = entry_signature_problem(trust, entry, number) if isinstance(entry, dict) else "not an object"
        if problem == "unsigned":
            result.unsigned.append(number)
        elif problem:  # chained on, but no seal's: it names nothing the audit should believe
            result.problems.append(problem)
            result.rejected.setdefault(str(entry.get("session_id")), []).append((number, problem))
            continue
        result.entries[number] = entry
        result.by_session.setdefault(str(entry.get("session_id")), []).append(number)
        if entry.get("continues"):
            result.continued_by.setdefault(str(entry["continues"]), []).append(number)
    vouched: set[int] = set()  # entries a verified checkpoint ends at
    for name in store.list_ledger(CHECKPOINTS) if checkpoints else ():
        result.checkpoints += 1
        body, problem = read_checkpoint(store, trust, name)
        if problem:
            result.problems.append(problem)
            continue
        size = body["size"]
        if size - 1 not in hashes:
            result.problems.append(f"ledger checkpoint {size} signs {size} entries, but entry {size - 1} is gone "
                                   "(entries removed after they were checkpointed)")
        elif hashes[size - 1] != body.get("head"):
            result.problems.append(f"ledger checkpoint {size}: the entries up to {size - 1} differ from what was signed "
                                   "(the ledger was rewritten)")
        else:
            result.verified_size = max(result.verified_size, size)
            vouched.add(size - 1)
    for number in result.unsigned if checkpoints else ():
        if number not in vouched:  # it names nothing the audit should believe (nor blame as deleted)
            session_id = str(result.entries[number].get("session_id"))
            problem = (f"ledger entry {number} (session {session_id}) is signed by no seal key and no signed "
                       "checkpoint ends at it: someone without a seal key wrote it into the ledger (finalize signs "
                       "every entry), or an older version wrote it with checkpoint_every above 1")
            result.problems.append(problem)
            result.rejected.setdefault(session_id, []).append((number, problem))
            for index in (result.by_session, result.continued_by):
                for key in [k for k, numbers in index.items() if number in numbers]:
                    index[key].remove(number)
                    if not index[key]:
                        del index[key]
    return result


def read_checkpoint(store, trust, name: str) -> tuple[dict | None, str | None]:
    """(checkpoint body with an int ``size``, None) when it is signed by a configured seal key, else
    (None, what is wrong). FileNotFoundError when there is none."""
    from jitgate.recording.trust import signature_valid

    try:
        body = json.loads(store.get_ledger(name))
        signature = base64.b64decode(body.pop("signature"), validate=True)
        size = int(body["size"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, f"ledger checkpoint {name} is unreadable"
    key = trust.seal_key(body.get("key_id"))
    if key is None:
        return None, (f"ledger checkpoint {size} is signed by key {body.get('key_id')!r}, "
                      f"which is not a configured seal key ({trust.where()})")
    if not signature_valid(key, signature, b"jitgate-ledger-checkpoint-v1:" + canonical(body)):
        return None, f"ledger checkpoint {size}: signature does not verify with {trust.describe(body.get('key_id'))}"
    body["size"] = size
    return body, None


# -- one session, from its marker -------------------------------------------------------------

# Entries followed from a session's entry to the signed checkpoint that covers it. Every seal
# signs one by default (checkpoint_every 1): the entry's own checkpoint is the next object.
HINT_REACH = 32


@dataclass
class Located:
    """Where one session's seal is in the ledger, and whether a signed checkpoint covers it."""

    number: int | None = None  # the entry that holds this session's manifest (None: not found this way)
    checkpoint: int | None = None  # size of the signed checkpoint whose head commits to that entry
    notes: list[str] = field(default_factory=list)


def covering_checkpoint(store, trust, number: int, raw: bytes, notes: list[str]) -> int | None:
    """Size of the first checkpoint signed by a configured seal key whose head is entry ``number``
    (its bytes ``raw``) or an entry chained to it, at most HINT_REACH entries on; None when none is
    (the unsigned tail, or a chain that breaks before one). A checkpoint that does not verify on
    the way is named in ``notes`` and passed (`jitgate audit` reports it)."""
    head = entry_hash(raw)
    for n in range(number, number + HINT_REACH):
        try:
            body, problem = read_checkpoint(store, trust, checkpoint_name(n + 1))
        except FileNotFoundError:
            body, problem = None, None
        if body is not None and body.get("head") == head:
            return n + 1
        if problem or body is not None:
            notes.append(problem or f"ledger checkpoint {n + 1} does not sign entry {n} (the ledger was rewritten)")
        try:
            raw = store.get_ledger(entry_name(n + 1))
            follower = json.loads(raw)
        except (FileNotFoundError, ValueError):
            return None
        if not isinstance(follower, dict) or follower.get("n") != n + 1 or follower.get("prev") != head:
            return None
        head = entry_hash(raw)
    return None


def locate(store, trust, session_id: str, manifest_sha256: str) -> Located:
    """The session's entry from the marker in its folder, in a few reads whatever the ledger's size.

    The marker is only a hint: the entry it names must be at its place, name this session and this
    manifest's SHA-256, and be signed by a configured seal key (an older version's unsigned entry:
    be covered by a checkpoint so signed, whose head is the entry's own hash or one chained to it).
    Then the seal key's signature commits to the entry's exact bytes, and a full walk would find
    the same entry. Anything else returns
    ``number`` None and the caller reads the whole ledger; a marker naming some other entry is noted."""
    located = Located()
    try:
        hint = json.loads(store.get_object(session_id, MARKER))
        number = int(hint["entry"])
    except (FileNotFoundError, KeyError, ValueError, TypeError):
        return located
    try:
        raw = store.get_ledger(entry_name(number)) if number >= 0 else b""
        entry = json.loads(raw)
    except (FileNotFoundError, ValueError):
        entry = None
    if not isinstance(entry, dict) or entry.get("n") != number or entry.get("session_id") != session_id \
            or entry.get("manifest_sha256") != manifest_sha256:
        located.notes.append(f"its ledger marker names entry {number}, which is not the seal of this manifest "
                             "(the marker is only a hint; the whole ledger was read instead)")
        return located
    problem = entry_signature_problem(trust, entry, number)
    if problem == "unsigned":  # an older version's entry: a signed checkpoint must vouch for it
        located.checkpoint = covering_checkpoint(store, trust, number, raw, located.notes)
        if located.checkpoint is not None:
            located.number = number
    elif problem:
        located.notes.append(problem)
    else:
        located.number = number
    return located
