"""The check scheduler, in real time with short intervals (each test well under 3 s)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from opsroom.checks.scheduler import Scheduler, phase


class Recorder:
    """An injected run_check that records when each check started, optionally slowly."""

    def __init__(self, delays: dict[str, float] | None = None, fail: set[str] | None = None) -> None:
        self.starts: dict[str, list[float]] = {}
        self.delays = delays or {}
        self.fail = fail or set()
        self.active = 0
        self.max_active = 0
        self.cancelled = 0

    async def __call__(self, name: str) -> None:
        self.starts.setdefault(name, []).append(time.monotonic())
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if name in self.fail:
                raise RuntimeError("boom")
            await asyncio.sleep(self.delays.get(name, 0.0))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1

    def count(self, name: str) -> int:
        return len(self.starts.get(name, []))


async def run_for(sched: Scheduler, seconds: float) -> None:
    sched.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        await sched.stop()


def test_phase_is_stable_and_in_range() -> None:
    assert phase("service-b-http", 10.0) == phase("service-b-http", 10.0)
    assert phase("a", 10.0) != phase("b", 10.0)
    values = [phase(f"check-{i:05d}", 10.0) for i in range(20_000)]
    assert all(0.0 <= v < 10.0 for v in values)
    # 20,000 checks at 10 s: every second of the interval gets close to its 2,000 first runs.
    buckets = Counter(int(v) for v in values)
    assert sorted(buckets) == list(range(10))
    assert all(1_800 <= n <= 2_200 for n in buckets.values()), buckets


async def test_runs_on_its_interval() -> None:
    rec = Recorder()
    sched = Scheduler(rec)
    sched.add("a", 0.1)
    await run_for(sched, 0.75)
    # first run within the first interval, then every 0.1 s
    assert 6 <= rec.count("a") <= 8
    gaps = [b - a for a, b in zip(rec.starts["a"], rec.starts["a"][1:], strict=False)]
    assert all(0.07 <= g <= 0.15 for g in gaps), gaps


async def test_first_runs_are_spread_over_the_interval() -> None:
    rec = Recorder()
    sched = Scheduler(rec)
    t0 = time.monotonic()
    for i in range(300):
        sched.add(f"c{i}", 1.0)
    await run_for(sched, 1.05)
    firsts = sorted(v[0] - t0 for v in rec.starts.values())
    assert len(firsts) == 300
    # each tenth of the interval holds roughly a tenth of the first runs, not a burst at 0
    tenths = Counter(min(9, int(f * 10)) for f in firsts)
    assert all(10 <= tenths[k] <= 60 for k in range(10)), tenths


async def test_slow_check_does_not_delay_others() -> None:
    rec = Recorder(delays={"slow": 1.0})
    sched = Scheduler(rec, concurrency=10)
    sched.add("slow", 0.05)
    for i in range(5):
        sched.add(f"fast{i}", 0.05)
    await run_for(sched, 0.8)
    assert rec.count("slow") == 1  # never two runs of one check at once
    assert sched.skipped_busy > 0
    assert all(rec.count(f"fast{i}") >= 13 for i in range(5))
    assert sched.lag_percentiles()["p99"] < 0.1  # the slow check holds one slot, not the dispatcher


async def test_concurrency_is_bounded() -> None:
    rec = Recorder(delays={f"c{i}": 0.1 for i in range(20)})
    sched = Scheduler(rec, concurrency=3)
    for i in range(20):
        sched.add(f"c{i}", 0.2)
    await run_for(sched, 0.8)
    assert rec.max_active == 3
    # back-pressure shows up as lag rather than as unbounded queued tasks
    assert sched.lag_percentiles()["p99"] > 0.05


async def test_remove_stops_runs() -> None:
    rec = Recorder()
    sched = Scheduler(rec)
    sched.add("a", 0.05)
    sched.add("b", 0.05)
    sched.start()
    try:
        await asyncio.sleep(0.3)
        sched.remove("a")
        assert "a" not in sched and "b" in sched and len(sched) == 1
        seen = rec.count("a")
        await asyncio.sleep(0.3)
        assert rec.count("a") == seen
        assert rec.count("b") >= 10
    finally:
        await sched.stop()


async def test_reschedule_to_a_shorter_interval_applies_at_once() -> None:
    rec = Recorder()
    sched = Scheduler(rec)
    sched.add("a", 100.0)
    assert sched.names == {"a"}
    sched.start()
    try:
        await asyncio.sleep(0.05)
        sched.reschedule("a", 0.05)  # e.g. retry_interval while soft
        await asyncio.sleep(0.5)
        assert rec.count("a") >= 7
        sched.reschedule("a", 100.0)  # back to the normal interval: next run a long way off
        seen = rec.count("a")
        await asyncio.sleep(0.3)
        assert rec.count("a") == seen
        due = sched.next_due("a")
        assert due is not None and due - time.monotonic() > 90
    finally:
        await sched.stop()


async def test_new_earlier_check_wakes_the_dispatcher() -> None:
    rec = Recorder()
    sched = Scheduler(rec)
    sched.add("far", 1000.0)
    sched.start()
    try:
        await asyncio.sleep(0.05)
        sched.add("near", 0.05)
        await asyncio.sleep(0.2)
        assert rec.count("near") >= 2
    finally:
        await sched.stop()


async def test_failing_check_is_counted_and_the_rest_go_on() -> None:
    rec = Recorder(fail={"bad"})
    sched = Scheduler(rec)
    sched.add("bad", 0.05)
    sched.add("good", 0.05)
    sched.start()
    try:
        # Until both have run several times (a loaded machine slows the logged tracebacks down,
        # so a fixed window proved nothing but the machine's load).
        deadline = time.monotonic() + 10
        while (rec.count("good") < 6 or rec.count("bad") < 5) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        await sched.stop()
    assert rec.count("good") >= 6 and rec.count("bad") >= 5
    assert sched.failures == rec.count("bad")  # every raise counted, none lost, none doubled


async def test_stop_cancels_runs_in_progress() -> None:
    rec = Recorder(delays={"hang": 30.0})
    sched = Scheduler(rec)
    sched.add("hang", 0.01)
    sched.start()
    await asyncio.sleep(0.1)
    assert rec.active == 1
    t0 = time.monotonic()
    await sched.stop()
    assert time.monotonic() - t0 < 0.5
    assert rec.cancelled == 1 and rec.active == 0 and not sched.running
    seen = rec.count("hang")
    await asyncio.sleep(0.1)
    assert rec.count("hang") == seen


async def test_lag_percentiles() -> None:
    sched = Scheduler(Recorder())
    assert sched.lag_percentiles() == {"p50": 0.0, "p99": 0.0, "max": 0.0, "samples": 0.0}
    for i in range(50):
        sched.add(f"c{i}", 0.1)
    await run_for(sched, 0.35)
    lag = sched.lag_percentiles()
    assert lag["samples"] >= 100
    assert 0.0 <= lag["p50"] <= lag["p99"] <= lag["max"] < 0.1
    sched.reset_lag()
    assert sched.lag_percentiles()["samples"] == 0.0


async def test_far_behind_skips_missed_runs_instead_of_bursting() -> None:
    # The loop is blocked for 0.5 s (a stand-in for an overloaded process): the
    # 0.05 s check then runs once, not ten times in a row.
    rec = Recorder()
    sched = Scheduler(rec)
    sched.add("a", 0.05)
    sched.start()
    try:
        await asyncio.sleep(0.12)
        before = rec.count("a")
        time.sleep(0.5)  # block the loop on purpose
        await asyncio.sleep(0.02)
        assert rec.count("a") - before <= 2
        assert sched.skipped_late >= 8
    finally:
        await sched.stop()


async def test_runs_reuse_a_few_workers_instead_of_a_task_each() -> None:
    rec = Recorder(delays={f"c{i}": 0.005 for i in range(4)})
    sched = Scheduler(rec, concurrency=50)
    for i in range(4):
        sched.add(f"c{i}", 0.02)
    sched.start()
    try:
        await asyncio.sleep(0.5)
        assert sched.dispatched >= 60
        assert 1 <= sched.workers <= 4  # never more than the runs that overlapped
    finally:
        await sched.stop()
    assert sched.workers == 0


async def test_a_stopped_scheduler_starts_again_cleanly() -> None:
    rec = Recorder(delays={"slow": 0.2})
    sched = Scheduler(rec, concurrency=1)
    sched.add("slow", 0.01)
    sched.add("other", 0.01)
    sched.start()
    await asyncio.sleep(0.05)  # slow holds the one slot; other waits
    await sched.stop()
    before = rec.count("other")
    sched.start()
    try:
        await asyncio.sleep(0.6)
    finally:
        await sched.stop()
    assert rec.count("slow") >= 2 and rec.count("other") > before  # no slot or name left stuck


def test_bad_arguments() -> None:
    async def noop(name: str) -> None:
        return None

    with pytest.raises(ValueError):
        Scheduler(noop, concurrency=0)
    sched = Scheduler(noop)
    with pytest.raises(ValueError):
        sched.add("a", 0)
