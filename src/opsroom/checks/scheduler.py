"""Runs many checks on their intervals from one asyncio task.

One heap of (due, seq, name, generation) and one dispatcher that sleeps until
the next due time (``loop.call_later``), never polling at fixed ticks. Each
check's first run is offset within its interval by a stable hash of its name,
so 20,000 checks at 10 s spread to ~2,000 starts per second instead of one
burst, and the phase survives restarts.

With a wall clock (`wall=time.time`, as servers sharing checks on PostgreSQL use), a check's
runs sit on fixed slots of that clock, `phase + k * interval`: every server agrees on where a
check's intervals begin, so one that takes a check over (cluster/shards.py) runs it in the next
interval its last holder did not, never a second time in the same one (`add(not_before=...)`).

Runs go to a pool of long-lived worker tasks (up to `concurrency`), not a task per
run: in Python 3.11 creating and registering a Task per check was a tenth of the
event loop's time at 5,000 checks/s. Dispatch is bounded by `concurrency` slots: a
slow check holds one slot, never the dispatcher. When every slot is busy the
dispatcher waits (back-pressure, bounded memory) and the wait shows up as
scheduler lag (actual start - due time), which is kept in a bounded window for
``lag_percentiles``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, KeysView
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

RunCheck = Callable[[str], Awaitable[None]]
# Yield to the loop after this many dispatches in a row, so a burst of due
# checks cannot starve the checks already running.
_BURST = 64


@dataclass(slots=True)
class _Entry:
    interval: float
    generation: int
    due: float
    last_start: float | None = None


def phase(name: str, interval: float) -> float:
    """Stable offset in [0, interval) from the name: same name, same slot, every start."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * interval


