"""Which chat platform connections this server holds: one server per platform, taken over on death.

Two servers connected to one IRC network as the same bot would both answer every command and
both send every notice. Each platform adapter (not the web room, which every server serves) runs
only on the server holding the lease `chat:<platform name>` (cluster/leases.py): taken when free
or expired, renewed every RENEW_S, given back on a clean stop. When the holder dies, its lease
expires within TTL_S and the next pass of another server takes it and connects.

Fencing: this server counts a lease as held until TTL_S after the moment it *sent* the last
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
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from opsroom.chat.base import AdapterSink, ChatAdapter, DeliveryFailed, Outgoing, Person
from opsroom.cluster.leases import Leases
from opsroom.runtime import Runtime
from opsroom.ticks import ticks

if TYPE_CHECKING:
    from opsroom.chat.hub import RoomHub

log = structlog.get_logger(__name__)

TTL_S = 5.0
RENEW_S = 1.0


def lease_name(platform: str) -> str:
    return f"chat:{platform}"


class ChatOwnership:
    def __init__(self, rt: Runtime, hub: RoomHub, *, ttl: float = TTL_S, every: float = RENEW_S) -> None:
        self.rt, self.hub, self.ttl, self.every = rt, hub, ttl, every
        self.leases = Leases(rt)
        self.names = sorted(n for n, a in hub.adapters.items() if not a.implicit)
        self.epochs: dict[str, int] = {}
        self._until: dict[str, float] = {}  # monotonic: held until then unless renewed
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

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
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="chat-ownership")

    async def stop(self) -> None:
        """Stop the pass loop and give the leases back, so another server connects at once. The
        hub stops the adapters first."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
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

    async def run_once(self) -> None:
        """One pass: renew what is held, let go of what was lost, take what is free."""
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
                continue
            self._until[name] = began + self.ttl
            self.epochs[name] = epoch
            log.info("chat connection taken", platform=name, epoch=epoch)
            await self.hub.start_adapter(name)

    async def _lose(self, name: str, why: str) -> None:
        self._until.pop(name, None)
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
        await self.inner.deliver(out)

    async def stream_output(self, out: Outgoing) -> None:
        self._check()
        await self.inner.stream_output(out)

    async def start(self, sink: AdapterSink, channels: list[str]) -> None:
        await self.inner.start(sink, channels)

    async def stop(self) -> None:
        await self.inner.stop()

    async def identify(self, account_id: str) -> Person:
        return await self.inner.identify(account_id)

    async def presence(self, channel: str) -> list[Person]:
        return await self.inner.presence(channel)
