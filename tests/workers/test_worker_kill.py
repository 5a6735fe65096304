"""kill -9 a worker mid-step: interrupted, announced once, never re-run, its lock freed (issue 14, acceptance 3)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

from opsroom.runbooks import processes
from opsroom.runbooks import service as runbooks
from tests.workers.harness import ADMIN, Site, execution, finished_events, run, running_server, steps, wait_worker


async def _until(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _marker_lines(site: Site) -> list[str]:
    marker = site.root / "marker"
    return marker.read_text().splitlines() if marker.exists() else []


async def test_a_worker_killed_mid_step_leaves_its_execution_interrupted_once_and_not_rerun(site: Site) -> None:
    async with running_server(site) as rt:
        first = site.start_worker("prod", name="a")
        node_a = await wait_worker(rt, first, site, name="a")
        row = await run(rt, "slow")

        async def spawned() -> bool:
            ran = await steps(rt, row.id)
            return bool(ran and ran[0].pgid) and _marker_lines(site) == ["started"]

        await _until(spawned, 30, "the step to start on worker a")
        orphan = (await steps(rt, row.id))[0]
        try:
            os.kill(first.pid, signal.SIGKILL)  # the worker only: its step has a session of its own
            first.wait(timeout=10)

            async def interrupted() -> bool:
                return (await execution(rt, row.id)).status == "interrupted"

            await _until(interrupted, 20, "the execution to become interrupted")
            done = await execution(rt, row.id)
            assert done.error is not None and node_a in done.error and "not re-run" in done.error, done.error
            assert (await steps(rt, row.id))[0].status == "interrupted"

            # A second worker gets the redelivered task (late ack: it was never acked): it must not run it.
            second = site.start_worker("prod", name="b")
            await wait_worker(rt, second, site, name="b")

            async def redelivered() -> bool:
                return "not run again" in site.log("b") or "not re-run" in site.log("b")

            await _until(redelivered, 20, "worker b to be handed the redelivered task")
            await asyncio.sleep(1.0)
            assert _marker_lines(site) == ["started"], "the step ran a second time"
            # Worker b, on the same host, killed the step's group that outlived worker a.
            assert not processes.kill_if_ours(orphan.pgid, orphan.pg_started), "the orphaned step still runs"

            await rt.bus.drain()
            assert [e.status for e in finished_events(rt, row.id)] == ["interrupted"], "announced other than once"

            # Its lock is free: the same runbook runs again (on worker b), then is cancelled.
            again = await run(rt, "slow")
            assert again.id != row.id

            async def started_again() -> bool:
                return _marker_lines(site) == ["started", "started"]

            await _until(started_again, 30, "the second run to start")
            await runbooks.cancel_execution(rt, actor=ADMIN, execution_id=again.id)

            async def cancelled() -> bool:  # the worker reads the cancel flag on its next poll
                return (await execution(rt, again.id)).status == "cancelled"

            await _until(cancelled, 30, "the second run to be cancelled")
            assert len(finished_events(rt, row.id)) == 1
        finally:
            with contextlib.suppress(Exception):
                processes.kill_if_ours(orphan.pgid, orphan.pg_started)

