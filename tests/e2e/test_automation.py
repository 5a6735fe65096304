"""Acceptance 3: a rule restarts service-b with no human; the room shows exactly three announcements."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import DEMO_PASSWORDS, RoomClient, login, start_demo

pytestmark = pytest.mark.e2e


async def test_rule_recovers_service_b_with_three_announcements(tmp_path: Path) -> None:
    demo = start_demo(tmp_path, auto=True)
    try:
        http = await login(demo.base, "dev", DEMO_PASSWORDS["dev"])
        dev = await RoomClient.open(demo.base, http, "dev")
        await dev.wait_for(lambda f: f["type"] == "message" and f["text"] == "dev joined the room")
        mark = len(dev.frames)
        os.kill(demo.service_pid("service-b"), signal.SIGKILL)
        await dev.wait_for(lambda f: f["type"] == "message" and "healthy again" in f["text"], timeout=30,
                           start=mark)
        # Anything else would have arrived by now: wait a little longer than a check interval.
        import asyncio

        await asyncio.sleep(2.5)
        said = [f["text"] for f in dev.frames[mark:] if f["type"] == "message"]
        assert len(said) == 3, said
        assert said[0].startswith("[PROD] System A is unhealthy: service-b is not running")
        assert said[1].startswith("[PROD] recovery runbook start-service triggered for service-b-http "
                                  "(rule recover-service-b, execution #")
        assert said[2] == "[PROD] System A is healthy again"
        assert httpx.get(f"http://127.0.0.1:{demo.service_port('service-b')}/health", timeout=5).status_code == 200
        await dev.close()
        await http.aclose()
    finally:
        demo.stop()
