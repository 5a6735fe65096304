"""A system whose checks run on two servers is announced unhealthy once, and healthy again only
when its last failing check recovers, whichever server runs it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from opsroom import server
from opsroom.checks.probes import ProbeResult
from opsroom.config import Settings
from opsroom.events import SystemHealthChanged
from opsroom.runtime import Runtime
from tests.factories import PASSWORDS, free_port, small_catalog


def _catalog(tmp: Path) -> Path:
    closed = free_port()
    # A week's interval: the test records the results itself. Slots are aligned to the wall clock,
    # so with an hour a scheduled run (CRITICAL: the port is closed) fell in a test's ten seconds
    # about once in twenty runs and kept the system unhealthy; with a week, once in thousands.
    checks = [{"name": f"h{i:02d}", "type": "tcp", "service": "svc", "host": "127.0.0.1", "port": closed,
               "interval": "604800s", "max_attempts": 1, "flap_low": 1.0, "flap_high": 1.0} for i in range(24)]
    return small_catalog(tmp, checks=checks)


async def _until(cond: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def _announced(rts: list[Runtime]) -> list[bool]:
    """Distinct announcements in the cluster, in order (the event log brings each one to every
    server's bus as well: counted once, by its stable id)."""
    seen = {e.uid: e for rt in rts for e in rt.bus.history if isinstance(e, SystemHealthChanged)}
    return [e.healthy for e in sorted(seen.values(), key=lambda e: e.uid)]


def _history(rts: list[Runtime]) -> list[tuple[str, bool, str | None]]:
    return [(e.uid, e.healthy, e.origin) for rt in rts for e in rt.bus.history if isinstance(e, SystemHealthChanged)]


async def _settle(rts: list[Runtime]) -> None:
    for rt in rts:
        assert rt.monitor is not None
        await rt.bus.drain()
        if rt.monitor.shared_health is not None:
            await rt.monitor.shared_health.drain()


@asynccontextmanager
async def _two_servers(tmp_path: Path, url: str) -> AsyncIterator[list[Runtime]]:
    """Two servers on one PostgreSQL sharing the system's checks, each keeping its event history."""
    settings = Settings(data=tmp_path / "data", catalog=_catalog(tmp_path), database_url=url,
                        # Leases that survive a loaded machine's stalls: a server that lost its
                        # shards mid-test left its own checks out of its judgement (seen at load 10).
                        cluster_heartbeat=0.5, cluster_dead_after=3.0, cluster_shards=16)
    rts: list[Runtime] = []
    try:
        for _ in range(2):
            rt = await server.open_runtime(settings)
            await server.start(rt, schedule=True, passwords=PASSWORDS)
            rt.bus.keep_history = True
            rts.append(rt)
        yield rts
    finally:
        for rt in rts:
            await server.stop(rt)


async def test_a_system_split_over_two_servers_is_announced_once(tmp_path: Path, pg_own_url: str) -> None:
    async with _two_servers(tmp_path, pg_own_url) as rts:
        a, b = rts
        assert a.shards is not None and b.shards is not None
        await _until(lambda: len(a.shards.held) + len(b.shards.held) == 16  # type: ignore[union-attr]
                     and a.shards.held and b.shards.held)  # type: ignore[union-attr]
        on_a = next(c for c in a.catalog.checks if a.shards.holds(c))
        on_b = next(c for c in b.catalog.checks if b.shards.holds(c))
        assert a.monitor is not None and b.monitor is not None

        a.monitor.record(on_a, ProbeResult("CRITICAL", "down"))
        await _settle(rts)
        b.monitor.record(on_b, ProbeResult("CRITICAL", "down"))
        await _settle(rts)
        assert _announced(rts) == [False], "unhealthy announced by both servers"
        # The other server's status view shows the check it does not run (read from the store).
        await _until(lambda: b.monitor is not None and on_a in b.monitor.status
                     and b.monitor.status[on_a].state == "CRITICAL", timeout=8)
        # The first check recovers while the other still fails: not healthy yet.
        a.monitor.record(on_a, ProbeResult("OK", "up"))
        await _settle(rts)
        assert _announced(rts) == [False]
        b.monitor.record(on_b, ProbeResult("OK", "up"))
        await _settle(rts)
        assert _announced(rts) == [False, True], _history(rts)
        assert a.monitor.system_healthy["sys"] is True or b.monitor.system_healthy["sys"] is True


async def test_both_recovering_at_once_announce_healthy_exactly_once(tmp_path: Path, pg_own_url: str) -> None:
    async with _two_servers(tmp_path, pg_own_url) as rts:
        a, b = rts
        assert a.shards is not None and b.shards is not None and a.monitor and b.monitor
        await _until(lambda: bool(a.shards.held and b.shards.held  # type: ignore[union-attr]
                                  and len(a.shards.held) + len(b.shards.held) == 16))  # type: ignore[union-attr]
        mine_a = [c for c in a.catalog.checks if a.shards.holds(c)]
        mine_b = [c for c in b.catalog.checks if b.shards.holds(c)]
        for _round in range(5):
            for c in mine_a:
                a.monitor.record(c, ProbeResult("CRITICAL", "down"))
            for c in mine_b:
                b.monitor.record(c, ProbeResult("CRITICAL", "down"))
            await _settle(rts)
            for c in mine_a:
                a.monitor.record(c, ProbeResult("OK", "up"))
            for c in mine_b:
                b.monitor.record(c, ProbeResult("OK", "up"))
            await _settle(rts)
        assert _announced(rts) == [False, True] * 5, _announced(rts)
