"""Named leases in the store: who holds a shard of checks, a chat platform connection, a consumer.

A lease is a row (name, holder, expires_at, epoch). Taking it is one conditional UPDATE, so two
servers racing for it cannot both win: the row changes holder only while it is free, expired or
already ours. Renewing all of a server's leases is one statement per heartbeat. `epoch` grows at
every change of holder (a fencing token): work done under a lease can carry it, and a holder that
was paused past its expiry learns from renew() that the lease is gone before it acts again.
Expiry is by the database's clock (cluster/clock.py), never by a host's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Integer, and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from opsroom.cluster.clock import db_now
from opsroom.cluster.models import LeaseRow
from opsroom.runtime import Runtime


@dataclass(frozen=True)
class Holding:
    name: str
    holder: str | None
    expires_at: float
    epoch: int
    live: bool  # not expired by the store's clock when read


class Leases:
    """One process's view of the named leases; `holder` is its node id."""

    def __init__(self, rt: Runtime, *, holder: str | None = None) -> None:
        self.rt = rt
        self.holder = holder or rt.node_id
        self._dialect = rt.engine.dialect.name

    def _now(self) -> ColumnElement[float]:
        return db_now(self._dialect)

    async def take(self, name: str, *, ttl: float) -> int | None:
        """Take or renew `name` for `ttl` seconds: its epoch if this process holds it now, None if
        another live holder has it."""
        def body(s: Session) -> int | None:
            now = self._now()
            row = s.execute(
                update(LeaseRow)
                .where(LeaseRow.name == name,
                       or_(LeaseRow.holder == self.holder, LeaseRow.holder.is_(None), LeaseRow.expires_at < now))
                .values(expires_at=now + ttl,
                        # A new holder bumps the epoch; a renewal keeps it.
                        epoch=LeaseRow.epoch + (LeaseRow.holder.is_distinct_from(self.holder)).cast(Integer),
                        taken_at=now, holder=self.holder)
                .returning(LeaseRow.epoch)).first()
            if row is not None:
                return int(row[0])
            if s.execute(select(LeaseRow.name).where(LeaseRow.name == name)).first() is not None:
                return None
            try:
                with s.begin_nested():
                    s.execute(insert(LeaseRow).values(name=name, holder=self.holder, expires_at=now + ttl, epoch=1,
                                                      taken_at=now))
            except IntegrityError:
                return None  # another server created it a moment ago: it holds it
            return 1

        return await self.rt.transact(body)

    async def renew(self, names: Iterable[str], *, ttl: float) -> set[str]:
        """Extend every lease in `names` this process still holds; the names it still holds."""
        wanted = list(names)
        if not wanted:
            return set()

        def body(s: Session) -> set[str]:
            now = self._now()
            rows = s.execute(update(LeaseRow)
                             .where(LeaseRow.name.in_(wanted), LeaseRow.holder == self.holder,
                                    LeaseRow.expires_at >= now)
                             .values(expires_at=now + ttl).returning(LeaseRow.name)).all()
            return {r[0] for r in rows}

        return await self.rt.transact(body)

    async def release(self, names: Iterable[str]) -> None:
        """Give leases back at once (a clean stop), so others need not wait for them to expire."""
        wanted = list(names)
        if not wanted:
            return

        def body(s: Session) -> None:
            s.execute(update(LeaseRow).where(LeaseRow.name.in_(wanted), LeaseRow.holder == self.holder)
                      .values(holder=None, expires_at=0.0))

        await self.rt.transact(body)

    async def release_all(self) -> None:
        def body(s: Session) -> None:
            s.execute(update(LeaseRow).where(LeaseRow.holder == self.holder).values(holder=None, expires_at=0.0))

        await self.rt.transact(body)

    async def holdings(self, prefix: str = "") -> list[Holding]:
        """Every lease whose name starts with `prefix`, live or not, by name."""
        def body(s: Session) -> list[Holding]:
            now = self._now()
            rows = s.execute(select(LeaseRow.name, LeaseRow.holder, LeaseRow.expires_at, LeaseRow.epoch,
                                    and_(LeaseRow.holder.is_not(None), LeaseRow.expires_at >= now))
                             .where(LeaseRow.name.startswith(prefix, autoescape=True))
                             .order_by(LeaseRow.name)).all()
            return [Holding(r[0], r[1], float(r[2]), int(r[3]), bool(r[4])) for r in rows]

        return await self.rt.transact(body)

    async def left(self, name: str) -> float | None:
        """Seconds until the held lease `name` expires, by the store's clock (negative: expired);
        None when nobody holds it."""
        def body(s: Session) -> float | None:
            row = s.execute(select(LeaseRow.expires_at - self._now())
                            .where(LeaseRow.name == name, LeaseRow.holder.is_not(None))).first()
            return float(row[0]) if row is not None else None

        return await self.rt.transact(body)

    async def forget(self, prefix: str) -> None:
        """Delete the rows under `prefix` (shards renumbered, a platform removed from the catalog)."""
        def body(s: Session) -> None:
            s.execute(delete(LeaseRow).where(LeaseRow.name.startswith(prefix, autoescape=True)))

        await self.rt.transact(body)

