"""Positions of what was sent somewhere outside (a chat platform): where a takeover starts.

The store side of chat/handover.py. A position here is a `consumer_positions` row like a
consumer's, but moved by whoever holds the outside connection, and only while it holds it.
"""

from __future__ import annotations

import time
from typing import Any, cast

from sqlalchemy import CursorResult, exists, func, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from opsroom.cluster.clock import db_now
from opsroom.cluster.models import LeaseRow
from opsroom.eventlog.log import Position, decode, newest_in
from opsroom.eventlog.models import ConsumerPositionRow, EventRow
from opsroom.events import Event
from opsroom.runtime import Runtime


async def missed(rt: Runtime, *, name: str, type_: str, within_s: float, limit: int) -> tuple[Position, list[Event]]:
    """(the stored position `name`, the events of `type_` after it: at most `limit`, the newest,
    of the last `within_s` seconds). A first call makes the position at the log's newest row
    (nothing was missed yet)."""
    def body(s: Session) -> tuple[Position, list[Event]]:
        row = s.execute(select(ConsumerPositionRow.position, func.coalesce(ConsumerPositionRow.txid, 0))
                        .where(ConsumerPositionRow.consumer == name)).first()
        if row is None:
            start = newest_in(s)
            try:
                with s.begin_nested():
                    s.execute(insert(ConsumerPositionRow).values(
                        consumer=name, position=start.id, txid=start.txid, updated_at=time.time(),
                        holder=rt.node_id))
            except IntegrityError:
                pass  # another server made it a moment ago
            return start, []
        pos = Position(int(row[1]), int(row[0]))
        # Every committed row after the position, not only those below the readers' horizon: a
        # row committed before this server held the connection, whatever its txid, went out
        # without it. The newest ones, if too many.
        key = tuple_(EventRow.txid, EventRow.id)
        rows = s.execute(
            select(EventRow.id, EventRow.txid, EventRow.uid, EventRow.type, EventRow.origin, EventRow.payload)
            .where(EventRow.type == type_, key > tuple_(pos.txid, pos.id), EventRow.at >= time.time() - within_s)
            .order_by(EventRow.txid.desc(), EventRow.id.desc()).limit(limit)).all()
        return pos, [ev for ev in (decode(r) for r in reversed(rows)) if ev is not None]

    return await rt.transact(body)


async def store(rt: Runtime, *, name: str, lease: str, upto: Position) -> bool:
    """Move position `name` forward to `upto`, only while this server holds `lease` by the
    store's clock (a holder paused past its lease moves nothing); whether it moved."""
    def body(s: Session) -> bool:
        now = db_now(s.get_bind().dialect.name)
        held = exists().where(LeaseRow.name == lease, LeaseRow.holder == rt.node_id, LeaseRow.expires_at >= now)
        moved = cast(CursorResult[Any], s.execute(
            update(ConsumerPositionRow)
            .where(ConsumerPositionRow.consumer == name, held,
                   tuple_(func.coalesce(ConsumerPositionRow.txid, 0), ConsumerPositionRow.position)
                   < tuple_(upto.txid, upto.id))
            .values(position=upto.id, txid=upto.txid, updated_at=time.time(), holder=rt.node_id)
            .execution_options(synchronize_session=False)))
        return moved.rowcount == 1

    return await rt.transact(body)
