"""One server per SQLite store: the lease a server holds while it runs checks, rules and recoveries.

Two servers on one SQLite file would both schedule every check and both run recoveries, so a
second one refuses to start and names the first. CLI commands (`opsroom runbook run`, `check
run`) take no lease: they do one thing and exit, and the outbox brings what they did to the
running server's rooms.

- SQLite: an exclusive flock on a file beside the database, so the kernel lets go of it
  when the process dies, kill -9 included.
- PostgreSQL: no lease. Any number of servers share the store: checks are shared out in
  shards (cluster/shards.py), rule budgets are counted in the store (docs/cluster.md).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from opsroom.store.engine import is_sqlite, make_engine


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
    return NoLease()  # PostgreSQL: several servers share the work (docs/cluster.md)


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
