"""Append events in the transaction of their change; read them back in commit order.

A producer calls `append(s, ev, origin=...)` inside the transaction that makes the change, so the
change and its event commit together or not at all (a kill -9 between the commit and the local
publish loses nothing: the row is there for every consumer). After the commit it publishes the
same event on the local bus, the fast path for this process.

Reading in commit order. On SQLite one writer at a time inserts and commits, so `id` grows in
commit order and a reader may take every row it sees. On PostgreSQL ids are drawn when a row is
inserted, not when its transaction commits: a transaction that began earlier can commit id 7
after id 8 was read, and a reader that remembered "8" would never see 7. So every row carries its
transaction id (`txid`, pg_current_xact_id()) and a reader takes only rows below the safe
horizon, `pg_snapshot_xmin(pg_current_snapshot())`: every transaction with a smaller id has
ended, so no row can ever appear below it again. Positions are (txid, id) and rows are read in
that order; on SQLite txid is 0.

The horizon is narrowed to this database. pg_snapshot_xmin counts every transaction of the whole
PostgreSQL instance, so a long transaction in another database on a shared server would hold the
log back; only connections to this database can write its event log. So the horizon is the oldest
transaction id still running in this database (pg_stat_activity.backend_xid), or the next id to be
given out when none runs, read in that order: a transaction given an id before the "next id" was
read is either seen running, or has ended by the time the rows are read. It is never below
pg_snapshot_xmin(pg_current_snapshot()).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import structlog
from sqlalchemy import BigInteger, Table, func, insert, literal_column, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from opsroom.eventlog.models import EventRow
from opsroom.events import Event, event_from_dict

if TYPE_CHECKING:
    from opsroom.runtime import Runtime

log = structlog.get_logger(__name__)

# Both as bigint: xid8 has no cast to bigint but through text (PostgreSQL 13+).
_TXID = literal_column("(pg_current_xact_id()::text::bigint)", BigInteger)
_NEXT_XID = text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
_RUNNING = text("SELECT backend_xid::text::bigint FROM pg_stat_activity"
                " WHERE datname = current_database() AND backend_xid IS NOT NULL")
_XID32 = 1 << 32
_CORRELATION_MAX = 64  # the column's width; the payload keeps the whole id
# Prebuilt Core inserts: the unit of work's bulk path cost three times the SQL on the dispatch path.
_TABLE = cast(Table, EventRow.__table__)
_INSERT = insert(_TABLE)
_INSERT_PG = insert(_TABLE).values(txid=_TXID)


@dataclass(frozen=True, order=True)
class Position:
    """How far a reader has read: every row at or before it, in (txid, id) order."""

    txid: int = 0
    id: int = 0


START = Position()


def _pg(s: Session) -> bool:
    return s.get_bind().dialect.name == "postgresql"


def _values(ev: Event, origin: str) -> dict[str, Any]:
    ev.origin = origin
    corr = ev.correlation_id[:_CORRELATION_MAX] if ev.correlation_id else None
    return {"uid": ev.uid, "type": ev.type, "at": ev.at, "origin": origin, "correlation_id": corr,
            "payload": ev.as_dict()}


def append_many(s: Session, events: Iterable[Event], *, origin: str) -> None:
    """Add the rows of `events` to the caller's transaction (one statement for a batch)."""
    rows = [_values(ev, origin) for ev in events]
    if not rows:
        return
    conn = s.connection()
    conn.execute(_INSERT_PG if conn.dialect.name == "postgresql" else _INSERT, rows)


def append(s: Session, ev: Event, *, origin: str) -> None:
    """Add `ev` to the caller's transaction (inside Runtime.transact, in_writer or run_sync): it
    commits with the change it reports. Sets `ev.origin`."""
    append_many(s, (ev,), origin=origin)


def stage(s: Session | AsyncSession, ev: Event, *, origin: str) -> None:
    """`append` by the unit of work: the row is added to the session and inserted at its next
    flush (the commit at the latest), so synchronous code holding an AsyncSession can use it."""
    row = EventRow(**_values(ev, origin))
    if s.get_bind().dialect.name == "postgresql":
        row.txid = _TXID  # evaluated by the INSERT at flush
    s.add(row)


async def append_async(s: AsyncSession, ev: Event, *, origin: str) -> None:
    """`append` for code inside `rt.write()`."""
    await s.run_sync(lambda sync: append(sync, ev, origin=origin))


async def emit(rt: Runtime, ev: Event) -> None:
    """An event with no row of its own: appended in a transaction of its own, then published here."""
    await rt.transact(lambda s: append(s, ev, origin=rt.node_id))
    rt.bus.publish(ev)


