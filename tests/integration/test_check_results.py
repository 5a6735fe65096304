"""Storing check results and states (checks/results.py) on both real stores.

What matters: nothing recorded is lost or stored twice (a failing or cancelled
chunk), retention is bounded per check, and a store that falls behind costs the
oldest results, counted, not unbounded memory.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from opsroom import server
from opsroom.checks.models import CheckResultRow, CheckStateRow
from opsroom.checks.results import WRITE_CHUNK, ResultWriter
from opsroom.config import Settings
from opsroom.runtime import Runtime
from tests.factories import small_catalog


class States:
    """What the monitor would hand over: each check's latest status fields."""

    def __init__(self) -> None:
        self.now: dict[str, dict[str, Any]] = {}

    def set(self, check: str, state: str, at: float) -> None:
        self.now[check] = {"state": state, "state_type": "hard", "attempt": 1, "since": at, "last_check": at,
                           "last_output": f"{state} at {at}", "last_latency_ms": 1.5, "down": state != "OK",
                           "flapping": False, "history": [state]}

    def __call__(self, check: str) -> dict[str, Any]:
        return self.now[check]


def result(check: str, at: float, state: str = "OK", output: str | None = None) -> dict[str, Any]:
    return {"check": check, "at": at, "state": state, "output": f"{state} at {at}" if output is None else output,
            "latency_ms": 1.5, "perfdata": {"time": at}}


def record(writer: ResultWriter, states: States, check: str, at: float, state: str = "OK") -> None:
    states.set(check, state, at)
    writer.add(result(check, at, state))


async def stored(rt: Runtime, check: str | None = None) -> list[CheckResultRow]:
    stmt = select(CheckResultRow).order_by(CheckResultRow.at, CheckResultRow.id)
    if check is not None:
        stmt = stmt.where(CheckResultRow.check == check)
    async with rt.read() as s:
        return list((await s.execute(stmt)).scalars())


async def state_rows(rt: Runtime) -> dict[str, CheckStateRow]:
    async with rt.read() as s:
        return {r.check: r for r in (await s.execute(select(CheckStateRow))).scalars()}


async def test_results_and_states_are_stored_then_updated(store_rt: Runtime) -> None:
    states = States()
    writer = ResultWriter(store_rt, states)
    record(writer, states, "a", 1.0)
    record(writer, states, "b", 1.0, "CRITICAL")
    await writer.flush()
    record(writer, states, "a", 2.0, "WARNING")  # a's state row exists now: updated, not inserted again
    await writer.flush()
    rows = await stored(store_rt)
    assert [(r.check, r.at, r.state, r.perfdata) for r in rows] == [
        ("a", 1.0, "OK", {"time": 1.0}), ("b", 1.0, "CRITICAL", {"time": 1.0}), ("a", 2.0, "WARNING", {"time": 2.0})]
    st = await state_rows(store_rt)
    assert (st["a"].state, st["a"].last_check, st["a"].last_output, st["a"].history) == \
        ("WARNING", 2.0, "WARNING at 2.0", ["WARNING"])
    assert (st["b"].state, st["b"].down) == ("CRITICAL", True)
    assert writer.stored == 3 and not writer.pending and not writer.dirty


async def test_retention_prunes_only_the_check_over_its_bound(store_rt: Runtime) -> None:
    store_rt.settings.check_result_retention = 10
    states = States()
    writer = ResultWriter(store_rt, states)
    for i in range(40):
        record(writer, states, "busy", float(i))
        if i % 7 == 6:
            await writer.flush()
    record(writer, states, "quiet", 0.0)
    await writer.flush()
    busy = await stored(store_rt, "busy")
    assert 10 <= len(busy) <= 12  # pruned back to 10 once 20% over
    assert [r.at for r in busy] == [float(i) for i in range(40 - len(busy), 40)]  # the newest are kept
    assert len(await stored(store_rt, "quiet")) == 1


async def test_a_failing_chunk_is_kept_not_lost(store_rt: Runtime) -> None:
    states = States()
    writer = ResultWriter(store_rt, states)
    record(writer, states, "a", 1.0)
    writer.add({**result("a", 2.0), "output": None})  # violates NOT NULL: the chunk's transaction fails
    with pytest.raises(IntegrityError):
        await writer.flush()
    assert [r["at"] for r in writer.pending] == [1.0, 2.0] and writer.dirty == {"a"}
    assert await stored(store_rt) == []  # all or nothing
    writer.pending[1]["output"] = "fixed"
    await writer.flush()
    assert [r.at for r in await stored(store_rt)] == [1.0, 2.0]


