"""Which chat platform connections this server holds: one server per platform, taken over on death.

Two servers connected to one IRC network as the same bot would both answer every command and
both send every notice. Each platform adapter (not the web room, which every server serves) runs
only on the server holding the lease `chat:<platform name>` (cluster/leases.py): taken when free
or expired, renewed every `cluster_heartbeat`, given back on a clean stop. Its ttl is the
cluster's dead window (`cluster_dead_after`, 3 s): when the holder dies, its connection moves
with its shards of checks, at the next pass of another server after the lease expired. What
the rooms said in between is sent by the new holder (chat/handover.py).

Why not take a lease at once when its holder's heartbeat row is dead: the holder fences itself
by its lease (below), not by its heartbeat, which it cannot see failing; a ttl as long as the
dead window moves the connection as soon, and keeps the fence.

Fencing: this server counts a lease as held until the ttl after the moment it *sent* the last
successful take or renewal (by its monotonic clock, which runs on while a process is paused): the
store's expiry is later than that, never earlier. A holder paused past its lease (SIGSTOP, a long
GC, a VM freeze) therefore stops delivering the moment it resumes, before it even learns that
another server took the lease, and its send queue drops what it held (`Fenced`). On losing a lease
the adapter is stopped at once. PostgreSQL only: on SQLite one server holds every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog

from opsroom.chat import handover
from opsroom.chat.base import AdapterSink, ChatAdapter, DeliveryFailed, Outgoing, Person
from opsroom.chat.handover import MARK_S, Handover
from opsroom.cluster.leases import Leases
from opsroom.runtime import Runtime
from opsroom.ticks import ticks

if TYPE_CHECKING:
    from opsroom.chat.hub import RoomHub

log = structlog.get_logger(__name__)

EXPIRY_MARGIN_S = 0.05  # a take tried this long after the lease's expiry (the store's clock moves on)
UP_WAIT_S, UP_POLL_S = 3.0, 0.05  # a connection coming up is waited for this long, polled this often


def lease_name(platform: str) -> str:
    return f"chat:{platform}"


class ChatOwnership:
    def __init__(self, rt: Runtime, hub: RoomHub, *, ttl: float | None = None, every: float | None = None) -> None:
        # The cluster's dead window by default: a dead holder's connection moves as soon as its
        # checks do (a kill -9 costs the room ~3-4 s of its platform, not 5-7).
        self.ttl = ttl if ttl is not None else rt.settings.cluster_dead_after
        self.every = every if every is not None else rt.settings.cluster_heartbeat
        self.rt, self.hub = rt, hub
        self.leases = Leases(rt)
        self.names = sorted(n for n, a in hub.adapters.items() if not a.implicit)
        self.epochs: dict[str, int] = {}
        self._until: dict[str, float] = {}  # monotonic: held until then unless renewed
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._marking: asyncio.Task[None] | None = None
        self._at_expiry: dict[str, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()  # one pass at a time (the loop's, or one at a lease's expiry)
        self.handover = Handover(rt, hub, lease=lease_name)

    def holds(self, name: str) -> bool:
        return time.monotonic() < self._until.get(name, 0.0)

    @property
    def held(self) -> list[str]:
        return [n for n in self.names if self.holds(n)]

    async def start(self) -> None:
        """Take what is free now (a lone server connects at once), then keep taking and renewing."""
        if not self.names:
            return
        try:
            await self.run_once()
        except Exception:
            log.warning("taking chat connections failed; retrying", exc_info=True)
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._loop(), name="chat-ownership")
        self._marking = loop.create_task(self._mark_loop(), name="chat-sent-positions")

    async def stop(self) -> None:
        """Stop the pass loop and give the leases back, so another server connects at once. The
        hub stops the adapters first (after their queues drained): how far they sent is stored
        before the leases go, so the next holder sends nothing again."""
        self._stopping.set()
        for task in (self._task, self._marking, *self._at_expiry.values()):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._marking = None
        for name in self.held:
            with contextlib.suppress(Exception):
                await self.handover.mark(name, wait=0.5)  # the hub drained its queues already
        held, self._until = list(self._until), {}
        if held:
            with contextlib.suppress(Exception):
                await self.leases.release([lease_name(n) for n in held])

    async def _loop(self) -> None:
        async for _ in ticks(self._stopping, self.every):
            try:
                await self.run_once()
            except Exception as exc:  # the store away: what can no longer be renewed in time is let go
                log.warning("renewing chat connections failed", error=type(exc).__name__)
                for name in [n for n in self._until if not self.holds(n)]:
                    await self._lose(name, "its lease could not be renewed in time")

    async def _mark_loop(self) -> None:
        async for _ in ticks(self._stopping, MARK_S):
            for name in self.held:
                try:
                    await self.handover.mark(name)
                except Exception as exc:  # the store away: the next tick tries again
                    log.warning("storing how far a platform was sent failed", platform=name,
                                error=type(exc).__name__)

    async def run_once(self) -> None:
        """One pass: renew what is held, let go of what was lost, take what is free."""
        async with self._lock:
            began = time.monotonic()
            mine = [n for n in self.names if n in self._until]
            if mine:
                kept = await self.leases.renew([lease_name(n) for n in mine], ttl=self.ttl)
                for name in mine:
                    if lease_name(name) in kept:
                        self._until[name] = began + self.ttl
                    else:
                        await self._lose(name, "another server holds it now, or it expired")
            for name in self.names:
                if name in self._until or self._stopping.is_set():
                    continue
                epoch = await self.leases.take(lease_name(name), ttl=self.ttl)
                if epoch is None:
                    await self._try_at_expiry(name)
                else:
                    await self._took(name, epoch, began)

    async def _took(self, name: str, epoch: int, began: float) -> None:
        self._until[name] = began + self.ttl
        self.epochs[name] = epoch
        log.info("chat connection taken", platform=name, epoch=epoch)
        try:  # queued first, so what the room said meanwhile comes before what it says next
            await self.handover.taken(name)
        except Exception:
            log.warning("what the platform missed could not be read; not sent", platform=name, exc_info=True)
        await self.hub.start_adapter(name)

    async def _try_at_expiry(self, name: str) -> None:
        """Another server's lease that expires before the next pass is tried the moment it does:
        a dead holder's connection moves half a pass sooner on average, a whole one at worst."""
        if name in self._at_expiry:
            return
        left = await self.leases.left(lease_name(name))
        if left is not None and 0 <= left < self.every:
            self._at_expiry[name] = asyncio.get_running_loop().create_task(self._take_at(name, left))

    async def _take_at(self, name: str, left: float) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), left + EXPIRY_MARGIN_S)
                return
            async with self._lock:
                if name in self._until or self._stopping.is_set():
                    return
                began = time.monotonic()
                epoch = await self.leases.take(lease_name(name), ttl=self.ttl)
                if epoch is not None:
                    await self._took(name, epoch, began)
        except Exception as exc:  # the next pass tries again
            log.warning("taking a chat connection at its lease's expiry failed", platform=name,
                        error=type(exc).__name__)
        finally:
            self._at_expiry.pop(name, None)

    async def _lose(self, name: str, why: str) -> None:
        self._until.pop(name, None)
        self.handover.forget(name)
        log.warning("chat connection lost; its adapter stops here", platform=name, why=why)
        await self.hub.stop_adapter(name)


