"""Per server: publish on the local bus what other nodes wrote to the event log.

Web clients, SSE streams, approval buttons and open doors (AccessChanged) of this server must see
what other servers and CLI processes did. The relay keeps no stored position: it starts at the
newest event when the server starts (what happened before is history, read from the store, not
news) and reads every `every` seconds. Consumers that must see every event exactly once (rooms,
rules, the timeline) are `Consumer`s with stored positions, not subscribers of this relay.

Events it publishes carry their `origin`: a subscriber that acts on an event (a rule dispatch)
and must do so once for the whole cluster tells a relayed event by `is_foreign`.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from opsroom.eventlog.log import Position, newest, read_batch
from opsroom.events import Event
from opsroom.runtime import Runtime
from opsroom.ticks import rounds

log = structlog.get_logger(__name__)


def is_foreign(rt: Runtime, ev: Event) -> bool:
    """Whether `ev` came from another node through the log (not made by this process)."""
    return ev.origin is not None and ev.origin != rt.node_id


class Relay:
    def __init__(self, rt: Runtime, *, every: float | None = None, batch: int = 500) -> None:
        # A SQLite store has one server: only CLI processes write beside it, as rarely as a person
        # types; PostgreSQL servers hear each other within a fifth of a second.
        if every is None:
            every = 0.2 if rt.engine.dialect.name == "postgresql" else 0.5
        self.rt, self.every, self.batch = rt, every, batch
        self.position: Position | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.position = await newest(self.rt)
        self._stopping.clear()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="event-relay")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            self._stopping.set()
            self._wake.set()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def nudge(self) -> None:
        self._wake.set()

    async def relay_once(self) -> int:
        """One read: publishes the foreign events after the position; how many it published."""
        if self.position is None:
            self.position = await newest(self.rt)
            return 0
        pos = self.position
        async with self.rt.read() as s:
            events, reached = await s.run_sync(lambda sync: read_batch(sync, pos, limit=self.batch))
        published = 0
        for _, ev in events:
            if is_foreign(self.rt, ev):
                self.rt.bus.publish(ev)
                published += 1
        self.position = max(pos, reached)
        self._more = len(events) >= self.batch
        return published

    _more = False

    async def _loop(self) -> None:
        await rounds(self._round_more, stopping=self._stopping, wake=self._wake, every=self.every,
                     failed="relaying events from the log failed; will retry")

    async def _round_more(self) -> bool:
        self._more = False
        await self.relay_once()
        return self._more
