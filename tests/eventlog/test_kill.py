"""Acceptance 4 for the log: a server killed with SIGKILL between a change's commit and its
announcement loses nothing; a consumer started afterwards delivers the event exactly once.

A real `opsroom serve` process with the test-only hook OPSROOM_TEST_HANG_BEFORE_PUBLISH (bus.py)
freezes right before it publishes the event named, after the transaction that wrote it committed;
the test kills it there.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from opsroom.bus import HANG_BEFORE_PUBLISH_ENV
from opsroom.catalog.catalog import Catalog
from opsroom.config import Settings
from opsroom.eventlog.consumer import Consumer, PostCommit
from opsroom.eventlog.models import EventRow
from opsroom.events import Event
from opsroom.runtime import Runtime
from tests.e2e.harness import cli, start_server
from tests.eventlog.conftest import EFFECTS
from tests.factories import small_catalog

ANNOUNCER = "test-announcer"


def _runtime(data: Path, url: str | None) -> Runtime:
    extra = {"database_url": url} if url else {}
    return Runtime(settings=Settings(data=data, demo=False, **extra), catalog=Catalog())


def _delivering(name: str):  # type: ignore[no-untyped-def]
    def handle(s: Session, events: list[Event]) -> PostCommit | None:
        for ev in events:
            s.execute(text("INSERT INTO test_effects (uid, consumer) VALUES (:u, :c)"), {"u": ev.uid, "c": name})
        return None
    return handle


async def _delivered(rt: Runtime) -> list[str]:
    async with rt.read() as s:
        return [r[0] for r in await s.execute(text("SELECT uid FROM test_effects"))]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "sqlite" else str(request.getfixturevalue("pg_own_url"))


async def test_a_kill_between_commit_and_publish_loses_nothing_and_delivers_once(tmp_path: Path,
                                                                                 store_url: str | None) -> None:
    catalog = small_catalog(tmp_path)
    data = tmp_path / "data"
    env = {"OPSROOM_DATABASE_URL": store_url} if store_url else {}
    made = cli("migrate", "--data", str(data), env=env)  # a new store, as a server would make it
    assert made.returncode == 0, made.stderr
    # The consumer exists before the change (as a server's consumers do): its position is stored.
    rt = _runtime(data, store_url)
    try:
        async with rt.write() as s:
            await s.execute(text(EFFECTS))
        await Consumer(rt, name=ANNOUNCER, handle=_delivering(ANNOUNCER), singleton=False).ensure_position()
    finally:
        await rt.close()

    server = start_server(tmp_path, ["serve", "--catalog", str(catalog)], data=data,
                          env_extra={HANG_BEFORE_PUBLISH_ENV: "execution.started", **env})
    try:
        token = cli("token", "create", "you", "--data", str(data), "--catalog", str(catalog), env=env)
        assert token.returncode == 0, token.stderr
        with httpx.Client(base_url=server.base + "/api/v1", timeout=5,
                          headers={"Authorization": f"Bearer {token.stdout.strip()}"}) as api:
            try:
                api.post("/runbooks/count/run", json={"params": {"n": "42"}})
            except httpx.TimeoutException:
                pass  # the process froze before it answered: the commit is what counts
        deadline = time.monotonic() + 20
        while "frozen before publishing" not in server.output():
            assert server.proc.poll() is None, server.output()
            assert time.monotonic() < deadline, f"the hook never froze the server:\n{server.output()}"
            time.sleep(0.05)
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
    finally:
        server.stop(signal.SIGKILL)

    # The restarted side: the event is in the log, and the consumer delivers it exactly once.
    rt = _runtime(data, store_url)
    try:
        async with rt.read() as s:
            rows = list((await s.execute(select(EventRow).where(EventRow.type == "execution.started"))).scalars())
        assert len(rows) == 1 and rows[0].payload["runbook"] == "count", rows
        first = Consumer(rt, name=ANNOUNCER, handle=_delivering(ANNOUNCER), singleton=False)
        handled, deadline = 0, time.monotonic() + 20
        while (n := await first.run_once()) or not handled:
            handled += n
            # On PostgreSQL the dead server's backends end when its sockets close: a moment later.
            assert handled < 100 and time.monotonic() < deadline, "the event was never delivered"
            if not n:
                await asyncio.sleep(0.05)
        assert rows[0].uid in await _delivered(rt)
        again = Consumer(rt, name=ANNOUNCER, handle=_delivering(ANNOUNCER), singleton=False)
        assert await again.run_once() == 0, "a restarted consumer delivered an event a second time"
        assert (await _delivered(rt)).count(rows[0].uid) == 1
    finally:
        await rt.close()