def horizon(s: Session) -> int:
    """PostgreSQL: every transaction of this database with a smaller id has ended (see above).
    Call it before the transaction writes: its own id would hold its reads back."""
    next_xid = int(s.execute(_NEXT_XID).scalar_one())
    # pg_stat_activity is read once per transaction and cached: drop any copy read before next_xid.
    s.execute(text("SELECT pg_stat_clear_snapshot()"))
    low = next_xid & (_XID32 - 1)
    oldest = next_xid
    for (xid,) in s.execute(_RUNNING):
        behind = (low - int(xid)) % _XID32  # backend_xid has 32 bits; ours carry the epoch
        if 0 < behind < _XID32 // 2:  # given out after next_xid was read: not older than it
            oldest = min(oldest, next_xid - behind)
    return oldest


def newest_in(s: Session, *, committed: bool = False) -> Position:
    """The last row every reader may take now (below the safe horizon on PostgreSQL); with
    `committed`, the last row committed so far (readers reach it once the horizon passes it)."""
    if _pg(s):
        stmt = select(EventRow.txid, EventRow.id).where(EventRow.txid < horizon(s) if not committed
                                                        else EventRow.txid.is_not(None))
        row = s.execute(stmt.order_by(EventRow.txid.desc(), EventRow.id.desc()).limit(1)).first()
        return Position(int(row[0] or 0), int(row[1])) if row is not None else START
    top = s.execute(select(func.max(EventRow.id))).scalar()
    return Position(0, int(top)) if top is not None else START


def decode(row: Any) -> Event | None:
    """The event a row holds, or None (with a warning) for one this version cannot read: an unknown
    type (a newer version, a compromised writer) or a payload that does not fit its type. A
    consumer skips it and goes on: one bad row must never stop the log."""
    payload = row.payload
    try:
        if not isinstance(payload, dict) or payload.get("type") != row.type:
            raise TypeError("the payload is not an object of the row's type")
        ev = event_from_dict(payload)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("skipping an event log row this version cannot read", id=row.id, type=str(row.type)[:64],
                    why=str(exc)[:200])
        return None
    ev.uid, ev.origin = row.uid, row.origin
    return ev


def read_batch(s: Session, pos: Position, *, limit: int = 500,
               types: frozenset[str] | None = None) -> tuple[list[tuple[Position, Event]], Position]:
    """Up to `limit` events after `pos` (in the caller's transaction), and the position the reader
    has reached: the last row read when the batch is full, else everything safe up to now (rows of
    other types and unreadable rows included, so a filtered reader still moves)."""
    upto = newest_in(s)
    if upto <= pos:
        return [], pos
    pg = _pg(s)
    key = tuple_(EventRow.txid, EventRow.id) if pg else EventRow.id
    stmt = select(EventRow.id, EventRow.txid, EventRow.uid, EventRow.type, EventRow.origin, EventRow.payload)
    if pg:
        stmt = stmt.where(key > tuple_(pos.txid, pos.id), key <= tuple_(upto.txid, upto.id)) \
            .order_by(EventRow.txid, EventRow.id)
    else:
        stmt = stmt.where(EventRow.id > pos.id, EventRow.id <= upto.id).order_by(EventRow.id)
    if types is not None:
        stmt = stmt.where(EventRow.type.in_(sorted(types)))
    rows = s.execute(stmt.limit(limit)).all()
    out: list[tuple[Position, Event]] = []
    for row in rows:
        ev = decode(row)
        if ev is not None:
            out.append((Position(int(row.txid or 0) if pg else 0, int(row.id)), ev))
    if len(rows) >= limit:
        last = rows[-1]
        return out, Position(int(last.txid or 0) if pg else 0, int(last.id))
    return out, upto


async def read_after(rt: Runtime, pos: Position, *, limit: int = 500,
                     types: frozenset[str] | None = None) -> list[tuple[Position, Event]]:
    """Events after `pos` whose transactions have surely committed, in an order that never passes
    one that commits later: read again from the last position returned and nothing is skipped."""
    async with rt.read() as s:
        events, _ = await s.run_sync(lambda sync: read_batch(sync, pos, limit=limit, types=types))
    return events


async def newest(rt: Runtime, *, committed: bool = False) -> Position:
    """The position of the last event every reader may take now (START for an empty log); with
    `committed`, of the last one committed so far, which a transaction begun earlier and still
    open keeps from readers a little longer."""
    async with rt.read() as s:
        return await s.run_sync(lambda sync: newest_in(sync, committed=committed))
