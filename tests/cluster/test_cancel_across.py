"""A cancel asked on one server stops a run another server runs (issue 14 point 6): the request is
in the event log with its audit record, the running server's relay brings it to its executor, and
the asking server answers with the run's end, brought back the same way."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psutil

from opsroom import server
from opsroom.access import service as access
from opsroom.config import Settings
from opsroom.runbooks import executor
from opsroom.runbooks import service as runbooks
from opsroom.runtime import Runtime
from tests.factories import PASSWORDS, small_catalog

# Writes its pid, then sleeps: it ends on the SIGTERM of a cancel.
SLEEPER = "import os,sys,time; open(sys.argv[1]+'.tmp','w').write(str(os.getpid())); " \
          "os.rename(sys.argv[1]+'.tmp',sys.argv[1]); time.sleep(120)"


@asynccontextmanager
async def _two_servers(tmp: Path, url: str) -> AsyncIterator[list[Runtime]]:
    runbook = {"name": "sleeper", "approval": "none", "environment": "test",
               "steps": [{"command": [sys.executable, "-c", SLEEPER, str(tmp / "pid")]}]}
    path = small_catalog(tmp, runbooks=[runbook], aliases=[])
    settings = Settings(data=tmp / "data", catalog=path, database_url=url, cluster_heartbeat=0.5,
                        cluster_dead_after=3.0)
    rts: list[Runtime] = []
    try:
        for _ in range(2):
            rt = await server.open_runtime(settings)
            await server.start(rt, schedule=False, passwords=PASSWORDS)
            rts.append(rt)
        yield rts
    finally:
        for rt in rts:
            await server.stop(rt)


async def _pid(path: Path) -> int:
    async with asyncio.timeout(10):
        while not path.exists():
            await asyncio.sleep(0.02)
    return int(path.read_text())


async def test_a_cancel_on_one_server_stops_the_run_of_another(tmp_path: Path, pg_own_url: str) -> None:
    async with _two_servers(tmp_path, pg_own_url) as (runs_it, asks):
        you = await access.actor_by_name(runs_it, name="you", door="api")
        row = await runbooks.request_run(runs_it, actor=you, runbook="sleeper", params={})
        assert row.status == "running" and row.owner == runs_it.node_id
        pid = await _pid(tmp_path / "pid")
        started = time.monotonic()
        done = await runbooks.cancel_execution(asks, actor=you, execution_id=row.id)
        took = time.monotonic() - started
        assert done.status == "cancelled" and done.error == "cancelled by you", (done.status, done.error)
        # The relays read every 0.2 s: there and back, and a SIGTERM, well inside the grace.
        assert took < executor.CANCEL_GRACE_S, took
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
