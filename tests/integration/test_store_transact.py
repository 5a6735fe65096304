"""Runtime.transact: one transaction body, the same semantics on every store and path.

`store_rt` (SQLite and PostgreSQL, connection-bound sessions) takes the run_sync path;
`sqlite_rt` (a runtime as the server opens it) takes the one-hop writer thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from opsroom import server
from opsroom.access.identity import SYSTEM
from opsroom.audit import service as audit
from opsroom.audit.models import AuditRecordRow
from opsroom.config import Settings
from opsroom.rooms import service as rooms
from opsroom.rooms.models import RoomMessageRow
from opsroom.runtime import Runtime
from tests.factories import small_catalog


@pytest.fixture
async def sqlite_rt(tmp_path: Path) -> AsyncIterator[Runtime]:
    rt = await server.open_runtime(Settings(data=tmp_path / "data", catalog=small_catalog(tmp_path)))
    try:
        yield rt
    finally:
        await rt.close()


async def _count(rt: Runtime, model: type[RoomMessageRow] | type[AuditRecordRow]) -> int:
    async with rt.read() as s:
        return int((await s.execute(select(func.count()).select_from(model))).scalar_one())


class Boom(Exception):
    pass


def _append_then_fail(s: Session) -> None:
    audit.append_in(s, actor=SYSTEM, action="test.half", target="t")
    raise Boom("the body failed after its first statement")


async def _commits_what_the_body_wrote_and_returns_its_value(any_rt: Runtime) -> None:
    msg_id, at, stored = await rooms.store_message(any_rt, room="ops", author="opsroom", kind="bot",
                                                   text="hello", reply_to=None)
    assert stored == "hello"
    seq = await any_rt.transact(lambda s: audit.append_in(s, actor=SYSTEM, action="test.one", target="t"))
    async with any_rt.read() as s:
        row = await s.get(RoomMessageRow, msg_id)
    assert row is not None and row.text == "hello" and row.at == at
    assert seq == 1
    assert (await audit.verify(any_rt)).ok


async def _a_failing_body_leaves_nothing_behind(any_rt: Runtime) -> None:
    await audit.append_alone(any_rt, actor=SYSTEM, action="test.before", target="t")
    with pytest.raises(Boom):
        await any_rt.transact(_append_then_fail)
    assert await _count(any_rt, AuditRecordRow) == 1
    # The chain's head was rolled back with the record: the next append links to record 1.
    await audit.append_alone(any_rt, actor=SYSTEM, action="test.after", target="t")
    result = await audit.verify(any_rt)
    assert result.ok and result.records == 2


# Each behaviour on both paths: run_sync (SQLite and PostgreSQL) and the writer thread.
async def test_commits_and_returns_run_sync(store_rt: Runtime) -> None:
    await _commits_what_the_body_wrote_and_returns_its_value(store_rt)


async def test_commits_and_returns_writer_thread(sqlite_rt: Runtime) -> None:
    await _commits_what_the_body_wrote_and_returns_its_value(sqlite_rt)


async def test_failing_body_rolls_back_run_sync(store_rt: Runtime) -> None:
    await _a_failing_body_leaves_nothing_behind(store_rt)


async def test_failing_body_rolls_back_writer_thread(sqlite_rt: Runtime) -> None:
    await _a_failing_body_leaves_nothing_behind(sqlite_rt)


async def test_sqlite_bodies_run_on_the_writer_thread(sqlite_rt: Runtime) -> None:
    loop_thread = threading.get_ident()
    body_thread = await sqlite_rt.transact(lambda _s: threading.get_ident())
    assert body_thread != loop_thread
    # One writer thread for every body: the same thread again.
    assert await sqlite_rt.transact(lambda _s: threading.get_ident()) == body_thread


async def test_a_cancelled_caller_keeps_the_write_lock_until_its_body_ends(sqlite_rt: Runtime) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(s: Session) -> None:
        entered.set()
        release.wait(10)
        audit.append_in(s, actor=SYSTEM, action="test.slow", target="t")

    task = asyncio.create_task(sqlite_rt.transact(slow))
    assert await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    other_done = asyncio.Event()

    async def other_writer() -> None:
        async with sqlite_rt.write() as s:
            await audit.append(s, actor=SYSTEM, action="test.other", target="t")
        other_done.set()

    other = asyncio.create_task(other_writer())
    await asyncio.sleep(0.2)
    assert not task.done(), "the cancelled caller returned while its body was still running"
    assert not other_done.is_set(), "another writer got the lock while a body was in its transaction"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await other
    # The body that had started ran to its end and committed; then the other writer appended.
    async with sqlite_rt.read() as s:
        actions = list((await s.execute(select(AuditRecordRow.action).order_by(AuditRecordRow.seq))).scalars())
    assert actions == ["test.slow", "test.other"]
    assert (await audit.verify(sqlite_rt)).ok


async def test_writer_thread_and_async_writes_interleave_into_one_chain(sqlite_rt: Runtime) -> None:
    async def via_async(i: int) -> None:
        async with sqlite_rt.write() as s:
            await audit.append(s, actor=SYSTEM, action="test.async", target=f"t:{i}")

    async def via_thread(i: int) -> None:
        await audit.append_alone(sqlite_rt, actor=SYSTEM, action="test.thread", target=f"t:{i}")

    await asyncio.gather(*(f(i) for i in range(40) for f in (via_async, via_thread)))
    result = await audit.verify(sqlite_rt)
    assert result.ok and result.records == 80


# --- in_writer: several transactions in one hop --------------------------------------


async def _each_transaction_stands_alone(any_rt: Runtime) -> None:
    def two(begin: Any, _yield_now: Any) -> None:
        with begin() as s:
            audit.append_in(s, actor=SYSTEM, action="test.first", target="t")
        with begin() as s:
            _append_then_fail(s)

    with pytest.raises(Boom):
        await any_rt.in_writer(two)
    async with any_rt.read() as s:
        actions = list((await s.execute(select(AuditRecordRow.action))).scalars())
    assert actions == ["test.first"]  # committed before the second failed; the second left nothing
    assert (await audit.verify(any_rt)).ok


async def test_in_writer_transactions_stand_alone_run_sync(store_rt: Runtime) -> None:
    await _each_transaction_stands_alone(store_rt)


async def test_in_writer_transactions_stand_alone_writer_thread(sqlite_rt: Runtime) -> None:
    await _each_transaction_stands_alone(sqlite_rt)


async def test_yield_now_tells_a_batch_that_another_writer_waits(sqlite_rt: Runtime) -> None:
    """A long batch on the writer thread learns that a writer queued, so it can give way."""
    first_done, queued = threading.Event(), threading.Event()
    seen: list[bool] = []

    def batch(begin: Any, yield_now: Any) -> int:
        done = 0
        for i in range(200):
            with begin() as s:
                audit.append_in(s, actor=SYSTEM, action="test.batch", target=f"t:{i}")
            done += 1
            seen.append(yield_now())
            if seen[-1]:
                return done
            if i == 0:
                first_done.set()
                assert queued.wait(10)
        return done

    task = asyncio.create_task(sqlite_rt.in_writer(batch))
    assert await asyncio.to_thread(first_done.wait, 10)  # nobody else has asked yet
    other = asyncio.create_task(audit.append_alone(sqlite_rt, actor=SYSTEM, action="test.other", target="t"))
    while not sqlite_rt._write_waiters:
        await asyncio.sleep(0.001)
    queued.set()
    done = await task
    await other
    assert seen[0] is False and seen[-1] is True and done < 200
    async with sqlite_rt.read() as s:
        actions = list((await s.execute(select(AuditRecordRow.action).order_by(AuditRecordRow.seq))).scalars())
    assert actions == ["test.batch"] * done + ["test.other"]
    assert (await audit.verify(sqlite_rt)).ok
