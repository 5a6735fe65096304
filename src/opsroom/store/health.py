"""Is the store reachable? A flag per engine that trips on connection errors and a probe that clears it.

Without it, each request during a database outage found out for itself: a pooled connection was
pinged, a new one attempted (up to asyncpg's connect timeout when the host does not answer), and
the failure surfaced as a 500 with a traceback in the log. With it, the first failure trips the
flag, the web layer answers 503 at once for as long as it stays tripped (web/outage.py), and a
probe tries one connection every PROBE_EVERY_S until the database answers again.

The flag is tripped by the engine itself (store/engine.py hooks the connect and error events), so
every caller is covered, background loops included, without a try/except of their own.
"""

from __future__ import annotations

import asyncio
import time
import weakref

import structlog
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine

log = structlog.get_logger(__name__)

PROBE_EVERY_S = 0.5
PROBE_TIMEOUT_S = 3.0  # above the connect timeout (store/engine.py)
RETRY_AFTER_S = 1  # what a client is told to wait; the probe looks twice as often


class StoreHealth:
    """`up` is false from the first connection failure until a probe connects again."""

    def __init__(self, engine: AsyncEngine | None = None) -> None:
        self._engine = weakref.ref(engine) if engine is not None else None
        self.away_since: float | None = None  # time.monotonic() of the trip
        self.outages = 0  # how many times the store went away (for logs and tests)
        self._probe: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self.away_since is None

    @property
    def away_for(self) -> float:
        return 0.0 if self.away_since is None else time.monotonic() - self.away_since

    def trip(self, exc: BaseException | None = None) -> None:
        """The store did not answer. Logged once per outage, by exception type only: the message
        of a driver error may name the host, port, user or database."""
        if self.away_since is not None:
            self._start_probe()  # in case the engine was disposed (and its probe stopped) meanwhile
            return
        self.away_since = time.monotonic()
        self.outages += 1
        log.error("the store is unreachable: requests that need it answer 503 until it is back",
                  error=type(exc).__name__ if exc is not None else None)
        self._start_probe()

    def clear(self) -> None:
        if self.away_since is None:
            return
        log.warning("the store is reachable again", away_s=round(self.away_for, 2))
        self.away_since = None

    def suspect(self) -> None:
        """A connection dropped under a statement. It may have been one that outlived an outage
        already over (a connection held for long, like the lease's): one connect at once tells,
        and trips the flag only if the store is really away."""
        if self.away_since is None:
            self._start_probe()

    def _start_probe(self) -> None:
        if self._engine is None or (self._probe is not None and not self._probe.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # tripped outside a loop (a sync engine): the next connect clears it
            return
        self._probe = loop.create_task(self._probe_until_up(), name="opsroom-store-probe")

    async def _probe_until_up(self) -> None:
        delay = PROBE_EVERY_S if self.away_since is not None else 0.0  # a suspicion is checked at once
        while True:
            await asyncio.sleep(delay)
            delay = PROBE_EVERY_S
            engine = self._engine() if self._engine is not None else None
            if engine is None:
                return
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_S), engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            except Exception as exc:
                self.trip(exc)  # while away a no-op; this task goes on probing
                continue
            self.clear()  # also cleared by the pool's connect event; here for a pooled connection
            return

    def stop(self) -> None:
        """The engine is disposed: no probe outlives it."""
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None


_HEALTH: weakref.WeakKeyDictionary[Engine, StoreHealth] = weakref.WeakKeyDictionary()
_ALWAYS_UP = StoreHealth()  # engines that are not watched (SQLite: a file does not go away)


def watch(engine: AsyncEngine) -> StoreHealth:
    health = _HEALTH.get(engine.sync_engine)
    if health is None:
        health = _HEALTH[engine.sync_engine] = StoreHealth(engine)
    return health


def health_of(engine: AsyncEngine | Engine) -> StoreHealth:
    """The health of `engine`'s store; an unwatched one (SQLite) is always up."""
    sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    return _HEALTH.get(sync, _ALWAYS_UP)
