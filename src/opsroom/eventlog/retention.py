"""Pruning the event log: events older than the retention that every consumer has read.

The log is the backbone the incident timeline and audit correlation read, so it keeps weeks,
not hours (`event_log_keep_days`, default 30). An event a consumer has not reached yet is
never pruned, however old, unless that consumer has not moved for longer than the retention
itself (a consumer removed from the code must not hold the log for ever). Deleted in chunks, so
a first prune of a large log never holds the store for long.
"""

from __future__ import annotations

import time

from sqlalchemy import delete, func, select, tuple_
from sqlalchemy.orm import Session

from opsroom.eventlog.models import ConsumerPositionRow, EventRow
from opsroom.runtime import Runtime

CHUNK = 5_000


def _prune_chunk(s: Session, *, before: float) -> int:
    positions = s.execute(select(ConsumerPositionRow.txid, ConsumerPositionRow.position)
                          .where(ConsumerPositionRow.updated_at >= before)).all()
    row_pos = tuple_(func.coalesce(EventRow.txid, 0), EventRow.id)
    doomed = select(EventRow.id).where(EventRow.at < before)
    for txid, position in positions:
        doomed = doomed.where(row_pos <= tuple_(txid or 0, position))
    ids = [r[0] for r in s.execute(doomed.order_by(EventRow.id).limit(CHUNK)).all()]
    if ids:
        s.execute(delete(EventRow).where(EventRow.id.in_(ids)))
    return len(ids)


async def prune(rt: Runtime, *, keep_s: float, now: float | None = None) -> int:
    """Delete events older than `keep_s` that every live consumer has passed; how many."""
    before = (time.time() if now is None else now) - keep_s
    total = 0
    while True:
        n = await rt.transact(lambda s: _prune_chunk(s, before=before))
        total += n
        if n < CHUNK:
            return total
