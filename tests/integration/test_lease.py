"""One server per store, on both stores: a second server is refused and told who runs; a server
that lost its lease to another stops checking; `serve` and `demo` refuse before touching anything."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import text

from opsroom import server
from opsroom.config import Settings
from opsroom.runtime import Runtime
from opsroom.store import lease
from opsroom.store.lease import AdvisoryLease, FileLease, LeaseHeld
from opsroom.store.migrate import SchemaAhead
from tests.conftest import pg_admin
from tests.e2e.harness import cli
from tests.factories import PASSWORDS, free_port, small_catalog

ME = f"pid {os.getpid()}"


def _settings(tmp: Path, url: str | None) -> Settings:
    return Settings(data=tmp / "data", catalog=small_catalog(tmp), database_url=url)


async def _started(settings: Settings, *, schedule: bool = False) -> Runtime:
    rt = await server.open_runtime(settings)
    try:
        await server.start(rt, schedule=schedule, passwords=PASSWORDS)
    except BaseException:
        await rt.close()
        raise
    return rt


async def _cut_lease_connection(rt: Runtime) -> AdvisoryLease:
    """End the backend of the server's lease connection, as a network blip or failover would."""
    holder = rt.lease
    assert isinstance(holder, AdvisoryLease) and holder._conn is not None
    # Found through pg_locks from another connection: the lease connection itself is the
    # watchdog's, and a query of ours on it collides with its SELECT 1 ("another operation is
    # in progress").
    async with rt.engine.connect() as other:
        pid = await other.scalar(text(
            "SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.objid = :k "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
            {"k": lease.ADVISORY_KEY})
    assert pid is not None
    await asyncio.to_thread(pg_admin, f"SELECT pg_terminate_backend({int(pid)}, 5000)")  # waits for its end
    return holder


async def _until(condition: Callable[[], bool]) -> bool:
    for _ in range(100):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "sqlite" else request.getfixturevalue("pg_own_url")


async def test_a_second_server_is_refused_until_the_first_stops(tmp_path: Path, store_url: str | None) -> None:
    settings = _settings(tmp_path, store_url)
    first = await _started(settings)
    try:
        with pytest.raises(LeaseHeld) as refused:
            await _started(settings)
        assert ME in refused.value.holder  # names the server that runs, whichever the store
        # Refused before anything started: the first server's rooms and checks are untouched.
        assert first.monitor is not None and first.rooms is not None
    finally:
        await server.stop(first)
    second = await _started(settings)  # the lease was given back on stop
    await server.stop(second)


@pytest.fixture
async def pg_server(tmp_path: Path, pg_own_url: str,
                    monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Settings, Runtime]]:
    """A scheduling server on PostgreSQL whose lease is checked every 50 ms."""
    monkeypatch.setattr(lease, "CHECK_EVERY_S", 0.05)
    settings = _settings(tmp_path, pg_own_url)
    rt = await _started(settings, schedule=True)
    try:
        assert rt.monitor is not None and rt.monitor.scheduler.running
        yield settings, rt
    finally:
        await server.stop(rt)


async def test_a_server_that_lost_its_lease_to_another_stops_checking(pg_server: tuple[Settings, Runtime]) -> None:
    settings, first = pg_server
    # Its lease connection dies (a network blip, a database failover) and another server
    # starts in the gap: the first must stop running checks and recoveries.
    first.lease._watch.cancel()  # paused, so the newcomer surely wins the gap tested here
    holder = await _cut_lease_connection(first)
    second = await _started(settings)
    try:
        holder._watch = asyncio.get_running_loop().create_task(holder._watchdog())
        assert await _until(lambda: first.monitor is not None and not first.monitor.scheduler.running)
        assert "server lease lost to opsroom server" in first.rules.suspended
    finally:
        await server.stop(second)


async def test_a_server_whose_lease_connection_blipped_takes_it_again(pg_server: tuple[Settings, Runtime]) -> None:
    settings, first = pg_server
    lost = first.lease._conn
    holder = await _cut_lease_connection(first)
    # The watchdog alone uses the lease connection: only watch it change.
    assert await _until(lambda: holder._conn is not None and holder._conn is not lost)
    assert first.monitor is not None and first.monitor.scheduler.running
    with pytest.raises(LeaseHeld):  # held again: a newcomer is still refused
        await _started(settings)


async def test_a_server_that_fails_to_start_gives_the_lease_back(tmp_path: Path, store_url: str | None) -> None:
    settings = _settings(tmp_path, store_url)
    rt = await server.open_runtime(settings)
    async with rt.engine.begin() as conn:  # as a newer opsroom would leave it
        await conn.execute(text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
    await rt.close()
    rt = await server.open_runtime(settings, migrate=False)
    with pytest.raises(SchemaAhead):
        await server.start(rt, schedule=False, passwords=PASSWORDS, migrate=True)
    assert rt.lease is None
    await lease.ensure_free(settings.db_url)  # raises LeaseHeld if the failed server kept it


def test_serve_and_demo_refuse_a_store_in_use_without_touching_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "keep.txt").write_text("yesterday's incident")
    held = FileLease(data / "opsroom.db.server-lock")
    asyncio.run(held.acquire())
    try:
        serve = cli("serve", "--catalog", str(small_catalog(tmp_path)), "--data", str(data), "--port", "1")
        demo = cli("demo", "--data", str(data), "--port", "1")
    finally:
        asyncio.run(held.release())
    assert serve.returncode == 2, serve.stdout + serve.stderr
    assert "another opsroom server is already running against this store" in serve.stderr
    assert ME in serve.stderr and "hint: one server per store" in serve.stderr
    assert demo.returncode == 2, demo.stdout + demo.stderr
    assert ME in demo.stderr and "hint: one server per store" in demo.stderr
    for result in (serve, demo):
        assert "Traceback" not in result.stdout + result.stderr
    assert (data / "keep.txt").read_text() == "yesterday's incident"  # the demo did not wipe it


def test_a_server_that_loses_the_start_race_says_why_without_a_traceback(tmp_path: Path) -> None:
    # Two servers started in the same second both pass the CLI's preflight; the one that then
    # loses the lease inside the web server's startup must still say why in a line and exit 2.
    data = tmp_path / "data"
    data.mkdir()
    held = FileLease(data / "opsroom.db.server-lock")
    asyncio.run(held.acquire())
    racing = ("import sys; from opsroom.store import lease; lease.preflight = lambda url: None; "
              "from opsroom.cli import app; app(sys.argv[1:], prog_name='opsroom')")
    try:
        result = subprocess.run([sys.executable, "-c", racing, "serve", "--catalog", str(small_catalog(tmp_path)),
                                 "--data", str(data), "--port", str(free_port())],
                                capture_output=True, text=True, timeout=60)
    finally:
        asyncio.run(held.release())
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "another opsroom server is already running against this store" in result.stderr, output
    assert ME in result.stderr and "hint: one server per store" in result.stderr
    assert "Traceback" not in output
    # Refused before it migrated: a newer server must not change the schema under the one that runs.
    db = data / "opsroom.db"
    if db.exists():
        with closing(sqlite3.connect(db)) as conn:
            assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []


def test_serve_names_an_unreachable_database(tmp_path: Path) -> None:
    result = cli("serve", "--catalog", str(small_catalog(tmp_path)), "--data", str(tmp_path / "data"),
                 env={"OPSROOM_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert result.returncode == 2
    assert "cannot reach the store" in result.stderr and "OPSROOM_DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr
