"""Attacks on the cluster: a forged node row, and GET /api/v1/cluster.

- A node row with a fresh heartbeat and no process behind it (forged, or a server frozen) owns
  shards by rendezvous hashing, but never takes them: the real servers adopt them after the
  lease ttl, keep what they hold, and no check runs twice in one interval.
- /api/v1/cluster needs a token and the view permission (status.read), and its answer carries no
  secret: not the database URL or its password, not a token.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy.dialects.postgresql import insert

from opsroom import server
from opsroom.access.identity import Actor
from opsroom.checks.scheduler import phase
from opsroom.cluster.models import NodeRow
from opsroom.cluster.service import cluster_status
from opsroom.config import Settings
from opsroom.errors import PermissionDenied
from tests.cluster.procs import catalog
from tests.e2e.harness import cli, start_server
from tests.factories import PASSWORDS, small_catalog

INTERVAL = 1.0


async def _forge(rt_engine_url: str, stop: asyncio.Event, rt: object) -> None:
    """Keep a node row alive with fresh heartbeats, as a process that holds nothing would."""
    from opsroom.runtime import Runtime

    assert isinstance(rt, Runtime)
    while not stop.is_set():
        async with rt.write() as s:
            now = time.time()
            await s.execute(insert(NodeRow).values(
                node_id="forged:1:zzzz", kind="server", host="forged", pid=1, environment=None, version="0",
                started_at=now, heartbeat_at=now, stopped_at=None, info={}).on_conflict_do_update(
                index_elements=[NodeRow.node_id], set_={"heartbeat_at": now, "stopped_at": None}))
        await asyncio.sleep(0.1)


async def test_a_forged_node_only_delays_checks_by_the_lease_ttl(tmp_path: Path, pg_own_url: str) -> None:
    settings = Settings(data=tmp_path / "data", catalog=catalog(tmp_path, checks=80, interval=INTERVAL),
                        database_url=pg_own_url, check_result_ok_interval=0, cluster_heartbeat=0.2,
                        cluster_dead_after=0.6, cluster_shards=16)
    rt = await server.open_runtime(settings)
    stop = asyncio.Event()
    forger = asyncio.get_running_loop().create_task(_forge(pg_own_url, stop, rt))
    await asyncio.sleep(0.3)  # the forged row is live before the server starts
    try:
        started = time.monotonic()
        await server.start(rt, schedule=True, passwords=PASSWORDS)
        assert rt.shards is not None and rt.membership is not None
        await asyncio.sleep(0.5)
        assert "forged:1:zzzz" in rt.membership.servers
        # Every shard is held within the ttl (rank 1 adopts) plus a few heartbeats, though the
        # forged node still looks live and owns about half of them.
        while len(rt.shards.held) < 16:
            assert time.monotonic() - started < 0.6 + 2.0, sorted(rt.shards.held)
            await asyncio.sleep(0.05)
        await asyncio.sleep(3 * INTERVAL)
        assert rt.monitor is not None
        await rt.monitor.flush()
        async with rt.read() as s:
            from sqlalchemy import text

            rows = (await s.execute(text('SELECT "check", at FROM check_results'))).all()
    finally:
        stop.set()
        await forger
        await server.stop(rt)
    per: dict[str, Counter[int]] = {}
    for check, at in rows:
        per.setdefault(check, Counter())[int((at - phase(check, INTERVAL)) // INTERVAL)] += 1
    assert len(per) == 80, "some checks never ran while a forged node owned their shards"
    assert all(k == 1 for c in per.values() for k in c.values()), "a check ran twice in one interval"


async def test_cluster_status_needs_the_view_permission(tmp_path: Path, pg_own_url: str) -> None:
    settings = Settings(data=tmp_path / "data", catalog=small_catalog(tmp_path), database_url=pg_own_url)
    rt = await server.open_runtime(settings)
    await server.start(rt, schedule=False, passwords=PASSWORDS)
    try:
        with pytest.raises(PermissionDenied):
            await cluster_status(rt, actor=Actor("nobody", "api", frozenset({"nobody"}), frozenset()))
        seen = await cluster_status(rt, actor=Actor("dev", "api", frozenset({"viewer"}),
                                                    frozenset({"status.read"})))
        assert seen["live_servers"] == 1 and seen["nodes"][0]["this"]
    finally:
        await server.stop(rt)


def test_the_cluster_endpoint_wants_a_token_and_leaks_no_secret(tmp_path: Path, pg_own_url: str) -> None:
    # A password in the URL (trust authentication ignores it): it must never appear in an answer.
    url = pg_own_url.replace("postgres@", "postgres:db-pass-s3cret@")
    cat = small_catalog(tmp_path, roles=[{"name": "blind", "permissions": []}],
                        users=[{"name": "dev", "roles": ["viewer"]}, {"name": "blind", "roles": ["blind"]}])
    env = {"OPSROOM_DATABASE_URL": url}
    served = start_server(tmp_path, ["serve", "--catalog", str(cat)], env_extra=env)
    try:
        tokens = {}
        for user in ("dev", "blind"):
            made = cli("token", "create", user, "--data", str(served.data), "--catalog", str(cat), env=env)
            assert made.returncode == 0, made.stderr
            tokens[user] = made.stdout.strip()
        api = f"{served.base}/api/v1/cluster"
        assert httpx.get(api, timeout=10).status_code == 401
        assert httpx.get(api, headers={"Authorization": "Bearer not-a-token"}, timeout=10).status_code == 401
        refused = httpx.get(api, headers={"Authorization": f"Bearer {tokens['blind']}"}, timeout=10)
        assert refused.status_code == 403
        ok = httpx.get(api, headers={"Authorization": f"Bearer {tokens['dev']}"}, timeout=10)
        assert ok.status_code == 200, ok.text
        body = ok.text
        assert ok.json()["live_servers"] == 1
        for secret in ("db-pass-s3cret", url, url.rsplit("/", 1)[1], tokens["dev"], tokens["blind"]):
            assert secret not in body
        shown = cli("cluster", "status", "-o", "json", "--server", served.base, "--token", tokens["dev"])
        assert shown.returncode == 0, shown.stderr
        assert "db-pass-s3cret" not in shown.stdout and tokens["dev"] not in shown.stdout
        table = cli("cluster", "status", "--server", served.base, "--token", tokens["dev"])
        assert table.returncode == 0 and "live server" in table.stdout, table.stdout + table.stderr
        denied = cli("cluster", "status", "--server", served.base, "--token", tokens["blind"])
        assert denied.returncode == 3, denied.stdout + denied.stderr
    finally:
        served.stop()
