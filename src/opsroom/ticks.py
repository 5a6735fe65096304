"""The background passes of a server (heartbeats, shard and chat leases, housekeeping).

Each pass runs between ticks and is stopped by an event between passes, never cancelled: a
cancel landing inside a transaction cancels its rollback too, and the pool then logs a
traceback for the abandoned connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog

log = structlog.get_logger(__name__)


async def ticks(stopping: asyncio.Event, every: float) -> AsyncIterator[None]:
    """Yield once every `every` seconds until `stopping` is set (the first after one period)."""
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), every)
            return
        yield


async def rounds(one_round: Callable[[], Awaitable[bool]], *, stopping: asyncio.Event, wake: asyncio.Event,
                 every: float, failed: str, **fields: Any) -> None:
    """Run `one_round` until `stopping`: again at once when it says more is waiting, else on the next
    wake-up or after `every` seconds. A failed round is logged (`failed`) and tried next time."""
    while not stopping.is_set():
        wake.clear()
        more = False
        try:
            more = await one_round()
        except Exception:
            log.exception(failed, **fields)
        if more:
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), every)
