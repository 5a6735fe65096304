"""Several real `opsroom serve` processes on one PostgreSQL database, for the cluster tests and
benchmarks (bench/cluster_checks.py, bench/failover.py): start, kill -9, read what they stored."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import os
import signal
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from opsroom.checks.scheduler import phase
from tests.e2e.harness import Demo, start_server
from tests.factories import free_port, small_catalog

PG_ADMIN = os.environ.get("OPSROOM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    # Callers may be inside a running loop (async tests): a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def pg_database(prefix: str = "opsroom_cluster") -> Iterator[str]:
    """A PostgreSQL database of its own, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    _run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        _run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def catalog(tmp: Path, *, checks: int, interval: float, **extra: Any) -> Path:
    """`checks` tcp checks of a port nothing listens on: each run is one refused connect in-process
    (no process forked), so 2,000 checks every 2 s cost the servers little on 2 cores. `extra`
    goes to the catalog as it is (chat platforms and the rooms bound to them)."""
    closed = free_port()
    rows = [{"name": f"c{i:05d}", "type": "tcp", "service": "svc", "host": "127.0.0.1", "port": closed,
             "interval": f"{interval}s", "timeout": "1s"} for i in range(checks)]
    return small_catalog(tmp, checks=rows, **extra)


@dataclass
class Cluster:
    url: str
    catalog: Path
    servers: list[Demo]
    env: dict[str, str]
    tmp: Path | None = None

    def spawn(self) -> Demo:
        """Start one more server (a data dir of its own) and add it to `servers`."""
        assert self.tmp is not None
        n = len(list(self.tmp.glob("data*")))
        server = start_server(self.tmp, ["serve", "--catalog", str(self.catalog)], data=self.tmp / f"data{n}",
                              env_extra=self.env)
        self.servers.append(server)
        return server

    def chat_holder(self, platform: str) -> Demo | None:
        """The server whose process holds the lease of `platform`'s chat connection now."""
        rows = self.query("SELECT holder FROM cluster_leases WHERE name = $1 AND holder IS NOT NULL "
                          "AND expires_at >= extract(epoch from clock_timestamp())", f"chat:{platform}")
        pids = {int(r[0].split(":")[1]) for r in rows}
        return next((s for s in self.servers if s.proc.pid in pids), None)

    def query(self, sql: str, *args: Any) -> list[Any]:
        async def go() -> list[Any]:
            conn = await asyncpg.connect(self.url)
            try:
                return list(await conn.fetch(sql, *args))
            finally:
                await conn.close()

        return _run(go())

    def results(self, since: float = 0.0) -> list[tuple[str, float]]:
        return [(r[0], float(r[1])) for r in self.query(
            'SELECT "check", at FROM check_results WHERE at >= $1 ORDER BY at', since)]

    def shards_of(self, server: Demo) -> set[int]:
        """The shards the server's process holds now (its node id carries its pid)."""
        rows = self.query("SELECT name FROM cluster_leases WHERE name LIKE 'shard:%' AND holder LIKE $1 "
                          "AND expires_at >= extract(epoch from clock_timestamp())", f"%:{server.proc.pid}:%")
        return {int(r[0].split(":", 1)[1]) for r in rows}

    def all_held(self) -> int:
        return int(self.query("SELECT count(*) FROM cluster_leases WHERE name LIKE 'shard:%' AND holder IS NOT NULL "
                              "AND expires_at >= extract(epoch from clock_timestamp())")[0][0])

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


def start_cluster(tmp: Path, url: str, *, servers: int, checks: int, interval: float,
                  heartbeat: float | None = None, dead_after: float | None = None,
                  catalog_extra: dict[str, Any] | None = None) -> Cluster:
    """Start `servers` processes one after another (the first migrates the store)."""
    cat = catalog(tmp, checks=checks, interval=interval, **(catalog_extra or {}))
    env = {"OPSROOM_DATABASE_URL": url, "OPSROOM_CHECK_RESULT_OK_INTERVAL": "0", "OPSROOM_LOG_LEVEL": "warning"}
    if heartbeat is not None:
        env["OPSROOM_CLUSTER_HEARTBEAT"] = str(heartbeat)
    if dead_after is not None:
        env["OPSROOM_CLUSTER_DEAD_AFTER"] = str(dead_after)
    cluster = Cluster(url, cat, [], env, tmp)
    try:
        for _ in range(servers):
            cluster.spawn()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def kill9(server: Demo) -> None:
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)


def windows(rows: list[tuple[str, float]], interval: float) -> dict[str, Counter[int]]:
    """Runs per check per interval: a check's intervals start at its slots (phase + k * interval)."""
    out: dict[str, Counter[int]] = {}
    for check, at in rows:
        out.setdefault(check, Counter())[math.floor((at - phase(check, interval)) / interval)] += 1
    return out


def violations(rows: list[tuple[str, float]], checks: list[str], interval: float, start: float,
               end: float) -> tuple[int, int, list[str]]:
    """(intervals with two runs or more, whole intervals in [start, end) with none, examples).
    The first and last interval of the span may be partial and are not counted as missed."""
    per = windows(rows, interval)
    twice = missed = 0
    examples: list[str] = []
    for check in checks:
        counted = per.get(check, Counter())
        for w, k in counted.items():
            if k > 1:
                twice += k - 1
                examples.append(f"{check}: {k} runs in its interval {w}")
        ph = phase(check, interval)
        first = math.floor((start - ph) / interval) + 1
        last = math.floor((end - ph) / interval) - 1
        for w in range(first, last):
            if counted.get(w, 0) == 0:
                missed += 1
                examples.append(f"{check}: no run in its interval {w}")
    return twice, missed, examples[:10]
