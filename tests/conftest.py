"""Fixtures: real SQLite and PostgreSQL stores, a running opsroom in-process, a fake chat room."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from opsroom.catalog.loader import load_catalog
from opsroom.checks.probes import ProbeContext
from opsroom.config import Settings
from opsroom.runtime import Runtime
from opsroom.store.engine import make_engine
from opsroom.store.migrate import upgrade
from tests.factories import PASSWORDS

if TYPE_CHECKING:
    from opsroom.chat.fake import FakeAdapter

PG_ADMIN = os.environ.get("OPSROOM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def pg_admin(sql: str) -> None:
    """Run one statement as the PostgreSQL admin (CREATE/DROP DATABASE, pg_terminate_backend)."""

    async def admin() -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    # Fixtures may be requested from inside a running event loop: run it on a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, admin()).result()


@contextlib.contextmanager
def _pg_database() -> Iterator[str]:
    name = f"opsroom_test_{uuid.uuid4().hex[:8]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    with _pg_database() as url:
        yield url


@pytest.fixture
def pg_own_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own, for whole servers that commit for real."""
    with _pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_rt(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Runtime]:
    """A runtime on each real store; each test runs inside a transaction that is rolled back."""
    from tests.factories import small_catalog

    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    engine = make_engine(url)
    await upgrade(engine)
    settings = Settings(data=tmp_path / "data", database_url=url, demo=False)
    catalog = load_catalog(small_catalog(tmp_path))
    async with engine.connect() as conn:
        outer = await conn.begin()
        sessions = async_sessionmaker(bind=conn, expire_on_commit=False, join_transaction_mode="create_savepoint",
                                      class_=AsyncSession)
        rt = Runtime(settings=settings, catalog=catalog, engine=engine, sessions=sessions)
        rt._write_lock = None  # one connection already serialises the test's writes
        try:
            yield rt
        finally:
            await outer.rollback()
    await engine.dispose()


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Runtime, FakeAdapter]]:
    """A whole opsroom in-process on a fresh SQLite store with the fake chat adapter (no schedule)."""
    from opsroom import server
    from opsroom.chat.fake import FakeAdapter
    from tests.factories import small_catalog

    settings = Settings(data=tmp_path / "data", catalog=small_catalog(tmp_path))
    rt = await server.open_runtime(settings)
    fake = FakeAdapter()
    await server.start(rt, adapters=[fake], schedule=False, passwords=PASSWORDS)
    try:
        yield rt, fake
    finally:
        await server.stop(rt)


@pytest.fixture
async def ctx() -> AsyncIterator[ProbeContext]:
    """What probes share (HTTP session, deadlines, connect watcher), closed after the test."""
    c = ProbeContext()
    try:
        yield c
    finally:
        await c.close()
