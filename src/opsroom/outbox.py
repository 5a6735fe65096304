"""Events that must cross processes: a CLI writes them to the store, the server relays them.

A run asked for from the CLI on a protected environment opens an approval; the
approvers are in the server's rooms. The CLI has no rooms, so the events rooms
announce are written to the outbox in the same database, and every server tails
it and publishes what other processes wrote on its own bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog
from sqlalchemy import JSON, Float, Integer, String, delete, func, select
from sqlalchemy.orm import Mapped, mapped_column

from opsroom.events import (
    ApprovalDecided,
    ApprovalRequested,
    Event,
    ExecutionFinished,
    ExecutionOutput,
    ExecutionStarted,
    event_from_dict,
)
from opsroom.runtime import Runtime
from opsroom.store.base import Base, now

log = structlog.get_logger(__name__)
# Only what rooms announce: state changes and rule triggers of a CLI process are its own business.
RELAYED: tuple[type[Event], ...] = (ApprovalRequested, ApprovalDecided, ExecutionStarted, ExecutionOutput,
                                    ExecutionFinished)


class OutboxRow(Base):
    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float, default=now, index=True)
    origin: Mapped[str] = mapped_column(String(96))
    type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class OutboxWriter:
    """In a process without rooms (the CLI): keep the events rooms need, for a server to relay."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        for event_type in RELAYED:
            rt.bus.subscribe(event_type, self._write)

    async def _write(self, ev: Event) -> None:
        async with self.rt.write() as s:
            s.add(OutboxRow(origin=self.rt.node_id, type=ev.type, payload=ev.as_dict()))


class OutboxRelay:
    """In a server: publish on the local bus what other processes wrote to the outbox."""

    def __init__(self, rt: Runtime, *, every: float = 0.5, keep_s: float = 3600.0) -> None:
        self.rt, self.every, self.keep_s = rt, every, keep_s
        self.last_id = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Start at the current end: events from before this server started are history, not news.
        async with self.rt.read() as s:
            self.last_id = (await s.execute(select(func.max(OutboxRow.id)))).scalar() or 0
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(self.every)
            rounds += 1
            try:
                await self.relay_once()
                if rounds % 600 == 0:
                    await self.prune()
            except Exception:
                log.exception("relaying outbox events failed; will retry")

    async def prune(self) -> None:
        """Relayed events are also in the audit log and the room history; the outbox keeps an hour."""
        async with self.rt.write() as s:
            await s.execute(delete(OutboxRow).where(OutboxRow.at < time.time() - self.keep_s))

    async def relay_once(self) -> int:
        async with self.rt.read() as s:
            rows = list((await s.execute(select(OutboxRow).where(OutboxRow.id > self.last_id)
                                         .order_by(OutboxRow.id).limit(500))).scalars())
        for row in rows:
            self.last_id = row.id
            if row.origin == self.rt.node_id:
                continue
            try:
                self.rt.bus.publish(event_from_dict(row.payload))
            except (KeyError, TypeError):
                log.warning("skipping an outbox event this version cannot read", type=row.type, id=row.id)
        return len(rows)
