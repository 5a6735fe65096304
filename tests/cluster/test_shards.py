"""Shards of checks: rendezvous assignment, slots aligned to the wall clock, and real servers on one
PostgreSQL sharing checks, handing them over and losing them."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from opsroom import server
from opsroom.checks.models import CheckResultRow
from opsroom.checks.scheduler import Scheduler, phase
from opsroom.cluster.models import LeaseRow
from opsroom.cluster.shards import assignment, ranking, shard_of
from opsroom.config import Settings
from opsroom.runtime import Runtime
from tests.factories import PASSWORDS, free_port, small_catalog

# --- pure parts -----------------------------------------------------------


def test_rendezvous_is_balanced_and_moves_about_one_nth() -> None:
    servers = [f"host{i}:{100 + i}:abcd{i}" for i in range(3)]
    three = assignment(64, servers)
    counts = Counter(three.values())
    assert set(counts) == set(servers)
    assert all(12 <= c <= 32 for c in counts.values()), counts
    # A fourth server joins: only shards it now owns move, about a quarter of them.
    four = assignment(64, [*servers, "host3:103:abcd3"])
    moved = [n for n in range(64) if three[n] != four[n]]
    assert all(four[n] == "host3:103:abcd3" for n in moved)
    assert 6 <= len(moved) <= 28, len(moved)
    # One leaves: only its shards move, and each goes to the server ranked next for it.
    two = assignment(64, servers[1:])
    for n in range(64):
        if three[n] != servers[0]:
            assert two[n] == three[n]
        else:
            assert two[n] == ranking(n, servers)[1]
    # Stable: the same on every call, in any order of the servers.
    assert assignment(64, list(reversed(servers))) == three


def test_checks_spread_over_shards_stably() -> None:
    shards = Counter(shard_of(f"check-{i}", 64) for i in range(6400))
    assert len(shards) == 64 and min(shards.values()) > 50
    assert shard_of("check-1", 64) == shard_of("check-1", 64)


class _Clocks:
    def __init__(self) -> None:
        self.mono, self.wall = 1000.0, 1_700_000_000.0

    def advance(self, s: float) -> None:
        self.mono += s
        self.wall += s


async def _noop(_name: str) -> None:
    return None


def test_aligned_slots_never_before_not_before() -> None:
    clocks = _Clocks()
    sched = Scheduler(_noop, clock=lambda: clocks.mono, wall=lambda: clocks.wall)
    interval = 2.0
    ph = phase("c", interval)
    sched.add("c", interval)
    due_wall = sched.next_due("c") - clocks.mono + clocks.wall  # type: ignore[operator]
    # On the check's slot grid: phase + k * interval, and the first slot from now.
    assert abs(((due_wall - ph) / interval) - round((due_wall - ph) / interval)) < 1e-6
    assert clocks.wall <= due_wall < clocks.wall + interval
    # Handed over: never before not_before, at the first slot from it.
    sched.remove("c")
    later = clocks.wall + 7.3
    sched.add("c", interval, not_before=later)
    due_wall = sched.next_due("c") - clocks.mono + clocks.wall  # type: ignore[operator]
    assert later <= due_wall < later + interval
    assert sched.slot("c", interval, due_wall + 0.5) == pytest.approx(due_wall)


# --- real servers on PostgreSQL ------------------------------------------

INTERVAL = 1.0
HEARTBEAT, DEAD_AFTER = 0.25, 1.0


def _catalog(tmp: Path, n: int) -> Path:
    closed = free_port()  # nothing listens: each probe is one refused connect, no process forked
    checks = [{"name": f"c{i:03d}", "type": "tcp", "service": "svc", "host": "127.0.0.1", "port": closed,
               "interval": f"{INTERVAL}s", "timeout": "1s"} for i in range(n)]
    return small_catalog(tmp, checks=checks)


def _settings(tmp: Path, url: str, n: int = 60) -> Settings:
    return Settings(data=tmp / "data", catalog=_catalog(tmp, n), database_url=url, check_result_ok_interval=0,
                    cluster_heartbeat=HEARTBEAT, cluster_dead_after=DEAD_AFTER, cluster_shards=16)


async def _server(settings: Settings) -> Runtime:
    rt = await server.open_runtime(settings)
    await server.start(rt, schedule=True, passwords=PASSWORDS)
    return rt


async def _until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def _held(rt: Runtime) -> set[int]:
    assert rt.shards is not None
    return set(rt.shards.held)


@pytest.fixture
async def two(tmp_path: Path, pg_own_url: str) -> AsyncIterator[tuple[Settings, list[Runtime]]]:
    settings = _settings(tmp_path, pg_own_url)
    rts = [await _server(settings)]
    rts.append(await _server(settings))
    try:
        yield settings, rts
    finally:
        for rt in rts:
            if rt.shards is not None or rt.membership is not None:
                await server.stop(rt)


async def _results(rt: Runtime) -> list[Any]:
    async with rt.read() as s:
        return list((await s.execute(select(CheckResultRow.check, CheckResultRow.at)
                                     .order_by(CheckResultRow.at))).all())


async def test_two_servers_split_the_shards_and_each_check_runs_on_one(two: tuple[Settings, list[Runtime]]) -> None:
    _, (a, b) = two
    # Within a few heartbeats the second has asked for its shards and the first gave them back.
    await _until(lambda: len(_held(a)) + len(_held(b)) == 16 and not (_held(a) & _held(b))
                 and len(_held(b)) >= 3 and len(_held(a)) >= 3)
    assert a.monitor is not None and b.monitor is not None
    await _until(lambda: len(a.monitor.scheduler) + len(b.monitor.scheduler) == 60)
    assert not set(a.monitor.scheduler.names) & set(b.monitor.scheduler.names)
    await asyncio.sleep(3 * INTERVAL)
    await a.monitor.flush()
    await b.monitor.flush()
    rows = await _results(a)
    assert {c for c, _ in rows} == {f"c{i:03d}" for i in range(60)}
    _assert_no_two_in_one_interval(rows)


def _assert_no_two_in_one_interval(rows: list[Any]) -> None:
    by: dict[str, list[float]] = {}
    for check, at in rows:
        by.setdefault(check, []).append(float(at))
    for check, ats in by.items():
        ph = phase(check, INTERVAL)
        windows = Counter(int((at - ph) // INTERVAL) for at in ats)
        twice = {w: k for w, k in windows.items() if k > 1}
        assert not twice, f"{check} ran twice in one interval: {ats}"


async def test_a_stopped_server_hands_its_checks_over_in_the_next_interval(
        two: tuple[Settings, list[Runtime]]) -> None:
    _s, (a, b) = two
    await _until(lambda: len(_held(a)) + len(_held(b)) == 16 and len(_held(b)) >= 3 and len(_held(a)) >= 3)
    await asyncio.sleep(2 * INTERVAL)
    assert b.monitor is not None and a.monitor is not None
    moved = set(b.monitor.scheduler.names)
    assert moved
    stopped_at = time.time()
    await server.stop(b)  # gives its shards back at once
    await _until(lambda: len(_held(a)) == 16, timeout=5)
    await asyncio.sleep(2 * INTERVAL)
    await a.monitor.flush()
    rows = await _results(a)
    _assert_no_two_in_one_interval(rows)
    for check in moved:
        before = [at for c, at in rows if c == check and at <= stopped_at]
        after = [at for c, at in rows if c == check and at > stopped_at]
        assert after, f"{check} never ran after its server stopped"
        # Never sooner than the interval after its last run on the stopped server.
        ph = phase(check, INTERVAL)
        assert int((after[0] - ph) // INTERVAL) > int((before[-1] - ph) // INTERVAL)
        assert after[0] - before[-1] <= 2 * INTERVAL + 0.5, (check, before[-1], after[0])


async def test_a_lost_lease_stops_its_checks_at_once(two: tuple[Settings, list[Runtime]]) -> None:
    _s, (a, b) = two
    await _until(lambda: len(_held(a)) + len(_held(b)) == 16 and len(_held(b)) >= 3)
    assert b.shards is not None and b.monitor is not None
    victim = min(_held(b))
    checks = [c for c in b.monitor.scheduler.names if shard_of(c, 16) == victim]
    # Another holder took it behind b's back (as after a pause past the ttl): b learns it at its
    # next renewal and stops those checks; until then it must not run them past the local expiry.
    async with b.write() as s:
        await s.execute(update(LeaseRow).where(LeaseRow.name == f"shard:{victim}")
                        .values(holder="thief:1:x", expires_at=func.extract("epoch", func.clock_timestamp()) + 60))
    await _until(lambda: victim not in _held(b), timeout=2)
    assert not any(c in b.monitor.scheduler for c in checks)
    assert not any(b.shards.holds(c) for c in checks)
