"""Issue 14, acceptance 1 and the checks half of 2: real `opsroom serve` processes on one PostgreSQL.

1. Three servers and two workers (`opsroom worker`, RabbitMQ), 2,000 checks every 2 s for 30 s:
   from check_results, every check ran once in each of its intervals, never twice in one.
2. kill -9 one server: each of its checks runs again on the others within two intervals of the
   last result the dead server stored for it, and never twice in one interval across the handover.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from opsroom.cluster.shards import shard_of
from tests.cluster.procs import Cluster, kill9, pg_database, start_cluster, violations
from tests.workers.harness import Site, amqp_url, rabbit_vhost

INTERVAL = 2.0
CHECKS = 2000
SHARDS = 64
CHECK_NAMES = [f"c{i:05d}" for i in range(CHECKS)]


def _settled(cluster: Cluster, timeout: float = 30.0) -> None:
    """Every shard held, and each server holding some (the last to start asked for its own)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cluster.all_held() == SHARDS and all(cluster.shards_of(s) for s in cluster.servers):
            return
        time.sleep(0.2)
    raise AssertionError("the shards did not settle among the servers")


@pytest.fixture
def db() -> object:
    with pg_database() as url:
        yield url


@pytest.mark.timeout(240)
def test_three_servers_run_each_check_once_per_interval(tmp_path: Path, db: str) -> None:
    cluster = start_cluster(tmp_path, db, servers=3, checks=CHECKS, interval=INTERVAL)
    try:
        with rabbit_vhost() as vhost:
            site = Site(root=tmp_path, database_url=db, brokers={"test": amqp_url(vhost), "prod": amqp_url(vhost)})
            try:
                for name in ("w1", "w2"):
                    site.start_worker("test", name=name)
                _run_checks(cluster, site)
            finally:
                site.stop_workers()
    finally:
        cluster.stop()


def _live_workers(cluster: Cluster) -> int:
    return int(cluster.query("SELECT count(*) FROM cluster_nodes WHERE kind = 'worker' AND stopped_at IS NULL "
                             "AND heartbeat_at >= extract(epoch from clock_timestamp()) - 3")[0][0])


def _run_checks(cluster: Cluster, site: Site) -> None:
    try:
        _settled(cluster)
        deadline = time.monotonic() + 30
        while _live_workers(cluster) < 2:
            assert time.monotonic() < deadline, site.log("w1") + site.log("w2")
            time.sleep(0.2)
        start = time.time()
        time.sleep(30)
        end = time.time()
        time.sleep(1.5)  # the last results reach the store (stored every 0.5 s)
        rows = cluster.results(since=start - INTERVAL)
        held = [len(cluster.shards_of(s)) for s in cluster.servers]
        assert _live_workers(cluster) == 2, "a worker stopped heartbeating during the run"
    finally:
        cluster.stop()
    twice, missed, examples = violations(rows, CHECK_NAMES, INTERVAL, start, end)
    assert twice == 0, examples
    assert missed == 0, examples
    assert sum(held) == SHARDS and all(held), held
    ran = {c for c, at in rows if start <= at < end}
    assert ran == set(CHECK_NAMES)


@pytest.mark.timeout(240)
def test_kill9_a_server_its_checks_run_again_within_two_intervals(tmp_path: Path, db: str) -> None:
    # Faster heartbeats than the defaults (1 s, dead after 3 s): two intervals of a 2 s check from
    # its last stored run leave room for the dead window and the next slot (docs/cluster.md);
    # bench/failover.py measures the defaults.
    cluster = start_cluster(tmp_path, db, servers=3, checks=CHECKS, interval=INTERVAL, heartbeat=0.3,
                            dead_after=1.0)
    try:
        _settled(cluster)
        time.sleep(3 * INTERVAL)
        victim = max(cluster.servers, key=lambda s: len(cluster.shards_of(s)))
        shards = cluster.shards_of(victim)
        mine = [c for c in CHECK_NAMES if shard_of(c, SHARDS) in shards]
        start = time.time() - 2 * INTERVAL
        killed = time.time()
        kill9(victim)
        time.sleep(4 * INTERVAL)
        end = time.time()
        time.sleep(1.5)
        rows = cluster.results(since=start - INTERVAL)
        survivors = [s for s in cluster.servers if s is not victim]
        assert sum(len(cluster.shards_of(s)) for s in survivors) == SHARDS
    finally:
        cluster.stop()
    assert mine
    twice, _missed, examples = violations(rows, CHECK_NAMES, INTERVAL, start, end)
    assert twice == 0, examples
    gaps = []
    for check in mine:
        before = [at for c, at in rows if c == check and at <= killed]
        after = [at for c, at in rows if c == check and at > killed]
        assert before and after, check
        gaps.append(after[0] - before[-1])
    gaps.sort()
    worst = gaps[-1]
    # Two intervals, plus the scheduler's lag on a loaded 2-core machine.
    assert worst <= 2 * INTERVAL + 0.5, f"slowest handover {worst:.2f} s; p50 {gaps[len(gaps) // 2]:.2f} s"
