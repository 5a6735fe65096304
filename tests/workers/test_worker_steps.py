"""Runbook steps of an environment with a broker run on its worker, never in the server (issue 14, point 3)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from opsroom import server
from opsroom.config import Settings
from opsroom.runbooks import service as runbooks
from tests.workers.harness import (
    ADMIN,
    CATALOG,
    Site,
    execution,
    finished_events,
    output_events,
    run,
    running_server,
    steps,
    wait_worker,
)


async def test_a_prod_runbook_runs_on_the_prod_worker_and_streams_its_output_in_order(site: Site) -> None:
    async with running_server(site) as rt:
        proc = site.start_worker("prod")
        node = await wait_worker(rt, proc, site)
        row = await run(rt, "hello", {"who": "there"})
        assert rt.executor is not None
        await asyncio.wait_for(rt.executor.wait(row.id), 60)
        done = await execution(rt, row.id)
        assert done.status == "succeeded", (done.error, done.output, site.log())
        # Every line, in order, in the stored output and in the events the rooms and streams read.
        expected = ["one there", "two", "three", "four"]
        lines = [line for line in done.output.splitlines() if not line.startswith("$ ")]
        assert lines == expected, done.output
        streamed = "".join(e.text for e in output_events(rt, row.id))
        assert [line for line in streamed.splitlines() if not line.startswith("$ ")] == expected
        assert "$ sh -c echo one there" in done.output  # the argv the worker rebuilt, shown as in-process
        ran = await steps(rt, row.id)
        assert [(s.step, s.status, s.worker, s.exit_code) for s in ran] == [(0, "succeeded", node, 0),
                                                                             (1, "succeeded", node, 0)]
        assert all(s.pgid and s.pgid != os.getpid() for s in ran)
        assert rt.executor.spawned_at.get(row.id) is None, "the server spawned a process itself"
        (finished,) = finished_events(rt, row.id)
        assert finished.status == "succeeded"


async def test_a_failing_step_on_a_worker_fails_the_execution_with_its_exit_code(site: Site) -> None:
    async with running_server(site) as rt:
        await wait_worker(rt, site.start_worker("prod"), site)
        row = await run(rt, "fails")
        assert rt.executor is not None
        await asyncio.wait_for(rt.executor.wait(row.id), 60)
        done = await execution(rt, row.id)
        assert done.status == "failed" and done.error is not None and "exit code 3" in done.error
        assert "bad" in done.output


async def test_cancel_of_a_step_on_a_worker_stops_its_process_group(site: Site) -> None:
    async with running_server(site) as rt:
        await wait_worker(rt, site.start_worker("prod"), site)
        row = await run(rt, "slow")
        for _ in range(200):
            ran = await steps(rt, row.id)
            if ran and ran[0].pgid:
                break
            await asyncio.sleep(0.05)
        pgid = ran[0].pgid
        assert pgid and os.path.exists(f"/proc/{pgid}")
        await runbooks.cancel_execution(rt, actor=ADMIN, execution_id=row.id)
        done = await execution(rt, row.id)
        assert done.status == "cancelled", (done.status, done.error, done.output)
        for _ in range(50):
            if not Path(f"/proc/{pgid}").exists():
                break
            await asyncio.sleep(0.1)
        assert not Path(f"/proc/{pgid}").exists(), "the step's process outlived its cancel"
        assert (await steps(rt, row.id))[0].status == "cancelled"


async def test_no_broker_runs_in_process_as_before(tmp_path: Path, pg_own_url: str) -> None:
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "catalog.yaml").write_text(CATALOG)
    rt = await server.open_runtime(Settings(data=tmp_path / "d", catalog=tmp_path / "catalog",
                                            database_url=pg_own_url))
    await server.start(rt, schedule=False)
    try:
        row = await run(rt, "hello")
        assert rt.executor is not None
        await asyncio.wait_for(rt.executor.wait(row.id), 60)
        done = await execution(rt, row.id)
        assert done.status == "succeeded" and "one world" in done.output
        assert row.id in rt.executor.spawned_at, "no broker: the server runs the step itself"
        assert await steps(rt, row.id) == []
    finally:
        await server.stop(rt)
        await rt.close()
