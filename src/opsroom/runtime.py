"""The running opsroom: settings, catalog, store, bus and the engines, in one object.

Service-layer functions take it as their first argument; interfaces never reach
past it into the store.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from opsroom.bus import Bus
from opsroom.catalog.catalog import Catalog
from opsroom.config import Settings
from opsroom.rooms.live import LiveRooms
from opsroom.store.engine import is_sqlite, make_engine, make_sessionmaker, make_sqlite_writer, make_sync_sessionmaker

if TYPE_CHECKING:
    from opsroom.access.links import LinkCache
    from opsroom.access.throttle import LoginThrottle
    from opsroom.alerts.book import AlertBook
    from opsroom.audit.refusals import RefusalAudit
    from opsroom.automation.rules import RulesEngine
    from opsroom.chat.hub import RoomHub
    from opsroom.checks.monitor import Monitor
    from opsroom.cluster.membership import Membership
    from opsroom.cluster.shards import Shards
    from opsroom.outbox import OutboxRelay
    from opsroom.runbooks.executor import Executor
    from opsroom.store.lease import ServerLease

T = TypeVar("T")
Begin = Callable[[], AbstractContextManager[Session]]


def _one_transaction(body: Callable[[Session], T], begin: Begin, _yield_now: Callable[[], bool]) -> T:
    with begin() as session:
        return body(session)


@contextmanager
def _nested(session: Session) -> Iterator[Session]:
    with session.begin():
        yield session


def _never() -> bool:
    return False


class Runtime:
    def __init__(self, *, settings: Settings, catalog: Catalog, engine: AsyncEngine | None = None,
                 sessions: async_sessionmaker[AsyncSession] | None = None) -> None:
        self.settings = settings
        # A plain attribute (read on every check result); a reload replaces it whole, never edits it.
        self.catalog = catalog
        self.catalog_loaded_at = time.time()
        self._hashed: tuple[Catalog, str] | None = None
        self.engine = engine or make_engine(settings.db_url)
        # Tests pass sessions bound to one connection in an outer transaction, rolled back after.
        self.sessions: async_sessionmaker[AsyncSession] = sessions or make_sessionmaker(self.engine)
        self.bus = Bus()
        # Identifies this server process in execution rows (crash recovery).
        self.node_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._sqlite = is_sqlite(str(self.engine.url))
        # SQLite has one writer; queueing here is cheaper than spinning on busy_timeout.
        self._write_lock = asyncio.Lock() if self._sqlite else None
        self._write_waiters = 0
        # SQLite's own sessions (not a test's connection-bound ones) get a one-hop writer thread.
        self._writer = make_sqlite_writer(str(self.engine.url)) if self._sqlite and sessions is None else None
        self._writer_sessions = make_sync_sessionmaker(self._writer) if self._writer is not None else None
        self._writer_thread = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="opsroom-writer")
                               if self._writer is not None else None)
        # The engines a server starts (server.start); a CLI process has none of them. Services
        # never call them: they publish events the engines listen to (docs/architecture.md).
        self.monitor: Monitor | None = None
        self.executor: Executor | None = None
        self.rooms: RoomHub | None = None
        self.rules: RulesEngine | None = None
        self.alerts: AlertBook | None = None
        self.outbox: OutboxRelay | None = None
        self.lease: ServerLease | None = None  # one server per SQLite store
        self.membership: Membership | None = None  # this node's heartbeat in the cluster
        self.shards: Shards | None = None  # the shards of checks this server runs (PostgreSQL)
        # Whether an executor here starts the runs it is told are ready (ExecutionReady): a run
        # that needs no approval is then stored running, owned by this server.
        self.runs_here = False
        # The rooms as the hub runs them here, for services to read (rooms/live.py).
        self.live_rooms = LiveRooms()
        # The server's own tasks: stopped by their event between passes, never cancelled mid-write.
        self.housekeeping: asyncio.Task[None] | None = None
        self.housekeeping_stop: asyncio.Event | None = None
        self.hangup: asyncio.Task[None] | None = None  # SIGHUP reloads the catalog
        self.lease_lost: asyncio.Task[None] | None = None
        # One catalog reload at a time; who runs it, for the 409 a second one gets.
        self.catalog_reload_lock = asyncio.Lock()
        self.catalog_reload_by: str | None = None
        # State the services keep per process (made on first use).
        self.login_throttle: LoginThrottle | None = None
        self.link_throttle: LoginThrottle | None = None
        self.link_cache: LinkCache | None = None
        self.alert_refusals: RefusalAudit | None = None
        # The wall clock link codes expire by; tests move it.
        self.link_clock: Callable[[], float] = time.time

    @property
    def catalog_hash(self) -> str:
        """The running catalog's version, computed once per catalog (start-up and reload prime it:
        hashing 20,000 checks must not fall on a run request's path)."""
        hashed = self._hashed
        if hashed is None or hashed[0] is not self.catalog:
            hashed = self._hashed = (self.catalog, self.catalog.content_hash)
        return hashed[1]

    def use_catalog(self, catalog: Catalog, *, content_hash: str | None = None) -> None:
        """Make `catalog` the running one (a reload); its hash may come already computed."""
        self._hashed = (catalog, content_hash if content_hash is not None else catalog.content_hash)
        self.catalog = catalog
        self.catalog_loaded_at = time.time()

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        """SQLite's write lock, counting who waits for it (a long batch on the writer thread gives way)."""
        if self._write_lock is None:
            yield
            return
        self._write_waiters += 1
        try:
            await self._write_lock.acquire()
        finally:
            self._write_waiters -= 1
        try:
            yield
        finally:
            self._write_lock.release()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A transaction that commits on success and rolls back on error."""
        async with self._locked(), self.sessions() as session, session.begin():
            yield session

    async def transact(self, body: Callable[[Session], T]) -> T:
        """Run `body` in one write transaction: commit on return, roll back on error.

        For the hot writes (a rule's run request, a stored room message). The body is plain
        synchronous ORM or Core code, so the same function serves both stores (see in_writer).
        """
        return await self.in_writer(functools.partial(_one_transaction, body))

    async def in_writer(self, fn: Callable[[Begin, Callable[[], bool]], T]) -> T:
        """Run `fn(begin, yield_now)` where the store's writes run, in one hop.

        `begin()` opens a transaction (commit on leaving, roll back on error); `yield_now()` turns
        true once another writer waits, so a batch of transactions (stored check results) gives way
        after its current one instead of holding the store. On SQLite fn runs on the one writer
        thread under the write lock: one hop, where aiosqlite hops to its thread and back for every
        statement. On PostgreSQL and on a test's connection-bound sessions it runs inside run_sync,
        and yield_now() is always false (no single writer to queue behind). fn must not touch the
        event loop; publish events after it returns.
        """
        if self._writer_thread is None or self._writer_sessions is None:
            async with self._locked(), self.sessions() as session:
                return await session.run_sync(lambda s: fn(functools.partial(_nested, s), _never))
        sessions = self._writer_sessions

        @contextmanager
        def begin() -> Iterator[Session]:
            with sessions() as session, session.begin():
                yield session

        def yield_now() -> bool:
            return self._write_waiters > 0

        async with self._locked():
            done = asyncio.get_running_loop().run_in_executor(self._writer_thread, fn, begin, yield_now)
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
