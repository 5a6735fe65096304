"""How every adapter waits before reconnecting, and the send queue before retrying: 0.5 s
doubling to 30 s, with jitter so that many servers (or many adapters) do not retry in step."""

from __future__ import annotations

import asyncio
import math
import random

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0


class Backoff:
    def __init__(self, first: float = BACKOFF_FIRST_S, most: float = BACKOFF_MAX_S) -> None:
        self.first, self.most = first, most
        self.delay = first

    def reset(self) -> None:
        """It worked: the next failure waits the shortest time again."""
        self.delay = self.first

    def hold(self) -> None:
        """A failure that will not fix itself soon (a wrong token): wait the longest."""
        self.delay = self.most

    def next_wait(self, at_least: float = 0.0) -> float:
        """The time to wait now (never less than what the platform asked, up to the most),
        and double the next one."""
        wait = max(self.delay * (0.5 + random.random()), min(at_least, self.most))
        self.delay = min(self.delay * 2, self.most)
        return wait

    async def wait(self, at_least: float = 0.0) -> None:
        await asyncio.sleep(self.next_wait(at_least))


def retry_after_s(header: str | None, default: float = 1.0) -> float:
    """Seconds from an HTTP 429's Retry-After (or a platform's like header); what cannot be
    read as a finite, non-negative number of seconds waits the default instead."""
    try:
        value = float(header) if header is not None else default
    except ValueError:
        return default
    return value if math.isfinite(value) and value >= 0 else default
