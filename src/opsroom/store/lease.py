"""One server per store: the lease a server holds while it runs checks, rules and recoveries.

Two servers on one store would both schedule every check, both announce every problem and
both run recoveries, each counting its rule's runs per window in its own memory, so a
limit of 3 would allow 6. Until servers can share that work, a second one refuses to start
and names the first. CLI commands (`opsroom runbook run`, `check run`) take no lease: they
do one thing and exit, and the outbox brings what they did to the running server's rooms.

- SQLite: an exclusive flock on a file beside the database, so the kernel lets go of it
  when the process dies, kill -9 included.
- PostgreSQL: a session advisory lock on a connection held for the server's life; the
  database lets go of it when that connection ends. The lease checks that connection
  every few seconds; if it was lost and another server has taken the lease since, this
  one is told (`on_lost`) and stops scheduling.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import structlog
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from opsroom.store.engine import is_sqlite, make_engine

log = structlog.get_logger(__name__)

# pg advisory locks are per database; one fixed key names "the opsroom server" within it.
ADVISORY_KEY = 0x0B5_5E4F  # "opsroom server"
CHECK_EVERY_S = 5.0


class LeaseHeld(Exception):
    """Another server holds the lease; `holder` says which, as far as the store can tell."""

    def __init__(self, holder: str) -> None:
        super().__init__(f"another opsroom server is already running against this store ({holder})")
        self.holder = holder


def identity() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"


class ServerLease(ABC):
    """Held from start to stop of one server; `acquire` raises LeaseHeld when another has it."""

    @abstractmethod
    async def acquire(self) -> None: ...

    @abstractmethod
    async def release(self) -> None: ...


def lease_for(engine: AsyncEngine, *, on_lost: Callable[[str], None]) -> ServerLease:
    url = engine.url
    if is_sqlite(str(url)):
        if not url.database or url.database == ":memory:":
            return NoLease()  # a store no other process can open
        return FileLease(Path(url.database + ".server-lock"))
    return AdvisoryLease(engine, on_lost=on_lost)


class NoLease(ServerLease):
    async def acquire(self) -> None:
        return None

    async def release(self) -> None:
        return None


class FileLease(ServerLease):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    async def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "holder unknown"
            os.close(fd)
            raise LeaseHeld(holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{identity()} since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n".encode(), 0)
        self._fd = fd

    async def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


class AdvisoryLease(ServerLease):
    def __init__(self, engine: AsyncEngine, *, on_lost: Callable[[str], None]) -> None:
        self.engine = engine
        self.on_lost = on_lost
        self.name = f"opsroom server {identity()}"[:63]  # application_name holds 63 bytes
        self._conn: AsyncConnection | None = None
        self._watch: asyncio.Task[None] | None = None

    async def acquire(self) -> None:
        await self._take()
        self._watch = asyncio.get_running_loop().create_task(self._watchdog(), name="opsroom-lease")

    async def _take(self) -> None:
        conn = await self.engine.connect()
        try:
            # Named, so the server that is refused can say who holds the lease.
            await conn.execute(text("SELECT set_config('application_name', :n, false)"), {"n": self.name})
            got = await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_KEY})
            await conn.commit()  # the lock is per session; no transaction left open beside it
            if not got:
                raise LeaseHeld(await self._holder(conn))
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    @staticmethod
    async def _holder(conn: AsyncConnection) -> str:
        row = (await conn.execute(text(
            "SELECT a.application_name, a.client_addr, a.pid FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objid = :k AND l.objsubid = 1 AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"), {"k": ADVISORY_KEY})).first()
        if row is None:
            return "holder unknown"
        return f"{row[0] or 'unnamed'}, database backend pid {row[2]}" + (f" from {row[1]}" if row[1] else "")

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            if await self._alive():
                continue
            log.error("the store connection holding the server lease was lost; taking it again")
            await self._drop()
            try:
                await self._take()
            except LeaseHeld as held:
                self.on_lost(held.holder)
                return
            except Exception as exc:  # the database is still away: try again next round
                log.error("could not take the server lease again", error=str(exc))

    async def _alive(self) -> bool:
        if self._conn is None:
            return False
        try:
            await self._conn.execute(text("SELECT 1"))
            await self._conn.commit()
        except Exception:
            return False
        return True

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    async def release(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
                await self._conn.commit()
        await self._drop()


async def ensure_free(url: str) -> None:
    """Raise LeaseHeld if a server runs against the store at `url` (a pre-flight for serve and
    demo, so a person gets a plain error before the web server starts, not a startup traceback)."""
    engine = make_engine(url)
    try:
        lease = lease_for(engine, on_lost=lambda _holder: None)
        await lease.acquire()
        await lease.release()
    finally:
        await engine.dispose()


def refusal(exc: BaseException) -> str | None:
    """Why a server cannot start on its store, as a message with a hint, when `exc` says so (the
    store is held by another server, or cannot be reached); None for any other failure."""
    if isinstance(exc, LeaseHeld):
        return (f"{exc}\n  hint: one server per store: stop that one first, or give this one its own "
                "store (--data DIR, or OPSROOM_DATABASE_URL)")
    if isinstance(exc, OSError | SQLAlchemyError):
        return (f"cannot reach the store: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}\n"
                "  hint: check OPSROOM_DATABASE_URL and that the database accepts connections")
    return None


def preflight(url: str) -> str | None:
    """What stops a server from starting on this store, as a message with a hint; None if nothing."""
    try:
        asyncio.run(ensure_free(url))
    except (LeaseHeld, OSError, SQLAlchemyError) as exc:
        return refusal(exc)
    return None
