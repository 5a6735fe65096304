"""A whole opsroom web app served in-process on a free loopback port, with one chat platform
configured in its catalog and room `ops` bound to the driver's channel; the suite's people
linked (alice -> you, the operator; bob -> boss, the approver; carol unlinked)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from opsroom.access import links
from opsroom.approvals.models import ApprovalRow
from opsroom.config import Settings
from opsroom.runtime import Runtime
from opsroom.web.app import create_app
from tests.chat.driver import Driver
from tests.factories import PASSWORDS, free_port, small_catalog

LINKED = {"alice": "you", "bob": "boss"}


@dataclass
class Served:
    rt: Runtime
    base: str
    port: int

    async def settle(self) -> None:
        """Wait for the bus, the room's posting queue and every adapter's send queue to be empty."""
        assert self.rt.rooms is not None
        await self.rt.bus.drain()
        await self.rt.rooms.flushed()
        for queue in self.rt.rooms.queues.values():
            await queue.drained(timeout=30)


async def link_people(rt: Runtime, driver: Driver) -> None:
    for person, user in LINKED.items():
        await links.link_account(rt, platform=driver.name, account_id=driver.account_id(person),
                                 display_name=person, user=user)


@asynccontextmanager
async def serve(tmp: Path, driver: Driver | None = None, *, link: bool = True, catalog_path: Path | None = None,
                **catalog: Any) -> AsyncIterator[Served]:
    """Boot opsroom with the driver's platform (already started) bound to room `ops`; with
    `catalog_path`, that catalog as it is (and no driver)."""
    assert catalog_path is None or (driver is None and not catalog), "catalog_path is the whole catalog"
    extra: dict[str, Any] = dict(catalog)
    if driver is not None and driver.name != "web":
        extra.setdefault("platforms", [driver.platform_item()])
        extra.setdefault("rooms", [{"name": "ops", "bind": [f"{driver.name}:{driver.channel}"]}])
    port = free_port()
    settings = Settings(data=tmp / "data", catalog=catalog_path or small_catalog(tmp, **extra), host="127.0.0.1",
                        port=port)
    app = create_app(settings, passwords=PASSWORDS, schedule=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning",
                                           ws_max_size=256 * 1024))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # pytest owns signals
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:
                if task.done():
                    task.result()  # start-up failed: raise its error here
                    raise RuntimeError("the server stopped before it started")
                await asyncio.sleep(0.02)
        rt: Runtime = app.state.rt
        if driver is not None and link and driver.name != "web":
            await link_people(rt, driver)
        yield Served(rt, f"http://127.0.0.1:{port}", port)
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            async with asyncio.timeout(20):
                await task


async def request_approval(driver: Driver, timeout: float = 20.0) -> int:
    """alice (operator) asks for a production change; the request number the room names."""
    await driver.say("alice", "run deploy")
    text = await driver.wait_for(lambda t: "needs approval" in t and "deploy" in t, timeout)
    found = re.search(r"Request #(\d+)", text)
    assert found, text
    return int(found.group(1))


async def approval_status(served: Served, approval_id: int) -> str:
    """The request's status in the store (open, approved, denied, expired)."""
    async with served.rt.read() as s:
        row = await s.get(ApprovalRow, approval_id)
        assert row is not None
        return row.status


async def said_after(served: Served, driver: Driver, person: str, line: str) -> str:
    """Everything the room got after `person` wrote `line`, up to its answer, joined. What was
    already on its way (an alert's notice) is let through first, so it is not taken for the answer."""
    await served.settle()
    before = len(driver.received())
    await driver.say(person, line)
    await served.settle()
    return "\n".join(driver.received()[before:])

