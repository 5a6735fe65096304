"""Redis as the broker instead of RabbitMQ: a worker runs a step the same way (docs/workers.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.workers.harness import Site, execution, output_events, run, running_server, steps, wait_worker

# A database number of this module's own on the machine's Redis: only it is flushed.
REDIS_URL = "redis://127.0.0.1:6379/14"


@pytest.fixture
def redis_site(tmp_path: Path, pg_own_url: str) -> Iterator[Site]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis at 127.0.0.1:6379")
    client.flushdb()
    site = Site(root=tmp_path, database_url=pg_own_url, brokers={"prod": REDIS_URL})
    try:
        yield site
    finally:
        site.stop_workers()
        client.flushdb()
        client.close()


async def test_a_redis_broker_worker_runs_a_step(redis_site: Site) -> None:
    site = redis_site
    async with running_server(site) as rt:
        node = await wait_worker(rt, site.start_worker("prod"), site)
        row = await run(rt, "hello", {"who": "redis"})
        assert rt.executor is not None
        await asyncio.wait_for(rt.executor.wait(row.id), 60)
        done = await execution(rt, row.id)
        assert done.status == "succeeded", (done.error, site.log())
        assert "one redis" in done.output and "four" in done.output
        assert "one redis" in "".join(e.text for e in output_events(rt, row.id))
        assert {s.worker for s in await steps(rt, row.id)} == {node}
