"""The event log keeps what a consumer has not read, and what is younger than the retention."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, insert, select

from opsroom.eventlog import retention
from opsroom.eventlog.models import ConsumerPositionRow, EventRow
from opsroom.runtime import Runtime

DAY = 86400.0


async def _events(rt: Runtime, ats: list[float]) -> list[int]:
    async with rt.write() as s:
        for i, at in enumerate(ats):
            await s.execute(insert(EventRow).values(uid=f"u-{at}-{i}", type="check.state_changed", at=at,
                                                    origin="n", correlation_id=None, txid=0, payload={}))
    async with rt.read() as s:
        return list((await s.execute(select(EventRow.id).order_by(EventRow.id))).scalars())


async def _left(rt: Runtime) -> list[int]:
    async with rt.read() as s:
        return list((await s.execute(select(EventRow.id).order_by(EventRow.id))).scalars())


async def test_old_events_every_consumer_passed_are_pruned(store_rt: Runtime) -> None:
    now = time.time()
    ids = await _events(store_rt, [now - 40 * DAY, now - 35 * DAY, now - 31 * DAY, now - 1 * DAY])
    # The announcer has read up to the second event only: the third, though old, stays.
    async with store_rt.write() as s:
        await s.execute(insert(ConsumerPositionRow).values(consumer="announcer", position=ids[1], txid=0,
                                                           updated_at=now, holder="n"))
        # A consumer that has not moved for longer than the retention holds nothing back.
        await s.execute(insert(ConsumerPositionRow).values(consumer="gone", position=0, txid=0,
                                                           updated_at=now - 60 * DAY, holder=None))
    assert await retention.prune(store_rt, keep_s=30 * DAY, now=now) == 2
    assert await _left(store_rt) == ids[2:]
    assert await retention.prune(store_rt, keep_s=30 * DAY, now=now) == 0


async def test_pruning_goes_in_chunks(store_rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time()
    await _events(store_rt, [now - 40 * DAY] * 7)
    monkeypatch.setattr(retention, "CHUNK", 3)
    assert await retention.prune(store_rt, keep_s=30 * DAY, now=now) == 7
    async with store_rt.read() as s:
        assert (await s.execute(select(func.count()).select_from(EventRow))).scalar() == 0
