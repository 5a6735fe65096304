"""Who is in the cluster: every server and worker heartbeats its row in `cluster_nodes`.

A node is live while its heartbeat is younger than `dead_after` by the store's clock; a clean
stop marks it stopped at once, so the others need not wait. Live servers are the set that checks
are shared among (cluster/shards.py); a node that is no longer live has its executions and chat
connections recovered by the others, on any host (no pid checks across machines).

Defaults: a heartbeat every second, dead after three missed: a dead server's checks move within
two intervals of a 2 s check, and failover stays well under the 10 s the issue allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from opsroom import __version__
from opsroom.cluster.clock import db_now
from opsroom.cluster.models import NodeRow
from opsroom.runtime import Runtime
from opsroom.ticks import ticks

log = structlog.get_logger(__name__)

HEARTBEAT_S = 1.0
DEAD_AFTER_S = 3.0

Listener = Callable[[list[str]], Awaitable[None]]


class Membership:
    """This process's row in the cluster, and its view of the others."""

    def __init__(self, rt: Runtime, *, kind: str = "server", environment: str | None = None,
                 every: float = HEARTBEAT_S, dead_after: float = DEAD_AFTER_S,
                 info: Callable[[], dict[str, Any]] | None = None) -> None:
        self.rt, self.kind, self.environment = rt, kind, environment
        self.every, self.dead_after = every, dead_after
        self.node_id = rt.node_id
        self._info = info or dict
        self._listeners: list[Listener] = []
        self._servers: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._dialect = rt.engine.dialect.name
        self.beats = 0  # heartbeats written, for metrics and tests

    def on_change(self, listener: Listener) -> None:
        """Call `listener(live server ids)` whenever the set of live servers changes."""
        self._listeners.append(listener)

    @property
    def servers(self) -> list[str]:
        """Live servers as of the last heartbeat, sorted (every node sorts the same way)."""
        return list(self._servers)

    async def start(self) -> None:
        await self.beat()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"opsroom-heartbeat-{self.kind}")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

        def body(s: Session) -> None:
            s.execute(update(NodeRow).where(NodeRow.node_id == self.node_id)
                      .values(stopped_at=db_now(self._dialect), heartbeat_at=0.0))

        try:
            await self.rt.transact(body)
        except Exception:
            log.warning("could not mark this node stopped; the others will see its heartbeat age out")

    async def _loop(self) -> None:
        async for _ in ticks(self._stopping, self.every):
            try:
                await self.beat()
            except Exception as exc:  # the store is away: the next beat tries again
                log.warning("heartbeat failed", error=type(exc).__name__)

    async def beat(self) -> None:
        """Write this node's heartbeat and read who else is live, in one transaction."""
        info = self._info()
        host, pid = socket.gethostname(), os.getpid()

        def body(s: Session) -> list[str]:
            now = db_now(self._dialect)
            values = {"node_id": self.node_id, "kind": self.kind, "host": host[:255], "pid": pid,
                      "environment": self.environment, "version": __version__[:32], "started_at": now,
                      "heartbeat_at": now, "stopped_at": None, "info": info}
            ins = (pg_insert if self._dialect == "postgresql" else sqlite_insert)(NodeRow).values(**values)
            s.execute(ins.on_conflict_do_update(index_elements=[NodeRow.node_id],
                                                set_={"heartbeat_at": now, "info": info, "stopped_at": None}))
            rows = s.execute(select(NodeRow.node_id).where(
                NodeRow.kind == "server", NodeRow.stopped_at.is_(None),
                NodeRow.heartbeat_at >= now - self.dead_after).order_by(NodeRow.node_id)).all()
            return [r[0] for r in rows]

        servers = await self.rt.transact(body)
        self.beats += 1
        if servers != self._servers:
            self._servers = servers
            for listener in self._listeners:
                try:
                    await listener(servers)
                except Exception:
                    log.exception("a membership listener failed")

    async def nodes(self) -> list[tuple[NodeRow, float]]:
        """Every node row with its heartbeat age in seconds (by the store's clock), newest first."""
        def body(s: Session) -> list[tuple[NodeRow, float]]:
            rows = s.execute(select(NodeRow, db_now(self._dialect) - NodeRow.heartbeat_at)
                             .order_by(NodeRow.kind, NodeRow.node_id)).all()
            return [(r[0], float(r[1])) for r in rows]

        return await self.rt.transact(body)

    async def dead(self, node_ids: list[str]) -> set[str]:
        """Which of `node_ids` are not live (stopped, heartbeat too old, or never seen)."""
        if not node_ids:
            return set()

        def body(s: Session) -> set[str]:
            now = db_now(self._dialect)
            live = {r[0] for r in s.execute(select(NodeRow.node_id).where(
                NodeRow.node_id.in_(node_ids), NodeRow.stopped_at.is_(None),
                NodeRow.heartbeat_at >= now - self.dead_after)).all()}
            return set(node_ids) - live

        return await self.rt.transact(body)
