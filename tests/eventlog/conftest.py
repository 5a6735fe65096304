"""Runtimes on real stores that commit for real (the event log's order is about commits)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from opsroom.catalog.catalog import Catalog
from opsroom.config import Settings
from opsroom.runtime import Runtime
from opsroom.store.engine import make_engine
from opsroom.store.migrate import upgrade

EFFECTS = "CREATE TABLE test_effects (uid VARCHAR(36) NOT NULL, consumer VARCHAR(64) NOT NULL)"

MakeRt = Callable[[], Awaitable[Runtime]]


@pytest.fixture(params=["sqlite", "postgresql"])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("pg_own_url"))


@pytest.fixture
def pg_log_url(pg_own_url: str) -> str:
    return pg_own_url


async def runtimes(url: str, tmp_path: Path) -> AsyncIterator[MakeRt]:
    made: list[Runtime] = []
    engine = make_engine(url)
    await upgrade(engine)
    async with engine.begin() as conn:
        await conn.execute(text(EFFECTS))
    await engine.dispose()

    async def make() -> Runtime:
        settings = Settings(data=tmp_path / "data", database_url=url, demo=False)
        rt = Runtime(settings=settings, catalog=Catalog())
        made.append(rt)
        return rt

    try:
        yield make
    finally:
        for rt in made:
            await rt.bus.drain()
            await rt.close()


@pytest.fixture
async def make_rt(log_url: str, tmp_path: Path) -> AsyncIterator[MakeRt]:
    """Runtimes (one per server) on a fresh migrated store of each kind, with a test_effects table."""
    async for make in runtimes(log_url, tmp_path):
        yield make


@pytest.fixture
async def make_pg_rt(pg_log_url: str, tmp_path: Path) -> AsyncIterator[MakeRt]:
    async for make in runtimes(pg_log_url, tmp_path):
        yield make
