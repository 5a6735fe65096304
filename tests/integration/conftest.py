"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.factories import free_port

PAGE = b"x" * 1000  # what http_target serves at /


@pytest.fixture
async def http_target() -> AsyncIterator[int]:
    """A local HTTP server (its port) answering / with PAGE: a target for check_http and the like."""
    async def page(_req: web.Request) -> web.Response:
        return web.Response(body=PAGE, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()
