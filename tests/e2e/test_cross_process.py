"""A run asked for from the CLI (a client of the server's API) is announced in the server's room, and approved there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.harness import cli, join, start_demo

pytestmark = pytest.mark.e2e


async def test_cli_request_reaches_the_room_and_boss_approves_it(tmp_path: Path) -> None:
    demo = start_demo(tmp_path)
    try:
        # In the room before the outage: a socket gets what is said after it joined, and on a
        # loaded machine the check noticed the kill before a join made after it was done.
        boss = await join(demo, "boss")
        demo.kill_service("service-b")
        await boss.wait_for(lambda f: f["type"] == "message" and "is unhealthy" in f["text"])
        token = cli("token", "create", "you", "--data", str(demo.data), env=demo.env).stdout.strip()
        # --no-wait: the CLI returns once asked (it waits for the approval otherwise; test_remote_cli shows that).
        asked = cli("runbook", "run", "start-service", "service=service-b", "--no-wait", "--token", token,
                    "--server", demo.base, env=demo.env)
        assert asked.returncode == 0, asked.stderr
        request = int(re.search(r"request #(\d+)", asked.stdout).group(1))  # type: ignore[union-attr]

        note = await boss.wait_for(lambda f: f["type"] == "message" and f"Request #{request}." in f["text"])
        assert note["text"] == (f"start service-b on PROD needs approval by role `approver` — asking boss. "
                                f"Request #{request}.")
        await boss.wait_for(lambda f: f["type"] == "approvals" and any(a["id"] == request for a in f["items"]))
        await boss.say(f"approve {request}")
        done = await boss.wait_for(lambda f: f["type"] == "message" and "service-b started" in f["text"],
                                   timeout=30)
        assert "succeeded" in done["text"]
        await boss.close()
    finally:
        demo.stop()
    audit = cli("audit", "verify", "--data", str(demo.data))
    assert audit.returncode == 0, audit.stderr
