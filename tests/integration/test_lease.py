"""One server per SQLite store: a second server is refused and told who runs; `serve` and `demo`
refuse before touching anything. PostgreSQL takes no such lease: a second server starts and
shares the checks (tests/cluster/test_shards.py has the rest)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import text

from opsroom import server
from opsroom.config import Settings
from opsroom.runtime import Runtime
from opsroom.store import lease
from opsroom.store.lease import FileLease, LeaseHeld
from opsroom.store.migrate import SchemaAhead
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


async def _until(condition: Callable[[], bool]) -> bool:
    for _ in range(100):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "sqlite" else request.getfixturevalue("pg_own_url")


async def test_a_second_server_is_refused_until_the_first_stops(tmp_path: Path) -> None:
    settings = _settings(tmp_path, None)
    first = await _started(settings)
    try:
        with pytest.raises(LeaseHeld) as refused:
            await _started(settings)
        assert ME in refused.value.holder  # names the server that runs
        # Refused before anything started: the first server's rooms and checks are untouched.
        assert first.monitor is not None and first.rooms is not None
    finally:
        await server.stop(first)
    second = await _started(settings)  # the lease was given back on stop
    await server.stop(second)


async def test_a_second_server_on_postgresql_starts_and_shares_the_checks(tmp_path: Path, pg_own_url: str) -> None:
    # PostgreSQL has no single-server lease: both run, and the checks are shared out (docs/cluster.md).
    settings = _settings(tmp_path, pg_own_url).model_copy(update={"cluster_heartbeat": 0.2, "cluster_dead_after": 0.6})
    first = await _started(settings, schedule=True)
    try:
        await lease.ensure_free(settings.db_url)  # nothing to refuse a second server with
        second = await _started(settings, schedule=True)
        try:
            assert first.shards is not None and second.shards is not None
            assert await _until(lambda: bool(first.shards and second.shards and second.shards.held
                                             and len(first.shards.held) + len(second.shards.held) == 64
                                             and not set(first.shards.held) & set(second.shards.held)))
        finally:
            await server.stop(second)
        assert await _until(lambda: first.shards is not None and len(first.shards.held) == 64)
    finally:
        await server.stop(first)


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