async def test_a_drain_is_one_transaction_across_its_chunks(store_rt: Runtime) -> None:
    states = States()
    writer = ResultWriter(store_rt, states)
    n = WRITE_CHUNK * 2 + 100
    for i in range(n):
        record(writer, states, f"c{i % 7}", float(i))
    writer.add({**result("c0", float(n)), "output": None})  # fails in the last chunk only
    with pytest.raises(IntegrityError):
        await writer.flush()
    # The chunks stored before the failure were rolled back with it and everything is put back, in order.
    assert await stored(store_rt) == []
    assert [r["at"] for r in writer.pending] == [float(i) for i in range(n + 1)]
    assert writer.dirty == {f"c{i}" for i in range(7)} and writer.stored == 0
    writer.pending[-1]["output"] = "fixed"
    await writer.flush()
    assert [r.at for r in await stored(store_rt)] == [float(i) for i in range(n + 1)]
    assert writer.stored == n + 1


async def test_a_store_that_falls_behind_drops_the_oldest_results_and_counts_them(store_rt: Runtime) -> None:
    states = States()
    writer = ResultWriter(store_rt, states, max_pending=100)
    for i in range(130):
        record(writer, states, f"c{i % 3}", float(i))
    assert len(writer.pending) == 100 and writer.dropped == 30
    await writer.flush()
    rows = await stored(store_rt)
    assert [r.at for r in rows] == [float(i) for i in range(30, 130)]
    # Every check's state row is still its latest, whatever results were dropped.
    assert {n: r.last_check for n, r in (await state_rows(store_rt)).items()} == {"c0": 129.0, "c1": 127.0,
                                                                                   "c2": 128.0}


async def test_a_flush_cancelled_while_its_transaction_runs_stores_the_chunk_once(tmp_path: Path) -> None:
    """Cancelled mid-transaction on SQLite's writer thread: the chunk reached the store, so it is not put back."""
    import threading

    rt = await server.open_runtime(Settings(data=tmp_path / "data", catalog=small_catalog(tmp_path)))
    try:
        inside, release = threading.Event(), threading.Event()
        states = States()

        def state_of(check: str) -> dict[str, Any]:
            # Called on the writer thread inside the transaction, after the chunk was taken.
            inside.set()
            release.wait(10)
            return states(check)

        writer = ResultWriter(rt, state_of)
        for i in range(50):
            record(writer, states, "a", float(i))
        flush = asyncio.create_task(writer.flush())
        assert await asyncio.to_thread(inside.wait, 10)
        flush.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flush
        assert list(writer.pending) == []  # taken by the transaction in flight: not put back
        release.set()
        await writer.flush()  # waits for the write still in flight
        assert [r.at for r in await stored(rt, "a")] == [float(i) for i in range(50)]
        await writer.flush()
        assert len(await stored(rt, "a")) == 50 and writer.stored == 50
    finally:
        await rt.close()


async def test_stop_stores_everything_recorded_before_it(store_rt: Runtime) -> None:
    states = States()
    writer = ResultWriter(store_rt, states)
    writer.start()
    for i in range(600):  # more than two chunks
        record(writer, states, f"c{i % 7}", float(i))
    await writer.stop()
    async with store_rt.read() as s:
        assert (await s.execute(select(func.count()).select_from(CheckResultRow))).scalar_one() == 600


async def test_a_long_drain_gives_way_to_a_recovery_write(tmp_path: Path) -> None:
    """20,000 results are 80 chunks; a write asked for meanwhile runs between two of them."""
    from opsroom.access.identity import SYSTEM
    from opsroom.audit import service as audit

    rt = await server.open_runtime(Settings(data=tmp_path / "data", catalog=small_catalog(tmp_path)))
    try:
        states = States()
        writer = ResultWriter(rt, states)
        for i in range(20_000):
            record(writer, states, f"c{i % 500}", float(i))
        flush = asyncio.create_task(writer.flush())
        while len(writer.pending) == 20_000:  # until the drain has begun taking chunks
            await asyncio.sleep(0.0005)
        left: list[int] = []

        def body(s: Any) -> None:
            left.append(len(writer.pending))
            audit.append_in(s, actor=SYSTEM, action="test.recovery", target="t")

        await rt.transact(body)
        assert left and left[0] > 0, "the recovery's write waited for the whole backlog"
        await flush
        assert writer.stored == 20_000 and len(await stored(rt)) == 20_000
    finally:
        await rt.close()