class Fenced(ChatAdapter):
    """A platform adapter as its send queue sees it: it delivers only while `holds()`, so a
    holder that lost its lease (paused past it) never speaks after the new holder connected."""

    def __init__(self, inner: ChatAdapter, holds: Callable[[str], bool]) -> None:
        self.inner, self._holds = inner, holds
        self.name = inner.name
        self.capabilities = inner.capabilities

    @property
    def streams(self) -> bool:
        return self.inner.streams

    def _check(self) -> None:
        if not self._holds(self.inner.name):
            raise DeliveryFailed(f"this server no longer holds the {self.inner.name} connection", transient=False)

    async def deliver(self, out: Outgoing) -> None:
        self._check()
        if not handover.first_copy(self.inner, out):
            return  # sent from the log after a takeover, and brought by the relay too
        await self._when_up(self.inner.deliver, out)

    async def stream_output(self, out: Outgoing) -> None:
        self._check()
        await self._when_up(self.inner.stream_output, out)

    async def _when_up(self, send: Callable[[Outgoing], Awaitable[None]], out: Outgoing) -> None:
        """A connection coming up after a takeover is waited for here, polling, up to
        UP_WAIT_S, not through the send queue's backoff (0.5 s, doubling): what the room said in
        the takeover gap is there as the bot joins. A refusal, a failure while connected (a rate
        limit, the platform's error) or any failure long after the takeover goes to the queue."""
        loop = asyncio.get_running_loop()
        until: float | None = None
        while True:
            try:
                await send(out)
                return
            except DeliveryFailed as exc:
                if not exc.transient or exc.retry_after is not None:
                    raise
                if until is None:
                    if self.inner.is_connected() or not handover.just_taken(self.inner):
                        raise
                    until = loop.time() + UP_WAIT_S
                if loop.time() >= until:
                    raise
            await asyncio.sleep(UP_POLL_S)
            self._check()

    async def start(self, sink: AdapterSink, channels: list[str]) -> None:
        await self.inner.start(sink, channels)

    async def stop(self) -> None:
        await self.inner.stop()

    async def identify(self, account_id: str) -> Person:
        return await self.inner.identify(account_id)

    async def presence(self, channel: str) -> list[Person]:
        return await self.inner.presence(channel)
