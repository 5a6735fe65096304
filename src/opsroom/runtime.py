"""The running opsroom: settings, catalog, store, bus and the engines, in one object.

Service-layer functions take it as their first argument; interfaces never reach
past it into the store.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from opsroom.bus import Bus
from opsroom.catalog.catalog import Catalog
from opsroom.config import Settings
from opsroom.store.engine import is_sqlite, make_engine, make_sessionmaker, make_sqlite_writer, make_sync_sessionmaker

if TYPE_CHECKING:
    from opsroom.chat.hub import RoomHub
    from opsroom.checks.monitor import Monitor
    from opsroom.runbooks.executor import Executor

T = TypeVar("T")


class Runtime:
    def __init__(self, *, settings: Settings, catalog: Catalog, engine: AsyncEngine | None = None,
                 sessions: async_sessionmaker[AsyncSession] | None = None) -> None:
        self.settings = settings
        self.catalog = catalog
        self.engine = engine or make_engine(settings.db_url)
        # Tests pass sessions bound to one connection in an outer transaction, rolled back after.
        self.sessions: async_sessionmaker[AsyncSession] = sessions or make_sessionmaker(self.engine)
        self.bus = Bus()
        # Identifies this server process in execution rows (crash recovery).
        self.node_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._sqlite = is_sqlite(str(self.engine.url))
        # SQLite has one writer; queueing here is cheaper than spinning on busy_timeout.
        self._write_lock = asyncio.Lock() if self._sqlite else None
        # SQLite's own sessions (not a test's connection-bound ones) get a one-hop writer thread.
        self._writer = make_sqlite_writer(str(self.engine.url)) if self._sqlite and sessions is None else None
        self._writer_sessions = make_sync_sessionmaker(self._writer) if self._writer is not None else None
        self._writer_thread = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="opsroom-writer")
                               if self._writer is not None else None)
        self.monitor: Monitor | None = None
        self.executor: Executor | None = None
        self.rooms: RoomHub | None = None
        self.extras: dict[str, Any] = {}

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A transaction that commits on success and rolls back on error."""
        if self._write_lock is not None:
            async with self._write_lock, self.sessions() as session, session.begin():
                yield session
        else:
            async with self.sessions() as session, session.begin():
                yield session

    async def transact(self, body: Callable[[Session], T]) -> T:
        """Run `body` in one write transaction: commit on return, roll back on error.

        For the hot writes (a rule's run request, a stored room message). The body is plain
        synchronous ORM code, so the same function serves both stores: on SQLite it runs in
        one hop on the writer thread (under the write lock, like every other write); on
        PostgreSQL and on a test's connection-bound sessions it runs inside write() via
        run_sync. The body must not touch the event loop; publish events after it returns.
        """
        if self._writer_thread is None or self._writer_sessions is None:
            async with self.write() as session:
                return await session.run_sync(body)
        assert self._write_lock is not None
        sessions = self._writer_sessions

        def run() -> T:
            with sessions() as session, session.begin():
                return body(session)

        async with self._write_lock:
            done = asyncio.get_running_loop().run_in_executor(self._writer_thread, run)
            try:
                return await asyncio.shield(done)
            except asyncio.CancelledError:
                # Hold the lock until the thread's transaction has ended either way.
                await asyncio.wait([done])
                raise

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            await session.connection(execution_options={"opsroom_read": True})
            # Closing (not rolling back) ends the transaction but keeps loaded rows readable.
            yield session

    async def close(self) -> None:
        if self._writer_thread is not None:
            self._writer_thread.shutdown(wait=True)
        if self._writer is not None:
            self._writer.dispose()
        await self.engine.dispose()
