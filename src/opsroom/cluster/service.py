"""The cluster as the API and `opsroom cluster status` show it: every node, what it holds, its lag.

Read from the store (cluster_nodes, cluster_leases), so any server answers for all of them. Only
names, ages and counts leave: never a database URL, a token or a node's settings.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from opsroom import __version__
from opsroom.access.identity import Actor
from opsroom.audit import service as audit
from opsroom.cluster.clock import db_now
from opsroom.cluster.models import LeaseRow, NodeRow
from opsroom.runtime import Runtime

LEASE_KINDS = ("shard", "chat", "consumer")
STOPPED_SHOWN_S = 3600.0  # a node stopped (or silent) longer than this is left out


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _held(names: list[str]) -> dict[str, Any]:
    shards = sorted(int(n.split(":", 1)[1]) for n in names if n.startswith("shard:") and n[6:].isdigit())
    return {"shards": len(shards), "shard_list": shards,
            "chat": sorted(n for n in names if n.startswith("chat:")),
            "consumers": sorted(n for n in names if n.startswith("consumer:"))}


async def cluster_status(rt: Runtime, *, actor: Actor) -> dict[str, Any]:
    """Every server and worker: kind, host, pid, version, heartbeat age, what it holds, its lag."""
    actor.require("status.read", what="see the cluster")
    dialect = rt.engine.dialect.name
    if rt.membership is None:
        nodes = [_this_node(rt)]
        shards_total = 0
    else:
        def body(s: Session) -> tuple[list[Any], list[Any]]:
            now = db_now(dialect)
            rows = s.execute(select(NodeRow, now - NodeRow.heartbeat_at)
                             .where(NodeRow.heartbeat_at >= now - STOPPED_SHOWN_S)
                             .order_by(NodeRow.kind, NodeRow.node_id)).all()
            leases = s.execute(select(LeaseRow.name, LeaseRow.holder)
                               .where(LeaseRow.holder.is_not(None), LeaseRow.expires_at >= now)).all()
            return list(rows), list(leases)

        rows, leases = await rt.transact(body)
        by_holder: dict[str, list[str]] = {}
        for name, holder in leases:
            if name.split(":", 1)[0] in LEASE_KINDS:
                by_holder.setdefault(holder, []).append(name)
        dead_after = rt.settings.cluster_dead_after
        nodes = []
        for row, age in rows:
            info = row.info if isinstance(row.info, dict) else {}
            live = row.stopped_at is None and float(age) <= dead_after
            nodes.append({"node": row.node_id, "kind": row.kind, "host": row.host, "pid": row.pid,
                          "version": row.version, "environment": row.environment,
                          "state": "live" if live else ("stopped" if row.stopped_at is not None else "dead"),
                          "heartbeat_age_s": round(max(0.0, float(age)), 3) if row.stopped_at is None else None,
                          "checks_scheduled": _num(info.get("checks_scheduled")),
                          "lag_p99_s": _num(info.get("lag_p99")),
                          "this": row.node_id == rt.node_id,
                          **_held(by_holder.get(row.node_id, []) if live else [])})
        shards_total = rt.settings.cluster_shards
    await audit.append_alone(rt, actor=actor, action="cluster.status", target="cluster",
                             details={"nodes": len(nodes)})
    live_servers = sum(1 for n in nodes if n["kind"] == "server" and n["state"] == "live")
    return {"store": dialect, "shards": shards_total, "live_servers": live_servers, "nodes": nodes}


def _this_node(rt: Runtime) -> dict[str, Any]:
    """SQLite: one server, which runs every check."""
    mon = rt.monitor
    return {"node": rt.node_id, "kind": "server", "host": socket.gethostname(), "pid": os.getpid(),
            "version": __version__, "environment": None, "state": "live", "heartbeat_age_s": 0.0,
            "checks_scheduled": float(len(mon.scheduler)) if mon is not None else None,
            "lag_p99_s": round(mon.scheduler.lag_percentiles()["p99"], 4) if mon is not None else None,
            "this": True, "shards": 0, "shard_list": [], "chat": [], "consumers": []}
