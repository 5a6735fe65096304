"""A server restart forgets nothing about alerts: a repeat after it is still a repeat, its resolve
is still announced once, and a silence still holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from opsroom.alerts.models import AlertRow
from tests.chat.drivers.fake import FakeDriver
from tests.chat.harness import said_after, serve

TOKEN = "restart-test-token-0123456789"
FIXTURES = Path(__file__).parent.parent / "fixtures" / "alerts"


def _catalog() -> dict[str, Any]:
    return {
        "systems": [{"name": "system-a", "title": "System A", "environment": "prod"}],
        "services": [{"name": "service-b", "system": "system-a"}],
        "checks": [], "aliases": [], "runbooks": [],
        "alert_sources": [{"name": "prometheus", "kind": "alertmanager", "token": TOKEN,
                           "service": "{{ labels.service }}"}],
    }


async def _post(base: str, body: bytes) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        r = await client.post(f"{base}/api/v1/alerts/prometheus", content=body,
                              headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def test_after_a_restart_a_repeat_is_still_a_repeat_and_the_resolve_is_announced_once(tmp_path: Path) -> None:
    firing = (FIXTURES / "am_real_firing.json").read_bytes()
    resolved = (FIXTURES / "am_real_resolved.json").read_bytes()
    assert json.loads(firing)["alerts"][0]["fingerprint"] == json.loads(resolved)["alerts"][0]["fingerprint"]
    driver = FakeDriver()
    async with serve(tmp_path, driver, **_catalog()) as served:
        await driver.attach(served)
        assert (await _post(served.base, firing))["fired"] == 1
        await served.settle()
        assert sum("ALERT firing" in t for t in driver.received()) == 1, driver.received()
    driver = FakeDriver()
    async with serve(tmp_path, driver, **_catalog()) as served:
        await driver.attach(served)
        assert await _post(served.base, firing) == {"received": 1, "fired": 0, "resolved": 0, "repeats": 1,
                                                    "stored": 0, "stale": 0}
        reply = await said_after(served, driver, "alice", "is service-b running")
        assert "ALERT #1 HighLatency (page) firing since" in reply, reply
        assert (await _post(served.base, resolved))["resolved"] == 1
        assert (await _post(served.base, resolved))["repeats"] == 1  # a resolved repeat changes nothing
        await served.settle()
        said = driver.received()
        assert not any("ALERT firing" in t for t in said), said
        assert sum("alert resolved" in t for t in said) == 1, said
        async with served.rt.read() as s:
            rows = list((await s.execute(select(AlertRow))).scalars())
        assert len(rows) == 1 and rows[0].status == "resolved" and rows[0].repeats == 2


async def test_a_silence_still_holds_after_a_restart(tmp_path: Path) -> None:
    driver = FakeDriver()
    async with serve(tmp_path, driver, **_catalog()) as served:
        await driver.attach(served)
        await driver.say("alice", "silence service-b 1h because deploy")
        await served.settle()
        assert any("silenced service-b" in t for t in driver.received()), driver.received()
    driver = FakeDriver()
    async with serve(tmp_path, driver, **_catalog()) as served:
        await driver.attach(served)
        assert (await _post(served.base, (FIXTURES / "am_real_firing.json").read_bytes()))["fired"] == 1
        await served.settle()
        assert not any("ALERT firing" in t for t in driver.received()), driver.received()
        reply = await said_after(served, driver, "alice", "alerts")
        assert "silenced #1" in reply, reply
