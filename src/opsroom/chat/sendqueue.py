"""Each adapter's own outgoing queue: bounded, paced to the platform's rate limit, retried with
backoff while the platform is away. A platform that is slow, rate-limited or down fills its
own queue and nobody else's: the hub only ever puts, it never waits for a platform.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass

import structlog

from opsroom.chat.backoff import Backoff
from opsroom.chat.base import ChatAdapter, DeliveryFailed, Outgoing

log = structlog.get_logger(__name__)



@dataclass
class QueueStats:
    delivered: int = 0
    retried: int = 0
    overflow: int = 0  # dropped because the queue was full (the oldest go first)
    failed: int = 0  # dropped because the platform refused them for good


class SendQueue:
    def __init__(self, adapter: ChatAdapter, *, size: int | None = None) -> None:
        self.adapter = adapter
        caps = adapter.capabilities
        self.rate = caps.rate_per_s
        self.burst = max(1, caps.burst)
        self.size = size or caps.queue_size
        self.stats = QueueStats()
        self._items: deque[Outgoing] = deque()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tokens = float(self.burst)
        self._refilled = time.monotonic()
        self._worker: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def inline(self) -> bool:
        """An adapter whose deliver() never blocks (web, fake) is called in line: in order with
        the room, and a reply is there by the time the command's await returns."""
        return self.rate is None

    def __len__(self) -> int:
        return len(self._items)

    def start(self) -> None:
        if not self.inline and self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name=f"send:{self.adapter.name}")

    async def stop(self) -> None:
        self._stopping = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def put(self, out: Outgoing) -> None:
        if self.inline:
            try:
                await (self.adapter.stream_output(out) if out.kind == "output" else self.adapter.deliver(out))
                self.stats.delivered += 1
            except Exception:
                self.stats.failed += 1
                log.exception("chat delivery failed", platform=self.adapter.name)
            return
        if len(self._items) >= self.size:
            self._items.popleft()
            self.stats.overflow += 1
        self._items.append(out)
        self._idle.clear()
        self._ready.set()

    async def drained(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far was delivered (tests, orderly stop)."""
        if self.inline:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False

    async def _take_token(self) -> None:
        assert self.rate is not None
        while True:
            now = time.monotonic()
            self._tokens = min(float(self.burst), self._tokens + (now - self._refilled) * self.rate)
            self._refilled = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            await asyncio.sleep((1 - self._tokens) / self.rate)

    async def _run(self) -> None:
        while not self._stopping:
            if not self._items:
                self._idle.set()
                self._ready.clear()
                await self._ready.wait()
                continue
            out = self._items.popleft()  # in flight: overflow drops only what still waits
            await self._take_token()
            backoff = Backoff()
            while True:
                try:
                    if out.kind == "output":
                        await self.adapter.stream_output(out)
                    else:
                        await self.adapter.deliver(out)
                    self.stats.delivered += 1
                    break
                except DeliveryFailed as exc:
                    if not exc.transient:
                        self.stats.failed += 1
                        log.warning("chat delivery refused", platform=self.adapter.name, error=str(exc))
                        break
                    self.stats.retried += 1
                    # The platform's own Retry-After when it gave one (a 429), else our backoff.
                    wait = backoff.next_wait()
                    await asyncio.sleep(min(exc.retry_after, backoff.most) if exc.retry_after is not None else wait)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.stats.failed += 1
                    log.exception("chat delivery failed", platform=self.adapter.name)
                    break
