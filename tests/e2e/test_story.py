"""Acceptance 2: the seed story through the web room, real server, real service processes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from opsroom.access.identity import SYSTEM
from opsroom.audit import service as audit
from opsroom.config import Settings
from opsroom.server import open_runtime
from tests.e2e.harness import join, start_demo

pytestmark = pytest.mark.e2e


async def test_the_seed_story(tmp_path: Path) -> None:
    demo = start_demo(tmp_path)
    try:
        you = await join(demo, "you")
        # Both services are up before the story starts.
        await you.ask("health system-a", "System A is healthy")

        demo.kill_service("service-b")
        problem = await you.wait_for(lambda f: f["type"] == "message" and "System A is unhealthy" in f["text"])
        assert problem["text"].startswith("[PROD] System A is unhealthy: service-b is not running (check "
                                          "service-b-http CRITICAL since ")

        reply = await you.ask("is service-c running?", "service-c is")
        assert re.match(r"service-c is running \(service-c-http OK, \d+ ms", reply["text"]), reply["text"]

        boss = await join(demo, "boss")
        await you.wait_for(lambda f: f["type"] == "message" and f["text"] == "boss joined the room")
        asked = await you.ask("start service-b", "needs approval")
        assert "start service-b on PROD needs approval by role `approver` — asking boss. Request #" in asked["text"]
        request = int(re.search(r"Request #(\d+)", asked["text"]).group(1))  # type: ignore[union-attr]
        # boss sees the pending approval live
        await boss.wait_for(lambda f: f["type"] == "approvals" and any(a["id"] == request for a in f["items"]))

        refused = await you.ask(f"approve {request}", "may not approve")
        assert "you may not approve" in refused["text"]

        mark = len(you.frames)
        await boss.say(f"approve {request}")
        approved = await you.wait_for(lambda f: f["type"] == "message" and "approved by boss" in f["text"],
                                      start=mark)
        assert re.match(r"approved by boss\. Running runbook start-service \(execution #\d+\)…", approved["text"])
        done = await you.wait_for(lambda f: f["type"] == "message" and "service-b started" in f["text"],
                                  timeout=30, start=mark)
        assert re.match(r"service-b started \(execution #\d+ succeeded in [\d.]+ s\)", done["text"]), done["text"]

        resp = httpx.get(f"http://127.0.0.1:{demo.service_port('service-b')}/health", timeout=5)
        assert resp.status_code == 200 and resp.json()["service"] == "service-b"
        health = await you.ask("health system-a", "System A is")
        assert health["text"] == "[PROD] service-b OK · service-c OK · System A is healthy"

        await you.close()
        await boss.close()
    finally:
        demo.stop()

    verify = subprocess.run([sys.executable, "-m", "opsroom", "audit", "verify", "--data", str(demo.data)],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "chain intact" in verify.stdout

    rt = await open_runtime(Settings(data=demo.data))
    try:
        records = list(reversed(await audit.list_records(rt, actor=SYSTEM, limit=1000)))
    finally:
        await rt.close()
    steps = [(r.actor, r.door, r.action, r.outcome) for r in records]

    def has(actor: str, door: str, action: str, outcome: str | None = None) -> bool:
        return any(a == actor and d == door and ac == action and (outcome is None or o == outcome)
                   for a, d, ac, o in steps)

    assert has("you", "web", "login") and has("boss", "web", "login")
    assert has("you", "chat", "service.status")
    assert has("you", "chat", "runbook.run", "awaiting_approval")
    assert has("you", "chat", "approval.open")
    assert has("you", "chat", "approval.approve", "refused")
    assert has("boss", "chat", "approval.approve", "approved")
    assert has("you", "chat", "execution.finish", "succeeded")
    assert has("you", "chat", "system.health")
    # in that order
    order = [steps.index(next(s for s in steps if s[0] == a and s[2] == ac and (o is None or s[3] == o)))
             for a, ac, o in (("you", "runbook.run", None), ("you", "approval.approve", "refused"),
                              ("boss", "approval.approve", "approved"), ("you", "execution.finish", "succeeded"))]
    assert order == sorted(order)
