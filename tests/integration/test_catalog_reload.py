"""What a catalog reload does to each engine, in-process on a real store: the scheduler, system
health, rooms, users, open approvals and a running execution."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsroom import server
from opsroom.access import service as access
from opsroom.access.identity import SYSTEM
from opsroom.approvals import service as approvals
from opsroom.audit import service as audit
from opsroom.catalog import service as catalog_service
from opsroom.checks.probes import ProbeResult
from opsroom.config import Settings
from opsroom.errors import OpsroomError
from opsroom.events import SystemHealthChanged
from opsroom.runbooks import service as runbooks
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime
from tests import inprocess
from tests.factories import small_catalog

ADMIN = SYSTEM


def _edit(rt: Runtime, change: Any) -> None:
    """Rewrite the catalog file in place, as an operator's editor would."""
    assert rt.settings.catalog is not None
    path = rt.settings.catalog / "catalog.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _check(name: str, interval: str = "60s", enabled: bool = True) -> dict[str, Any]:
    return {"name": name, "type": "command", "service": "svc", "interval": interval, "enabled": enabled,
            "argv": [sys.executable, "-c", "print('OK')"]}


async def test_the_scheduler_follows_added_removed_disabled_and_changed_checks(tmp_path: Path) -> None:
    catalog = small_catalog(tmp_path, checks=[_check("keep"), _check("gone"), _check("off"), _check("slower")])
    rt = await server.open_runtime(Settings(data=tmp_path / "data", catalog=catalog))
    await server.start(rt, schedule=True)
    try:
        assert rt.monitor is not None
        sched = rt.monitor.scheduler
        assert set(sched.names) == {"keep", "gone", "off", "slower"}
        keep_due = sched.next_due("keep")

        def change(data: dict[str, Any]) -> None:
            data["checks"] = [_check("keep"), _check("off", enabled=False), _check("slower", "120s"), _check("new")]

        _edit(rt, change)
        done = await catalog_service.reload_catalog(rt, actor=ADMIN)
        assert done.changes["checks"] == catalog_service.Change(("new",), ("gone",), ("off", "slower"))
        assert set(sched.names) == {"keep", "slower", "new"}
        assert sched.next_due("keep") == keep_due  # untouched: its cadence did not move
        assert sched._entries["slower"].interval == 120.0
        assert rt.catalog_hash == done.version.hash != done.old_hash
    finally:
        await server.stop(rt)


@pytest.fixture
async def booted(tmp_path: Path) -> Any:
    catalog = small_catalog(tmp_path, checks=[_check("svc-cmd")], runbooks=[
        {"name": "two-steps", "approval": "none", "environment": "test",
         "steps": [{"command": [sys.executable, "-c", "import time; time.sleep(1.5); print('step one')"]},
                   {"command": [sys.executable, "-c", "print('step two')"]}]},
        {"name": "deploy", "environment": "prod", "steps": [{"command": [sys.executable, "-c", "print('v1')"]}]},
    ], aliases=[], users=[{"name": "you", "roles": ["operator"]}, {"name": "boss", "roles": ["approver"]}])
    async with inprocess.booted(tmp_path, catalog) as (rt, fake):
        yield rt, fake


async def test_a_removed_failing_check_makes_its_system_healthy_again(booted: Any) -> None:
    rt, _fake = booted
    assert rt.monitor is not None
    for _ in range(3):  # max_attempts: hard CRITICAL
        rt.monitor.record("svc-cmd", ProbeResult("CRITICAL", "CRITICAL - down"))
    assert rt.monitor.system_healthy["sys"] is False
    _edit(rt, lambda data: data.update(checks=[]))
    await catalog_service.reload_catalog(rt, actor=ADMIN)
    await inprocess.settle(rt)
    assert rt.monitor.system_healthy["sys"] is True
    healthy = [e for e in rt.bus.history if isinstance(e, SystemHealthChanged) and e.healthy]
    assert healthy and healthy[-1].correlation_id.startswith("catalog:")
    rt.monitor.record("svc-cmd", ProbeResult("CRITICAL", "late"))  # a run under way when it was removed
    assert rt.monitor.system_healthy["sys"] is True


async def test_rooms_and_users_follow(booted: Any) -> None:
    rt, fake = booted

    def change(data: dict[str, Any]) -> None:
        data["rooms"].append({"name": "stakeholders"})
        data["users"].append({"name": "newcomer", "roles": ["viewer"]})

    _edit(rt, change)
    done = await catalog_service.reload_catalog(rt, actor=ADMIN)
    assert done.changes["rooms"].added == ("stakeholders",) and done.changes["users"].added == ("newcomer",)
    assert ("fake", "stakeholders") in rt.rooms.routes
    reply = await inprocess.ask(fake, "you", "help", room="stakeholders")
    assert "status" in reply
    assert (await access.actor_by_name(rt, name="newcomer", door="api")).roles == frozenset({"viewer"})


