"""A server's part in the cluster, wired by server.py: its heartbeat row and its shards of checks.

SQLite: none of it (one server per store, store/lease.py). PostgreSQL: every server heartbeats
(cluster/membership.py) and runs the checks of the shards it holds (cluster/shards.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import structlog
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from opsroom.cluster.health import SharedHealth
from opsroom.cluster.membership import Membership
from opsroom.cluster.shards import Shards
from opsroom.runtime import Runtime

log = structlog.get_logger(__name__)


_beat_at: dict[str, float] = {}  # node id -> time.monotonic() of its last heartbeat write


def _info(rt: Runtime) -> dict[str, object]:
    """What this server tells the others in its heartbeat row (`opsroom cluster status`)."""
    _beat_at[rt.node_id] = time.monotonic()
    if rt.shards is not None:
        return rt.shards.info()
    if rt.monitor is not None:
        return {"checks_scheduled": len(rt.monitor.scheduler),
                "lag_p99": round(rt.monitor.scheduler.lag_percentiles()["p99"], 4)}
    return {}


async def join(rt: Runtime) -> None:
    """Start heartbeating on PostgreSQL (set rt.membership)."""
    if rt.engine.dialect.name != "postgresql":
        return
    s = rt.settings
    membership = Membership(rt, kind="server", every=s.cluster_heartbeat, dead_after=s.cluster_dead_after,
                            info=lambda: _info(rt))
    await membership.start()
    rt.membership = membership


async def share_checks(rt: Runtime, *, schedule: bool) -> None:
    """Take this server's shards of checks (a scheduling server on PostgreSQL)."""
    if rt.membership is None or rt.monitor is None:
        return
    rt.monitor.shared_health = SharedHealth(rt, rt.monitor)
    if not schedule:
        return
    s = rt.settings
    shards = Shards(rt, rt.membership, rt.monitor, count=s.cluster_shards, ttl=s.cluster_dead_after,
                    every=s.cluster_heartbeat)
    rt.shards = shards
    await shards.start()


async def stop_sharing(rt: Runtime) -> None:
    """Give the shards back at once (before the monitor stops), so the others take them now."""
    shards, rt.shards = rt.shards, None
    if shards is not None:
        await shards.stop()
    if rt.monitor is not None and rt.monitor.shared_health is not None:
        await rt.monitor.shared_health.drain()


async def leave(rt: Runtime) -> None:
    """Mark this node stopped, so the others do not wait for its heartbeat to age out."""
    membership, rt.membership = rt.membership, None
    if membership is not None:
        await membership.stop()


class ClusterCollector(Collector):
    """/metrics of this node: live servers as it sees them, shards held, checks scheduled, heartbeat age."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterator[Metric]:
        rt = self.rt
        if rt.membership is None:
            return
        yield GaugeMetricFamily("opsroom_cluster_live_servers", "live servers on this store, as this node "
                                "saw them at its last heartbeat", value=len(rt.membership.servers))
        yield GaugeMetricFamily("opsroom_shards_held", "shards of checks this server holds",
                                value=len(rt.shards.held) if rt.shards is not None else 0)
        yield GaugeMetricFamily("opsroom_checks_scheduled", "checks this server schedules",
                                value=len(rt.monitor.scheduler) if rt.monitor is not None else 0)
        beat = _beat_at.get(rt.node_id)
        yield GaugeMetricFamily("opsroom_cluster_heartbeat_age_seconds", "seconds since this node last wrote "
                                "its heartbeat", value=time.monotonic() - beat if beat is not None else -1.0)
