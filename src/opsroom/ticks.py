"""The background passes of a server (heartbeats, shard and chat leases, housekeeping).

Each pass runs between ticks and is stopped by an event between passes, never cancelled: a
cancel landing inside a transaction cancels its rollback too, and the pool then logs a
traceback for the abandoned connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


async def ticks(stopping: asyncio.Event, every: float) -> AsyncIterator[None]:
    """Yield once every `every` seconds until `stopping` is set (the first after one period)."""
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), every)
            return
        yield
