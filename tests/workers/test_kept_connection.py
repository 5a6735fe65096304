"""The dispatch path's statements on PostgreSQL (workers/statements.py): the server queues a step and
the worker claims it in one autocommitted statement each, on a connection kept open and not pinged.

What must hold: a kept connection that the database dropped (a restart, an idle connection cut)
costs a retry, never a lost step or a second run; a first attempt whose answer was lost, but which
committed, is found again by the mark only it wrote; the claim still commits before the spawn.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, text, update
from sqlalchemy.exc import IntegrityError

from opsroom import server
from opsroom.cluster.membership import Membership
from opsroom.config import Settings
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime
from opsroom.workers import statements
from opsroom.workers.dispatch import _ADD_STEP_RETURNING, _FIND_STEP
from opsroom.workers.models import WorkerOutputRow, WorkerStepRow
from opsroom.workers.runner import StepRunner
from tests.workers.harness import CATALOG


@pytest.fixture
async def rt(tmp_path: Path, pg_own_url: str) -> AsyncIterator[Runtime]:
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "c.yaml").write_text(CATALOG)
    runtime = await server.open_runtime(Settings(data=tmp_path / "data", catalog=tmp_path / "catalog",
                                                 database_url=pg_own_url))
    try:
        yield runtime
    finally:
        await runtime.close()


async def _queued(rt: Runtime, token: str = "a" * 32) -> dict[str, Any]:
    """An execution of `hello` running, its first step queued as the server queues it: the task."""
    now = time.time()
    async with rt.write() as s:
        eid = (await s.execute(insert(ExecutionRow).values(
            runbook="hello", runbook_hash=rt.catalog.runbooks["hello"].content_hash, lock_key=f"k{now}",
            params={"who": "kept"}, environment="prod", status="running", summary="hello", requested_by="t",
            door="api", created_at=now, started_at=now, output="", owner="server-x"))).inserted_primary_key[0]  # type: ignore[attr-defined]
        sid = (await s.execute(insert(WorkerStepRow).values(
            execution_id=eid, step=0, environment="prod", token=token, status="queued",
            queued_at=now))).inserted_primary_key[0]  # type: ignore[attr-defined]
    return {"step_id": int(sid), "token": token, "execution_id": int(eid), "index": 0, "environment": "prod"}


async def _cut_connections(rt: Runtime) -> int:
    """What a database restart does to this store's open connections (the kept one among them)."""
    async with rt.engine.connect() as conn:
        cut = (await conn.execute(text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"))).scalar_one()
        await conn.commit()
    return int(cut)


async def _step(rt: Runtime, sid: int) -> WorkerStepRow:
    async with rt.read() as s:
        return await s.get_one(WorkerStepRow, sid)


def _runner(rt: Runtime) -> StepRunner:
    return StepRunner(rt, environment="prod", membership=Membership(rt, kind="worker", environment="prod"))


async def test_the_claim_survives_a_dropped_kept_connection_and_runs_once(rt: Runtime) -> None:
    runner = _runner(rt)
    await runner.open()
    try:
        assert runner._kept is not None  # on PostgreSQL the claim is one statement on a kept connection
        task = await _queued(rt)
        assert await _cut_connections(rt) >= 1
        assert await runner.handle((), task) == "ran"
        step = await _step(rt, task["step_id"])
        for _ in range(100):  # the spawn is stored after it, off its path
            if step.spawned_at is not None:
                break
            await asyncio.sleep(0.02)
            step = await _step(rt, task["step_id"])
        assert step.status == "succeeded" and step.worker == runner.node_id and step.spawned_at is not None
        assert step.started_at is not None and step.started_at <= step.spawned_at
        async with rt.read() as s:
            out = "".join((await s.execute(select(WorkerOutputRow.text).where(
                WorkerOutputRow.step_id == task["step_id"]))).scalars())
        assert "one kept" in out and "three" in out
        # The same task again (a redelivery), on the kept connection the retry made: not run again.
        assert await runner.handle((), task) == "duplicate"
        assert (await _step(rt, task["step_id"])).status == "succeeded"
    finally:
        await runner.close()


async def test_a_claim_that_committed_but_lost_its_answer_is_found_by_its_mark(rt: Runtime) -> None:
    """The first attempt committed (here: the same UPDATE made beforehand), then its connection was
    lost: the retry finds the step running, and only this worker's mark with this task's receive
    time makes it this claim; any other claim of the same step is not."""
    runner = _runner(rt)
    await runner.open()
    try:
        task = await _queued(rt)
        received = time.time()
        async with rt.write() as s:
            await s.execute(update(WorkerStepRow).where(WorkerStepRow.id == task["step_id"]).values(
                status="running", worker=runner.node_id, started_at=received))
        await _cut_connections(rt)
        claimed = await runner._claim(task, received=received)
        assert isinstance(claimed, tuple)
        row, execution = claimed
        assert (row.id, row.step, execution.id, execution.params) == (task["step_id"], 0, task["execution_id"],
                                                                       {"who": "kept"})
        # The same step claimed at another time (another delivery of the task) is not this claim.
        await runner.open()  # kept again (the retry used a pooled one), then cut again
        await _cut_connections(rt)
        assert await runner._claim(task, received=received + 1) is None
    finally:
        await runner.close()


async def test_queueing_a_step_again_after_a_lost_answer_finds_the_row_by_its_token(rt: Runtime) -> None:
    """The server's insert (Dispatcher.run_step's statements) on its kept connection: a retry that meets
    its own committed row (the execution's step is unique) returns that row's id, found by its token."""
    kept = statements.KeptConnection(rt)
    await kept.open()
    try:
        task = await _queued(rt, token="b" * 32)  # as if the first attempt had committed it
        values = {"execution_id": task["execution_id"], "step": 0, "environment": "prod", "token": "b" * 32,
                  "status": "queued", "queued_at": time.time()}
        await _cut_connections(rt)
        row = await kept.run(_ADD_STEP_RETURNING, values, recover=(_FIND_STEP, values))
        assert row is not None and row[0] == task["step_id"]
        # Without a lost connection, a genuine duplicate is the error it always was.
        with pytest.raises(IntegrityError, match="uq_worker_steps_execution_step"):
            await kept.run(_ADD_STEP_RETURNING, values, recover=(_FIND_STEP, values))
        # Another token is not this insert's row: nothing is returned, and nothing was added.
        await kept.open()
        await _cut_connections(rt)
        assert await kept.run(_ADD_STEP_RETURNING, {**values, "token": "c" * 32},
                              recover=(_FIND_STEP, {**values, "token": "c" * 32})) is None
        async with rt.read() as s:
            assert (await s.execute(select(WorkerStepRow.id).where(
                WorkerStepRow.execution_id == task["execution_id"]))).scalars().all() == [task["step_id"]]
    finally:
        await kept.close()


async def test_the_claim_is_committed_before_the_spawn(rt: Runtime) -> None:
    """Autocommit is not a shortcut around durability: another connection sees the claim as soon
    as the claim returns, before anything is spawned."""
    runner = _runner(rt)
    await runner.open()
    try:
        task = await _queued(rt)
        claimed = await runner._claim(task, received=time.time())
        assert isinstance(claimed, tuple)
        step = await _step(rt, task["step_id"])  # a pooled connection of its own
        assert step.status == "running" and step.worker == runner.node_id
        other = _runner(rt)
        try:
            assert await other._claim(task, received=time.time()) is None  # a second worker claims nothing
        finally:
            await other.close()
    finally:
        await runner.close()
