"""Acceptance 3: a rule restarts service-b with no human; the room shows exactly three announcements."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import join, start_demo

pytestmark = pytest.mark.e2e


async def test_rule_recovers_service_b_with_three_announcements(tmp_path: Path) -> None:
    demo = start_demo(tmp_path, auto=True)
    try:
        dev = await join(demo, "dev")
        await dev.wait_for(lambda f: f["type"] == "message" and f["text"] == "dev joined the room")
        mark = len(dev.frames)
        demo.kill_service("service-b")
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
    finally:
        demo.stop()
