"""Probe deadlines (checks/probes/deadlines.py) through Probe.run, on a real event loop."""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

import pytest

from opsroom.checks.probes.base import Probe, ProbeContext, ProbeResult
from opsroom.checks.probes.deadlines import GRANULARITY


class Sleepy:
    def __init__(self, name: str, sleep: float, timeout: float) -> None:
        self.name, self.sleep, self.timeout = name, sleep, timeout


class SleepProbe(Probe[Sleepy]):
    type: ClassVar[str] = "sleep"

    async def probe(self, check: Sleepy, ctx: ProbeContext) -> ProbeResult:
        await asyncio.sleep(check.sleep)
        return ProbeResult("OK", f"{check.name} slept {check.sleep}")


async def timed(check: Sleepy, ctx: ProbeContext) -> tuple[ProbeResult, float]:
    start = time.monotonic()
    result = await SleepProbe().run(check, ctx)
    return result, time.monotonic() - start


async def test_an_overrunning_probe_times_out_within_the_granularity(ctx: ProbeContext) -> None:
    result, took = await timed(Sleepy("slow", 5.0, 0.2), ctx)
    assert (result.state, result.output) == ("CRITICAL", "timed out after 0.2s")
    assert 0.2 <= took < 0.2 + GRANULARITY + 0.1
    assert len(ctx.deadlines) == 0


async def test_short_timeouts_are_not_held_behind_long_ones(ctx: ProbeContext) -> None:
    long_first = asyncio.create_task(timed(Sleepy("long", 5.0, 3.0), ctx))
    await asyncio.sleep(0.01)
    results = await asyncio.gather(*(timed(Sleepy(f"s{i}", 5.0, 0.1 + i * 0.1), ctx) for i in range(3)),
                                   timed(Sleepy("quick", 0.05, 1.0), ctx))
    for i, (result, took) in enumerate(results[:3]):
        assert result.output == f"timed out after {0.1 + i * 0.1:g}s"
        assert took < 0.1 + i * 0.1 + GRANULARITY + 0.1
    assert results[3][0].output == "quick slept 0.05"  # finished first: never cancelled
    long_first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await long_first


async def test_a_finished_probe_is_never_cancelled_later(ctx: ProbeContext) -> None:
    """The task that ran the probe goes on (records the result): a late deadline must not hit it."""
    async def run_then_keep_working() -> str:
        result = await SleepProbe().run(Sleepy("fast", 0.0, 0.1), ctx)
        await asyncio.sleep(0.3)  # past the deadline it no longer has
        return result.output

    assert await run_then_keep_working() == "fast slept 0.0"


async def test_someone_elses_cancel_stays_a_cancel(ctx: ProbeContext) -> None:
    task = asyncio.create_task(SleepProbe().run(Sleepy("slow", 5.0, 10.0), ctx))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(ctx.deadlines) == 0


async def test_a_cancel_that_meets_the_deadline_still_wins(ctx: ProbeContext) -> None:
    """The deadline fires and the task is cancelled from outside in the same instant: it must end cancelled."""
    task = asyncio.create_task(SleepProbe().run(Sleepy("slow", 5.0, 0.1), ctx))
    await asyncio.sleep(0.02)  # the task is inside its probe
    time.sleep(0.12)  # the deadline passes while the loop is busy: its timer has not run yet
    ctx.deadlines._fire()  # the watchdog's timer callback, as the loop runs it next...
    task.cancel()  # ...and in the same iteration someone else cancels the task
    assert task.cancelling() == 2
    with pytest.raises(asyncio.CancelledError):
        await task


class SwallowProbe(Probe[Sleepy]):
    """A badly behaved probe: it catches the cancellation and returns as if nothing happened."""

    type: ClassVar[str] = "swallow"

    async def probe(self, check: Sleepy, ctx: ProbeContext) -> ProbeResult:
        try:
            await asyncio.sleep(check.sleep)
        except asyncio.CancelledError:
            return ProbeResult("OK", "swallowed the cancel")
        return ProbeResult("OK", "slept")


async def test_a_probe_that_swallows_its_deadline_leaves_the_task_uncancelled(ctx: ProbeContext) -> None:
    """The scheduler's workers live on after a probe: a leftover cancel request would hit their next await."""
    result = await SwallowProbe().run(Sleepy("rude", 5.0, 0.1), ctx)
    assert result.output == "swallowed the cancel"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.01)  # the task goes on undisturbed
