"""Acceptance 1: `opsroom demo` starts as a subprocess and its room is reachable and light."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e.harness import DEMO_PASSWORDS, join, start_demo

pytestmark = pytest.mark.e2e


async def test_demo_starts_and_room_is_reachable_under_50kb(tmp_path: Path) -> None:
    demo = start_demo(tmp_path, interval="2s")
    try:
        out = demo.output()
        assert f"http://127.0.0.1:{demo.port}/rooms/ops" in out
        for user, password in DEMO_PASSWORDS.items():
            assert f"{user} / {password}" in out
        for name in ("service-b", "service-c"):
            assert httpx.get(f"http://127.0.0.1:{demo.service_port(name)}/health").status_code == 200

        # Anonymous visitors are sent to the login page, not shown the room.
        anon = httpx.get(f"{demo.base}/rooms/ops", follow_redirects=False)
        assert anon.status_code == 303 and anon.headers["location"].startswith("/login")

        # Fill the history the page renders (50 messages) so the budget is measured at its worst.
        room = await join(demo, "dev")
        http = room.http
        assert http is not None
        for _ in range(30):
            await room.ask("is service-c running?", "service-c is")
        resp = await http.get("/rooms/ops", headers={"Accept-Encoding": "gzip"})
        assert resp.status_code == 200
        assert resp.headers.get("content-encoding") == "gzip"
        html = resp.text
        assert html.count('<li class="') >= 50
        # The whole first load is the page plus its own script and stylesheet (static files, since
        # the CSP allows no inline ones): nothing from elsewhere, all of it within the budget.
        assets = re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="([^"]*)"', html)
        assert assets and all(a.startswith("/static/") for a in assets), assets
        wire = resp.num_bytes_downloaded
        for asset in assets:
            got = await http.get(asset, headers={"Accept-Encoding": "gzip"})
            assert got.status_code == 200, asset
            wire += got.num_bytes_downloaded
        assert wire <= 50_000, wire
        assert "PRODUCTION" in html
        print(f"room first load: {wire} bytes over the wire, {len(resp.content)} bytes uncompressed")
        await room.close()
        services = [demo.service_pid(n) for n in ("service-b", "service-c")]
    finally:
        demo.stop()
    # Stopping the demo (SIGTERM) stops System A's services too: nothing is left behind.
    assert demo.proc.returncode == 143
    for pid in services:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid


async def test_demo_outage_kills_service_b_after_15_s(tmp_path: Path) -> None:
    import time

    started = time.monotonic()
    demo = start_demo(tmp_path, extra=["--outage"])
    try:
        assert "service-b will be killed in 15 s" in demo.output()
        room = await join(demo, "dev")
        problem = await room.wait_for(lambda f: f["type"] == "message" and "service-b is not running" in f["text"],
                                      timeout=30)
        elapsed = time.monotonic() - started
        assert 15 <= elapsed <= 25, elapsed
        assert problem["text"].startswith("[PROD] System A is unhealthy")
        await room.close()
    finally:
        demo.stop()
