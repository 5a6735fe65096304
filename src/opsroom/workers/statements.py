"""One statement, autocommitted, on a connection kept open: the store's part of a step's way to its spawn.

On PostgreSQL a pooled checkout pings its connection first, and SQLAlchemy's asyncpg ping is
three round trips (BEGIN, an empty query, ROLLBACK); a transaction adds BEGIN and COMMIT. On a
loaded host each round trip costs a wake-up of two processes, a millisecond or more
(bench/dispatch_overhead.py --worker). The server's queueing of a step and the worker's claim
are each one statement, so on a connection kept open in autocommit each is one round trip,
and still commits before anything depends on it.

The kept connection is not pinged. A statement that fails on it (the database restarted, the
connection dropped, no answer within STATEMENT_TIMEOUT_S) is tried once more on a fresh pooled
connection, with its ping. Whether the failed one committed is then unknown, so the caller
passes `recover`: a read of the mark only its own statement writes (the worker's node id and
the time it took the task; the server's random token). Row locks order the two attempts: the
second waits for a first one still in flight, then sees what it did.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from sqlalchemy import Executable, Row
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from opsroom.runtime import Runtime

log = structlog.get_logger(__name__)
Params = dict[str, Any]
STATEMENT_TIMEOUT_S = 2.0  # the statements here take milliseconds; past this the connection is suspect


def usable(rt: Runtime) -> bool:
    """On the runtime's own PostgreSQL engine; a test's connection-bound sessions and SQLite's one
    writer keep their transactions."""
    return rt.engine.dialect.name == "postgresql" and rt.sessions.kw.get("bind") is rt.engine


class KeptConnection:
    """One autocommit connection out of the runtime's pool, for the statements on the dispatch path.

    One statement at a time uses it; another that comes meanwhile (a server queueing several
    steps at once) takes a pooled connection instead of waiting.
    """

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._conn: AsyncConnection | None = None
        self._busy = asyncio.Lock()

    async def _checkout(self) -> AsyncConnection:
        conn = await self.rt.engine.connect()  # the pool's ping, once
        try:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _once(self, conn: AsyncConnection, stmt: Executable, params: Params) -> Row[Any] | None:
        async with asyncio.timeout(STATEMENT_TIMEOUT_S):
            row = (await conn.execute(stmt, params)).one_or_none()
        await conn.commit()  # SQLAlchemy's own transaction; autocommit sends nothing
        return row

    async def open(self) -> None:
        """Check the connection out ahead of the first statement (its ping off that statement's path)."""
        async with self._busy:
            if self._conn is None:
                self._conn = await self._checkout()

    async def run(self, stmt: Executable, params: Params, *,
                  recover: tuple[Executable, Params] | None = None) -> Row[Any] | None:
        """The statement's one row (or None), committed. `recover` finds the first attempt's row
        when a retry finds nothing (or the unique key it wrote)."""
        if self._busy.locked():
            return await self._pooled(stmt, params)
        async with self._busy:
            conn, fresh = self._conn, self._conn is None
            if conn is None:
                conn = self._conn = await self._checkout()
            try:
                return await self._once(conn, stmt, params)
            except BaseException as exc:
                self._conn = None  # its state is unknown: the next statement checks out another
                await _discard(conn)
                lost = isinstance(exc, (OSError, TimeoutError)) or (isinstance(exc, DBAPIError)
                                                                    and exc.connection_invalidated)
                if fresh or not lost:
                    raise
                log.warning("the kept store connection failed: the statement is tried again on a new one",
                            error=type(exc).__name__)
        try:
            row = await self._pooled(stmt, params)
        except IntegrityError:
            if recover is None:
                raise
            row = None
        if row is None and recover is not None:
            row = await self._pooled(*recover)
        return row

    async def _pooled(self, stmt: Executable, params: Params) -> Row[Any] | None:
        conn = await self._checkout()
        try:
            return await self._once(conn, stmt, params)
        finally:
            await conn.close()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await _discard(conn, invalidate=False)


async def _discard(conn: AsyncConnection, *, invalidate: bool = True) -> None:
    """Give the connection up; one whose state is unknown is closed, never returned to the pool."""
    try:
        if invalidate:
            await conn.invalidate()
        await conn.close()
    except Exception as exc:
        log.warning("could not close a store connection", error=type(exc).__name__)
