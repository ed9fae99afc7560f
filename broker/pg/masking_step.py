"""The masking steps of the PostgreSQL relay, kept out of ``server.py``'s pumps.

- ``follow_for_relay``: the lineage of a statement before it goes upstream (and the
  ``masking.unknown_lineage: approve`` hold).
- ``mask_row``: a DataRow through its plan; a large row is masked on a worker thread so
  one big value does not hold every other session on the event loop.
- ``stream_large_row``: a row over the size the relay holds is streamed or refused.
"""
from __future__ import annotations

import asyncio

from jitgate.masking import MaskingRefused

# Rows larger than this are masked on a worker thread (scanning is linear, but a few
# hundred KiB of adversarial text still costs tens of milliseconds).
OFF_LOOP_ROW_BYTES = 64 * 1024


async def mask_row(plan, payload: bytes) -> bytes:
    if len(payload) <= OFF_LOOP_ROW_BYTES:
        return plan.mask_row(payload)
    return await asyncio.to_thread(plan.mask_row, payload)


async def stream_large_row(connection, framer) -> int:
    """A DataRow larger than ``JITGATE_PG_MAX_MESSAGE`` is not held: when nothing in its result is
    masked its bytes are passed on as they come (returns how many are still to come); when
    something is, the session ends with a clear error instead (``MaskingRefused``)."""
    head = framer.head()
    limit = connection.broker.settings.pg_max_message
    if head is None or head[0] != 0x44 or head[1] <= limit:
        return 0
    size = head[1]
    masker = connection.session.masker
    if masker is not None:
        pending = connection.pending[0] if connection.pending else None
        plan = pending.plan if pending is not None and pending.planned else await connection._plan_for_rows(b"")
        if plan is not None:
            raise MaskingRefused(
                f"a result row of {size} bytes needs masking, and the gateway holds at most {limit} bytes per row "
                "for masking (JITGATE_PG_MAX_MESSAGE); select shorter values (left(), substr()) or fewer columns")
        if pending is not None:
            pending.rows += 1
    taken = framer.take(size)
    connection.c_writer.write(taken)
    return size - len(taken)


async def follow_for_relay(connection, sql: str, verdict):
    """(verdict, lineages) for a statement the relay is about to forward under masking.

    Policy ``masking.unknown_lineage: approve`` holds a statement whose lineage cannot be
    followed for an approver (class ``masking_lineage_unknown``) instead of masking every
    column of its result.
    """
    masker = connection.session.masker
    if masker is None or not verdict.allowed or not getattr(masker, "follows_lineage", False):
        return verdict, []
    lineages = await masker.follow(sql)
    unknown = next((s.unknown for s in lineages if s.unknown), None)
    if unknown is None or connection.session.target.masking.unknown_lineage != "approve":
        return verdict, lineages
    from broker.session import Verdict

    held = Verdict("approve", tuple(sorted(set(verdict.classes) | {"masking_lineage_unknown"})), verdict.reasons,
                   f"jitgate: statement needs approval on target {connection.session.target_name!r}: the source "
                   f"columns of its result cannot be followed ({unknown}) (policy masking.unknown_lineage: approve)")
    # Approved or not, an unknown lineage still masks every column of the result (fail closed).
    return await connection.hold_for(sql, held), lineages