class Scheduler:
    def __init__(self, run_check: RunCheck, *, concurrency: int = 500, lag_window: int = 20_000,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._run_check = run_check
        self.concurrency = concurrency
        self._clock = clock
        self._wall = wall  # set: slots aligned to this clock (see the module's docstring)
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str, int]] = []
        self._seq = itertools.count()
        self._generations = itertools.count(1)
        # Free slots: a counter and one future, not a Semaphore, whose locked() walks its waiters
        # on every dispatch (the dispatcher is the only one that ever waits for a slot).
        self._free = concurrency
        self._slot_freed: asyncio.Future[None] | None = None
        self._running: set[str] = set()
        self._queue: deque[tuple[str, float]] = deque()  # dispatched, not yet taken by a worker
        self._idle: deque[asyncio.Future[None]] = deque()  # parked workers
        self._workers: set[asyncio.Task[None]] = set()
        self._lags: deque[float] = deque(maxlen=lag_window)
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self.dispatched = 0
        self.skipped_busy = 0  # due while its previous run was still going
        self.skipped_late = 0  # whole intervals missed because the scheduler was behind
        self.failures = 0  # run_check raised (it should not; the monitor catches)

    # --- schedule -------------------------------------------------------

    @property
    def names(self) -> KeysView[str]:
        """The scheduled checks (a live view: no copy of 20,000 names per call)."""
        return self._entries.keys()

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, name: str, interval: float, *, not_before: float | None = None) -> None:
        """Schedule ``name`` every ``interval`` seconds; first run at its hashed phase. With a wall
        clock, at its first slot at or after `not_before` (a wall time) and now."""
        if interval <= 0:
            raise ValueError(f"interval of {name} must be above zero")
        if name in self._entries:
            self.reschedule(name, interval)
            return
        if self._wall is not None:
            due = self._slot_due(name, interval, not_before or 0.0)
        else:
            due = self._clock() + phase(name, interval)
        self._push(name, _Entry(interval, next(self._generations), due))

    def remove_many(self, names: Iterable[str]) -> None:
        """Stop scheduling every check of `names` (a shard given up); runs in progress finish."""
        for name in names:
            self._entries.pop(name, None)

    def busy(self, names: Iterable[str]) -> bool:
        """Whether any of `names` is running or dispatched (a shard is released after its runs end)."""
        return any(n in self._running for n in names)

    def slot(self, name: str, interval: float, at: float) -> float:
        """The start (wall time) of the interval of `name` that holds wall time `at`."""
        ph = phase(name, interval)
        return ph + math.floor((at - ph) / interval) * interval

    def _slot_due(self, name: str, interval: float, not_before: float) -> float:
        """The monotonic due time of the first slot of `name` at or after max(now, not_before); or,
        when the interval under way began at or after `not_before` (> 0), that interval's start,
        which is past: the check runs at once, in an interval its last holder never reached."""
        assert self._wall is not None
        now_wall, now = self._wall(), self._clock()
        start = self.slot(name, interval, max(now_wall, not_before))
        if start < max(now_wall, not_before) - 1e-9 and not (0 < not_before <= start + 1e-9):
            start += interval
        return now + (start - now_wall)

    def remove(self, name: str) -> None:
        """Stop scheduling ``name``; a run in progress finishes. Heap entries go stale, no O(n) delete."""
        self._entries.pop(name, None)

    def reschedule(self, name: str, interval: float) -> None:
        """Change the interval (e.g. retry_interval while soft); next run = last start + interval."""
        if interval <= 0:
            raise ValueError(f"interval of {name} must be above zero")
        old = self._entries.get(name)
        if old is None:
            self.add(name, interval)
            return
        if old.interval == interval:
            return
        now = self._clock()
        if self._wall is not None:
            # Aligned: the first slot of the new interval a whole interval after the last start.
            after = 0.0 if old.last_start is None else self._wall() + (old.last_start + interval - now)
            due = self._slot_due(name, interval, after)
        elif old.last_start is None:
            # Never ran yet: keep the spread rather than bunching every rescheduled check.
            due = min(old.due, now + phase(name, interval))
        else:
            due = max(now, old.last_start + interval)
        self._push(name, _Entry(interval, next(self._generations), due, old.last_start))

    def next_due(self, name: str) -> float | None:
        entry = self._entries.get(name)
        return entry.due if entry is not None else None

    def _push(self, name: str, entry: _Entry) -> None:
        self._entries[name] = entry
        heapq.heappush(self._heap, (entry.due, next(self._seq), name, entry.generation))
        # Wake the dispatcher if this is now the earliest due; it sleeps until the old head.
        if self._heap[0][2] == name and self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    # --- lifecycle ------------------------------------------------------

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._dispatch(), name="opsroom-scheduler")

    async def stop(self) -> None:
        """Stop dispatching and cancel runs in progress (their timeouts could be long)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        workers = list(self._workers)
        for t in workers:
            t.cancel()
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)
        self._idle.clear()
        # Dispatched but never started: give their slots back so a restart starts clean.
        while self._queue:
            name, _ = self._queue.popleft()
            self._running.discard(name)
            self._free += 1

    @property
    def workers(self) -> int:
        """Worker tasks alive: as many as runs have overlapped, at most `concurrency`."""
        return len(self._workers)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # --- lag ------------------------------------------------------------

    def lag_percentiles(self) -> dict[str, float]:
        """Scheduler lag in seconds over the recent window: p50, p99, max, and the sample count."""
        if not self._lags:
            return {"p50": 0.0, "p99": 0.0, "max": 0.0, "samples": 0.0}
        data = sorted(self._lags)
        return {"p50": _pct(data, 0.50), "p99": _pct(data, 0.99), "max": data[-1],
                "samples": float(len(data))}

    def reset_lag(self) -> None:
        self._lags.clear()

    # --- the dispatcher -------------------------------------------------

    async def _sleep_until(self, due: float) -> None:
        loop = asyncio.get_running_loop()
        self._wakeup = loop.create_future()
        handle = loop.call_later(max(0.0, due - self._clock()), _wake, self._wakeup)
        try:
            await self._wakeup
        finally:
            handle.cancel()
            self._wakeup = None

    async def _dispatch(self) -> None:
        burst = 0
        while True:
            if not self._heap:
                await self._sleep_until(self._clock() + 3600.0)
                continue
            due, _, name, generation = self._heap[0]
            entry = self._entries.get(name)
            if entry is None or entry.generation != generation:
                heapq.heappop(self._heap)  # removed or rescheduled since this was pushed
                continue
            now = self._clock()
            if due > now:
                burst = 0
                await self._sleep_until(due)
                continue
            if self._free == 0:
                burst = 0
                self._slot_freed = asyncio.get_running_loop().create_future()
                try:
                    await self._slot_freed
                finally:
                    self._slot_freed = None
                # The world moved while we waited: re-read the head before using the slot.
                continue
            heapq.heappop(self._heap)
            if self._wall is not None and now - due >= entry.interval:
                # Aligned and a whole interval behind: this run belongs to the latest slot begun.
                due += math.floor((now - due) / entry.interval) * entry.interval
            entry.due = self._next_due(entry, due, now)
            heapq.heappush(self._heap, (entry.due, next(self._seq), name, generation))
            if name in self._running:
                self.skipped_busy += 1
            else:
                self._free -= 1
                self._running.add(name)
                entry.last_start = now
                self._queue.append((name, due))
                self._wake_worker()
                self.dispatched += 1
            burst += 1
            if burst >= _BURST:
                burst = 0
                await asyncio.sleep(0)

    def _next_due(self, entry: _Entry, due: float, now: float) -> float:
        # Keep the cadence (due + interval, no drift); if we are a whole interval
        # behind, skip the missed runs instead of firing them in a burst.
        nxt = due + entry.interval
        if nxt <= now:
            missed = math.floor((now - due) / entry.interval)
            self.skipped_late += missed
            nxt = due + (missed + 1) * entry.interval
        return nxt

    def _wake_worker(self) -> None:
        while self._idle:
            parked = self._idle.popleft()
            if not parked.done():
                parked.set_result(None)
                return
        if len(self._workers) < self.concurrency:
            task = asyncio.get_running_loop().create_task(self._worker(), name="opsroom-check-worker")
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                parked = loop.create_future()
                self._idle.append(parked)
                await parked
                continue
            name, due = self._queue.popleft()
            await self._run(name, due)

    async def _run(self, name: str, due: float) -> None:
        try:
            late = self._clock() - due
            entry = self._entries.get(name)
            if self._wall is not None and entry is not None and late >= entry.interval:
                # Aligned: a run that waited a whole interval for a worker would start in its next
                # slot's interval, which that slot runs in; once per interval, so not this one.
                self.skipped_late += 1
                return
            self._lags.append(max(0.0, late))
            await self._run_check(name)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.failures += 1
            log.exception("check run failed outside its probe", check=name)
        finally:
            self._running.discard(name)
            self._free += 1
            if self._slot_freed is not None and not self._slot_freed.done():
                self._slot_freed.set_result(None)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _pct(data: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted data."""
    return data[min(len(data) - 1, max(0, math.ceil(q * len(data)) - 1))]
