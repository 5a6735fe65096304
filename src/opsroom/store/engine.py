"""Engine and session factory for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.util import await_only

from opsroom.store import health as store_health

# PostgreSQL connections are bounded in time, so a database that is away is noticed in seconds:
# asyncpg waits 60 s for a connection by default (a host that drops packets, a postmaster that
# hangs), and SQLAlchemy's pool 30 s for a free connection. A refused connection (a killed
# database) fails at once either way; these bound the cases that would otherwise hang.
CONNECT_TIMEOUT_S = 2.0  # a loopback connect takes milliseconds; 2 s leaves room on a loaded host
POOL_TIMEOUT_S = 5.0
# The pre-ping of a pooled connection has no timeout of its own: against a database that hangs
# (a frozen host, packets dropped) a request waited for ever. Bounded, a silent connection is
# dropped and replaced, and the replacement's connect timeout trips the store's health flag.
PING_TIMEOUT_S = 1.0  # a ping that times out costs a reconnect, not an outage


def normalize_url(url: str) -> str:
    """Accept the URLs people paste (postgresql://, sqlite:///) and pick the async driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+asyncpg://" + url[len("postgresql://"):]
    if url.startswith("sqlite:///"):
        url = "sqlite+aiosqlite:///" + url[len("sqlite:///"):]
    return url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    url = normalize_url(url)
    # Statement parameters (password hashes, sealed secrets, typed text) stay out of the
    # exceptions SQLAlchemy raises, and so out of tracebacks and logs.
    kwargs.setdefault("hide_parameters", True)
    if is_sqlite(url):
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)
        _sqlite_setup(engine.sync_engine)
        return engine
    connect_args = {"timeout": CONNECT_TIMEOUT_S, **kwargs.pop("connect_args", {})}
    kwargs.setdefault("pool_timeout", POOL_TIMEOUT_S)
    engine = create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True, connect_args=connect_args,
                                 **kwargs)
    _watch_health(engine)
    _bound_ping(engine)
    return engine


def _bound_ping(engine: AsyncEngine) -> None:
    dialect = engine.sync_engine.dialect
    unbounded = dialect.do_ping

    def do_ping(dbapi_connection: Any) -> bool:
        raw = getattr(dbapi_connection, "_connection", None)  # SQLAlchemy's asyncpg adapter
        if raw is None or not hasattr(dbapi_connection, "_async_ping"):
            return unbounded(dbapi_connection)
        try:
            # One round trip: the adapter's own ping wraps it in BEGIN/ROLLBACK (for pgbouncer's
            # transaction mode), three round trips before every pooled use on the dispatch path.
            await_only(asyncio.wait_for(raw.fetchrow(";"), PING_TIMEOUT_S))
        except TimeoutError:
            # Closed, it reads as a disconnect: the pool invalidates it and connects anew.
            dbapi_connection._connection.terminate()
            raise dialect.loaded_dbapi.InterfaceError("connection is closed: no answer to the pre-ping") from None
        except Exception as error:
            dbapi_connection._handle_exception(error)  # the adapter's own translation to DBAPI errors
        return True

    dialect.do_ping = do_ping  # type: ignore[method-assign]


def _watch_health(engine: AsyncEngine) -> None:
    """Trip the store's health flag (store/health.py) on a failed connect or a dropped connection,
    and clear it when a connection is made again: every caller, web request or background loop,
    reports an outage without code of its own."""
    health = store_health.watch(engine)
    sync = engine.sync_engine

    @event.listens_for(sync, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as exc:
            health.trip(exc)
            raise

    @event.listens_for(sync.pool, "connect")
    def _connected(_dbapi_conn: Any, _record: Any) -> None:
        health.clear()

    @event.listens_for(sync, "handle_error")
    def _error(context: Any) -> None:
        # A dead pooled connection found by the pre-ping is replaced by a new one, which trips the
        # flag if it fails too. A connection dropped under a statement may have outlived an outage
        # that is over already: the flag trips only if a new connection fails as well.
        if context.is_disconnect and not context.is_pre_ping:
            health.suspect()

    @event.listens_for(sync, "engine_disposed")
    def _disposed(_engine: Any) -> None:
        health.stop()


def make_sqlite_writer(url: str) -> Engine:
    """A plain (synchronous) engine on the same SQLite file, for the one writer thread.

    aiosqlite hops to its thread and back for every cursor, statement, fetch and commit:
    a short write transaction costs 15-20 hops, most of a hard CRITICAL's dispatch time.
    Runtime.transact runs a whole transaction body in one hop on this engine instead.
    One connection is enough: the runtime's write lock admits one writer at a time.
    """
    url = "sqlite:///" + normalize_url(url).partition(":///")[2]
    engine = create_engine(url, hide_parameters=True, connect_args={"timeout": 30, "check_same_thread": False},
                           pool_size=1, max_overflow=0)
    _sqlite_setup(engine)
    return engine


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN IMMEDIATE below is ours:
        # writers (the server, a CLI) then queue on busy_timeout instead of failing
        # with "database is locked" when a read transaction tries to upgrade.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Readers stay deferred so they never queue behind a writer (WAL lets them read).
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("opsroom_read") else "BEGIN IMMEDIATE")


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def make_sync_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
