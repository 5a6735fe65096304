"""What an attacker tries against a worker: a task forged on the queue (its own argv, a guessed
step, another environment's step, junk), and a step that floods its output (docs/workers.md).

The runner is the real one on a real store; the last test goes through a real queue to a real
`opsroom worker`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from opsroom import server
from opsroom.cluster.membership import Membership
from opsroom.config import Settings
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime
from opsroom.workers import queues
from opsroom.workers.models import WorkerOutputRow, WorkerStepRow
from opsroom.workers.runner import MAX_OUTPUT, StepRunner
from tests.workers.harness import CATALOG, Site, amqp_url, execution, rabbit_vhost, run, running_server, wait_worker

FLOOD = CATALOG.replace("rooms:\n", """\
  - name: flood
    environment: prod
    approval: none
    steps:
      - command:
        - python3
        - -c
        - "import sys; w = sys.stdout.write; w('x' * 200000 + chr(10)); [print('z' * 100) for _ in range(2000)]"
rooms:
""")


@pytest.fixture
async def rt(tmp_path: Path) -> AsyncIterator[Runtime]:
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "c.yaml").write_text(FLOOD)
    runtime = await server.open_runtime(Settings(data=tmp_path / "data", catalog=tmp_path / "catalog"))
    try:
        yield runtime
    finally:
        await runtime.close()


async def _queued_step(rt: Runtime, runbook: str, *, environment: str = "prod") -> tuple[int, int, str]:
    """An execution running `runbook` and its first step queued as the server queues it."""
    now = time.time()
    async with rt.write() as s:
        eid = (await s.execute(insert(ExecutionRow).values(
            runbook=runbook, runbook_hash=rt.catalog.runbooks[runbook].content_hash, lock_key=f"k{now}",
            params={"who": "world"}, environment=environment, status="running", summary=runbook,
            requested_by="t", door="api", created_at=now, started_at=now, output="",
            owner="server-x"))).inserted_primary_key[0]  # type: ignore[attr-defined]
        sid = (await s.execute(insert(WorkerStepRow).values(
            execution_id=eid, step=0, environment=environment, token="a" * 32, status="queued",
            queued_at=now))).inserted_primary_key[0]  # type: ignore[attr-defined]
    return int(eid), int(sid), "a" * 32


def _runner(rt: Runtime, environment: str = "prod") -> StepRunner:
    return StepRunner(rt, environment=environment, membership=Membership(rt, kind="worker", environment=environment))


async def _step(rt: Runtime, sid: int) -> WorkerStepRow:
    async with rt.read() as s:
        return await s.get_one(WorkerStepRow, sid)


async def test_forged_tasks_run_nothing(rt: Runtime, tmp_path: Path) -> None:
    eid, sid, token = await _queued_step(rt, "hello")
    runner = _runner(rt)
    good: dict[str, Any] = {"step_id": sid, "token": token, "execution_id": eid, "index": 0, "environment": "prod"}
    pwned = tmp_path / "pwned"
    forged: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((), {**good, "argv": ["sh", "-c", f"touch {pwned}"]}),  # an argv of the attacker's: no such field
        ((["sh", "-c", f"touch {pwned}"],), {}),  # positional arguments
        ((), {**good, "token": "b" * 32}),  # a guessed token
        ((), {**good, "step_id": str(sid)}),  # wrong types
        ((), {**good, "token": "a" * 5000}),  # oversized
        ((), {**good, "index": 1}),  # another step of the execution than the one queued
        ((), {**good, "execution_id": eid + 1}),
        ((), {**good, "environment": "test"}),  # a task for another environment
        ((), {**good, "step_id": sid + 999}),
    ]
    for args, kwargs in forged:
        assert await runner.handle(args, kwargs) == "refused", kwargs
        assert (await _step(rt, sid)).status == "queued", f"a forged task touched the step: {kwargs}"
    assert not pwned.exists()
    # A worker of another environment refuses even the genuine task.
    assert await _runner(rt, "test").handle((), good) == "refused"
    assert (await _step(rt, sid)).status == "queued"
    # The genuine task runs once; the same task again (a redelivery) never runs a second time.
    assert await runner.handle((), good) == "ran"
    assert (await _step(rt, sid)).status == "succeeded"
    assert await runner.handle((), good) == "duplicate"


async def test_a_step_queued_for_prod_of_a_test_execution_is_refused(rt: Runtime) -> None:
    """A row claiming prod for an execution of another environment (a tampered store row) does not run."""
    eid, sid, token = await _queued_step(rt, "hello", environment="prod")
    async with rt.write() as s:
        row = await s.get_one(ExecutionRow, eid)
        row.environment = "test"
    task = {"step_id": sid, "token": token, "execution_id": eid, "index": 0, "environment": "prod"}
    assert await _runner(rt).handle((), task) == "refused"
    step = await _step(rt, sid)
    assert step.status == "failed" and "environment test" in str(step.error)


async def test_a_flooding_step_is_bounded(rt: Runtime) -> None:
    eid, sid, token = await _queued_step(rt, "flood")
    task = {"step_id": sid, "token": token, "execution_id": eid, "index": 0, "environment": "prod"}
    assert await _runner(rt).handle((), task) == "ran"
    async with rt.read() as s:
        text = "".join((await s.execute(select(WorkerOutputRow.text).where(WorkerOutputRow.step_id == sid)
                                        .order_by(WorkerOutputRow.id))).scalars())
    assert "[output line too long: cut]" in text
    assert "x" * 1000 not in text
    assert len(text) <= MAX_OUTPUT + 200 and "the rest is not kept" in text
    assert (await _step(rt, sid)).status == "succeeded"


async def test_a_forged_message_on_the_real_queue_is_refused_by_a_real_worker(tmp_path: Path, pg_own_url: str) -> None:
    with rabbit_vhost() as vhost:
        site = Site(root=tmp_path, database_url=pg_own_url, brokers={"prod": amqp_url(vhost)})
        try:
            async with running_server(site) as rt:
                await wait_worker(rt, site.start_worker("prod"), site)
                pwned = tmp_path / "pwned"
                app = queues.make_app(amqp_url(vhost))
                await asyncio.to_thread(queues.publish, app, environment="prod",
                                        kwargs={"argv": ["sh", "-c", f"touch {pwned}"], "environment": "prod"})
                app.close()
                # The worker goes on: a genuine run after the forged message succeeds.
                row = await run(rt, "hello")
                assert rt.executor is not None
                await asyncio.wait_for(rt.executor.wait(row.id), 60)
                assert (await execution(rt, row.id)).status == "succeeded"
                assert not pwned.exists()
                assert "task refused" in site.log() and "malformed task" in site.log()
        finally:
            site.stop_workers()
