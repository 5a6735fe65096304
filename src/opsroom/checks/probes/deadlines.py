"""Probe timeouts for thousands of checks at once.

``asyncio.timeout`` puts a TimerHandle on the loop's heap for every probe, and a
cancelled handle stays there until it comes due: ~50,000 of them at 5,000 checks/s
with 10 s timeouts, each push comparing TimerHandles in Python. It was 15% of the
event loop's time at that rate. Here a heap of (deadline, seq) tuples, compared in
C, and one loop timer armed for the earliest deadline cancel the task of a probe
that overran; ``Probe.run`` turns that cancellation into a timed-out result the way
``asyncio.timeout`` turns its own into TimeoutError. A probe is cut off between its
deadline and ``GRANULARITY`` later.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from typing import Any

GRANULARITY = 0.05  # seconds: how late after its deadline a probe may be cut off


class Deadlines:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []  # finished probes' entries stay until due (lazy)
        self._live: dict[int, asyncio.Task[Any]] = {}
        self._expired: set[int] = set()
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def __len__(self) -> int:
        """Probes being watched now."""
        return len(self._live)

    def watch(self, task: asyncio.Task[Any], deadline: float) -> int:
        """Cancel `task` once the loop's clock passes `deadline`, unless released first."""
        token = next(self._seq)
        self._live[token] = task
        heapq.heappush(self._heap, (deadline, token))
        if deadline < self._timer_at - GRANULARITY:
            self._arm(deadline)
        return token

    def release(self, token: int) -> bool:
        """Stop watching; True when the deadline had passed and the task was cancelled for it."""
        self._live.pop(token, None)
        if token in self._expired:
            self._expired.discard(token)
            return True
        return False

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = math.inf

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = asyncio.get_running_loop().time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, token = heapq.heappop(heap)
            task = self._live.pop(token, None)
            if task is not None and not task.done():
                self._expired.add(token)
                task.cancel()
        if heap:
            self._arm(max(heap[0][0], now + GRANULARITY))
