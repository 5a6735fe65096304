"""A worker with the test environment's credentials cannot consume the prod queue (issue 14, acceptance 5).

RabbitMQ users per environment, each allowed only its own queue and exchange by regex, on a
vhost of this module's own: the commands of docs/workers.md.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from kombu.connection import Connection

from opsroom.workers import queues
from tests.workers.harness import Site, amqp_url, execution, rabbitmqctl, run, running_server, steps, wait_worker


@pytest.fixture(scope="module")
def users(vhost: str) -> Iterator[dict[str, str]]:
    """One broker user per environment, its permissions limited to ^opsroom\\.ENV$; deleted after."""
    urls: dict[str, str] = {}
    made: list[str] = []
    try:
        for env in ("prod", "test"):
            user, password = f"opsroom-{env}-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
            rabbitmqctl("add_user", user, password)
            made.append(user)
            own = f"^opsroom\\.{env}$"
            rabbitmqctl("set_permissions", "-p", vhost, user, own, own, own)
            urls[env] = amqp_url(vhost, user, password)
        yield urls
    finally:
        for user in made:
            rabbitmqctl("delete_user", user, check=False)


def _queued(vhost: str, name: str) -> int:
    out = rabbitmqctl("list_queues", "-p", vhost, "name", "messages").stdout
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == name:
            return int(parts[1])
    return 0


async def test_test_credentials_cannot_consume_the_prod_queue(site: Site, vhost: str, users: dict[str, str]) -> None:
    site.brokers = dict(users)  # the server publishes each environment's steps with its own user
    async with running_server(site) as rt:
        row = await run(rt, "hello")  # waits on opsroom.prod: no prod worker yet

        for _ in range(20):  # rabbitmqctl takes about a second a call
            if await asyncio.to_thread(_queued, vhost, "opsroom.prod") == 1:
                break
        assert _queued(vhost, "opsroom.prod") == 1, rabbitmqctl("list_queues", "-p", vhost, "name", "messages").stdout

        # A worker for prod started with the test environment's credentials: refused, clearly, at once.
        bad = site.start_worker("prod", name="bad", brokers={"prod": users["test"]})
        try:
            code = await asyncio.to_thread(bad.wait, 60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the worker kept running:\n{site.log('bad')}") from None
        text = site.log("bad")
        assert code == 3, text
        assert "cannot read queue opsroom.prod" in text and "Traceback" not in text, text
        password = users["test"].rsplit("@", 1)[0].rsplit(":", 1)[1]
        assert password not in text, "the broker password was printed"
        # It never received the prod task: still queued, in the broker and in the store.
        assert _queued(vhost, "opsroom.prod") == 1
        assert [s.status for s in await steps(rt, row.id)] == ["queued"]

        # Nor can those credentials publish to prod (a forged step) or read it directly.
        with Connection(users["test"], connect_timeout=5,  # type: ignore[no-untyped-call]
                        transport_options={"confirm_publish": True}) as conn:
            producer = conn.Producer()
            with pytest.raises(Exception, match=r"ACCESS_REFUSED|access to"):
                producer.publish({"x": 1}, exchange=queues.queue("prod").exchange, routing_key="opsroom.prod",
                                 declare=[queues.queue("prod")])

        # The prod worker, with prod's credentials, takes it and runs it.
        good = site.start_worker("prod", name="good")
        await wait_worker(rt, good, site, name="good")
        assert rt.executor is not None
        await asyncio.wait_for(rt.executor.wait(row.id), 60)
        assert (await execution(rt, row.id)).status == "succeeded"

        # And the test credentials serve the test environment's queue.
        tester = site.start_worker("test", name="tester", brokers={"test": users["test"]})
        await wait_worker(rt, tester, site, name="tester")
        other = await run(rt, "on-test")
        await asyncio.wait_for(rt.executor.wait(other.id), 60)
        done = await execution(rt, other.id)
        assert done.status == "succeeded" and "test-env" in done.output