async def test_a_run_awaiting_approval_of_a_changed_runbook_is_cancelled_and_can_be_asked_again(
        booted: Any) -> None:
    rt, fake = booted
    you = await access.actor_by_name(rt, name="you", door="api")
    asked = await runbooks.request_run(rt, actor=you, runbook="deploy", params={})
    assert asked.status == "awaiting_approval" and asked.approval_id is not None
    before = len(fake.sent)
    _edit(rt, lambda data: data["runbooks"][-1]["steps"][0].update(
        command=[sys.executable, "-c", "print('v2')"]))
    done = await catalog_service.reload_catalog(rt, actor=ADMIN)
    assert done.changes["runbooks"].changed == ("deploy",)
    assert any(f"#{asked.id}" in note and "ask again" in note for note in done.notes), done.notes
    async with rt.read() as s:
        row = await s.get(ExecutionRow, asked.id)
    assert row is not None and row.status == "cancelled" and row.error == "cancelled by catalog reload (opsroom)"
    said = await inprocess.said(rt, fake, before)
    assert any(f"execution #{asked.id}" in t and "cancelled by catalog reload" in t for t in said), said
    boss = await access.actor_by_name(rt, name="boss", door="api")
    with pytest.raises(OpsroomError):
        await approvals.decide(rt, actor=boss, approval_id=asked.approval_id, approve=True, reason=None)
    again = await runbooks.request_run(rt, actor=you, runbook="deploy", params={})  # not "already in progress"
    assert again.status == "awaiting_approval" and again.catalog_hash == rt.catalog_hash


async def test_a_running_execution_finishes_with_the_runbook_it_started_with(booted: Any) -> None:
    rt, _fake = booted
    you = await access.actor_by_name(rt, name="you", door="api")
    row = await runbooks.request_run(rt, actor=you, runbook="two-steps", params={})
    old_hash = rt.catalog_hash
    assert row.catalog_hash == old_hash
    await asyncio.sleep(0.3)  # its first step runs
    _edit(rt, lambda data: data.update(runbooks=[r for r in data["runbooks"] if r["name"] != "two-steps"]))
    done = await catalog_service.reload_catalog(rt, actor=ADMIN)
    assert done.changes["runbooks"].removed == ("two-steps",)
    await inprocess.settle(rt)
    async with rt.read() as s:
        finished = await s.get(ExecutionRow, row.id)
    assert finished is not None and finished.status == "succeeded", finished.error if finished else None
    assert "step one" in finished.output and "step two" in finished.output
    assert finished.catalog_hash == old_hash != rt.catalog_hash


async def test_sighups_during_a_reload_make_one_more_never_a_queue(booted: Any) -> None:
    """SIGHUP reaches this process's server (it runs in the main thread with a catalog path)."""
    rt, _fake = booted
    assert rt.hangup is not None, "the SIGHUP handler is not installed"
    _edit(rt, lambda data: data["checks"].append(_check("by-signal")))
    for _ in range(5):
        os.kill(os.getpid(), signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "by-signal" not in rt.catalog.checks and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert "by-signal" in rt.catalog.checks
    await asyncio.sleep(1.0)  # room for any reload still to come
    while rt.catalog_reload_lock.locked():
        await asyncio.sleep(0.05)
    records = await audit.list_records(rt, actor=SYSTEM, action="catalog.reload", limit=20)
    assert 1 <= len(records) <= 2 and {r.actor for r in records} == {"signal:SIGHUP"}, records
    assert {r.outcome for r in records} == {"applied"}


async def test_what_a_reload_cannot_apply_is_said(booted: Any) -> None:
    """Chat platforms connect at start: a reload that changes them applies the rest and says so."""
    rt, _fake = booted

    def change(data: dict[str, Any]) -> None:
        data["platforms"] = [{"name": "pager", "type": "fake"}]
        data["rooms"] = [{"name": "ops", "bind": ["pager:#ops"]}]

    _edit(rt, change)
    done = await catalog_service.reload_catalog(rt, actor=ADMIN)
    assert done.changes["platforms"].added == ("pager",) and done.changes["rooms"].changed == ("ops",)
    assert any("pager" in note and "restart the server" in note for note in done.notes), done.notes
    assert rt.rooms is not None and "pager" not in rt.rooms.adapters  # nothing half-started
    assert done.version.hash != done.old_hash  # the room's new binding is part of the version
    # A platform's settings hold credentials: compared and reported, but kept out of the version hash.
    _edit(rt, lambda data: data["platforms"][0].update(burst=5))
    again = await catalog_service.reload_catalog(rt, actor=ADMIN)
    assert again.changes == {"platforms": catalog_service.Change(changed=("pager",))}
    assert again.version.hash == again.old_hash
