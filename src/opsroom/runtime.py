"""The running opsroom: settings, catalog, store, bus and the engines, in one object.

Service-layer functions take it as their first argument; interfaces never reach
past it into the store.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from opsroom.bus import Bus
from opsroom.catalog.catalog import Catalog
from opsroom.config import Settings
from opsroom.store.engine import is_sqlite, make_engine, make_sessionmaker

if TYPE_CHECKING:
    from opsroom.chat.hub import RoomHub
    from opsroom.checks.monitor import Monitor
    from opsroom.runbooks.executor import Executor


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

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            await session.connection(execution_options={"opsroom_read": True})
            # Closing (not rolling back) ends the transaction but keeps loaded rows readable.
            yield session

    async def close(self) -> None:
        await self.engine.dispose()
