"""Attacker: race to exceed a rule's limit. Whoever can make checks fail (take a service down again
and again) or send alerts (a leaked webhook token) fires triggers as fast as they like, on every
server of the cluster at once, through both doors; a rule limited to 3 runs per window still runs
3 times, and every other trigger is a stored, announced hold.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from opsroom.access.identity import SYSTEM
from opsroom.alerts import service as alerts
from opsroom.alerts.book import AlertBook
from opsroom.audit import service as audit
from opsroom.automation.models import RuleRunRow
from opsroom.automation.rules import RulesEngine
from opsroom.catalog.loader import load_catalog
from opsroom.checks.monitor import Monitor
from opsroom.checks.probes import ProbeResult
from opsroom.config import Settings
from opsroom.events import AlertFired, CheckStateChanged, RuleHeld
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime
from opsroom.store.engine import make_engine
from opsroom.store.migrate import upgrade
from tests.alerts.helpers import AM_TOKEN, am_alert, am_body, catalog
from tests.factories import small_catalog

CHECKS = [f"web-{k}" for k in range(8)]
POLICY = {"verify": None, "max_runs": 3, "window": "1h", "cooldown": 0.000001}


def _catalog(tmp: Path) -> Path:
    # Each failing check and each alert is its own run (the parameters differ), so only the
    # budget, never the lock on identical runs, can stop the flood.
    rules = [
        {"name": "on-checks", "when": {"service": "service-b"},
         "then": {"runbook": "note", "params": {"text": "check {{ check }} {{ output }}"}}, "policy": POLICY},
        {"name": "on-alerts", "when": {"alert": 'alertname="Flood"'},
         "then": {"runbook": "note", "params": {"text": "alert {{ labels.instance }}"}}, "policy": POLICY},
    ]
    checks = [{"name": c, "type": "command", "service": "service-b", "max_attempts": 1, "argv": ["true"]}
              for c in CHECKS]
    return small_catalog(tmp, **catalog(tmp, rules=rules, checks=checks))


@asynccontextmanager
async def two_servers(url: str, tmp: Path) -> AsyncIterator[list[Runtime]]:
    """Two servers' doors and rules on one PostgreSQL: a monitor, an alerts book and a rules engine each."""
    engine = make_engine(url)
    await upgrade(engine)
    await engine.dispose()
    path = _catalog(tmp)
    rts: list[Runtime] = []
    try:
        for i in range(2):
            rt = Runtime(settings=Settings(data=tmp / f"data{i}", database_url=url, demo=False),
                         catalog=load_catalog(path))
            rts.append(rt)
            rt.bus.keep_history = True
            rt.rules = RulesEngine(rt)
            rt.rules.attach()
            rt.monitor = Monitor(rt, persist=False)
            rt.alerts = AlertBook(rt)
            await rt.alerts.load()
        # A server writes audit records from its start; the first one of an empty store is a race
        # of its own (two transactions creating the chain's head), not this test's subject.
        await audit.append_alone(rts[0], actor=SYSTEM, action="test.start", target="store")
        yield rts
    finally:
        for rt in rts:
            await rt.bus.drain()
            await rt.close()


def _fail_every_check(rt: Runtime, server: int) -> None:
    assert rt.monitor is not None
    for check in CHECKS:
        rt.monitor.record(check, ProbeResult(state="CRITICAL", output=f"down on {server}", long_output="",
                                             latency_ms=1.0, perfdata={}, down=False))


async def _send_alerts(rt: Runtime, server: int, deliveries: int) -> None:
    for d in range(deliveries):
        body = am_body([am_alert({"alertname": "Flood", "instance": f"s{server}-d{d}-a{a}", "service": "service-b"},
                                 starts_at=starts)
                        # Sender timestamps are the attacker's: far past and future ones change nothing.
                        for a, starts in enumerate(("2026-11-30T05:00:00Z", "2001-01-01T00:00:00Z",
                                                    "2099-12-31T23:59:59Z"))])
        await alerts.receive(rt, source="prometheus", headers={"authorization": f"Bearer {AM_TOKEN}"},
                             body=json.dumps(body).encode())


async def _count(rt: Runtime, stmt: Any) -> int:
    async with rt.read() as s:
        return int((await s.execute(stmt)).scalar_one())


def _seen(rts: list[Runtime], kind: type[Any], **match: str) -> list[Any]:
    return [e for rt in rts for e in rt.bus.history
            if isinstance(e, kind) and all(getattr(e, k) == v for k, v in match.items())]


async def test_a_flood_through_both_doors_on_two_servers_runs_each_rule_three_times(
        pg_own_url: str, tmp_path: Path) -> None:
    async with two_servers(pg_own_url, tmp_path) as rts:
        # Both doors, both servers, at once: every check fails on each server, and each server
        # receives alert deliveries concurrently with it.
        for i, rt in enumerate(rts):
            _fail_every_check(rt, i)
        await asyncio.gather(*(_send_alerts(rt, i, 4) for i, rt in enumerate(rts)))
        for rt in rts:
            await rt.bus.drain()

        changes = _seen(rts, CheckStateChanged)
        fired = _seen(rts, AlertFired)
        assert len(changes) == 2 * len(CHECKS) and len(fired) >= 2 * 4 * 2, "the flood did not arrive"
        for rule, triggers in (("on-checks", len(changes)), ("on-alerts", len(fired))):
            ran = await _count(rts[0], select(func.count()).select_from(ExecutionRow).where(ExecutionRow.rule == rule))
            assert ran == 3, f"rule {rule} ran {ran} times (max 3)"
            stored = {outcome: await _count(rts[1], select(func.count()).select_from(RuleRunRow).where(
                RuleRunRow.rule == rule, RuleRunRow.outcome == outcome)) for outcome in ("triggered", "held")}
            assert stored == {"triggered": 3, "held": triggers - 3}
            held = _seen(rts, RuleHeld, rule=rule)
            assert len(held) == triggers - 3
            assert {h.reason for h in held} == {"ran 3 times in the last 3600s (max 3)"}

        # Later, on either server, through either door: still held (the window is the store's).
        _fail_every_check(rts[1], 9)  # no change of state: nothing new to act on
        monitor = rts[0].monitor
        assert monitor is not None
        for state in ("OK", "CRITICAL"):
            monitor.record(CHECKS[0], ProbeResult(state=state, output="again", long_output="", latency_ms=1.0,
                                                  perfdata={}, down=False))
        await _send_alerts(rts[1], 7, 1)
        for rt in rts:
            await rt.bus.drain()
        assert await _count(rts[0], select(func.count()).select_from(ExecutionRow)) == 6
        assert len(_seen(rts, RuleHeld)) == len(changes) + len(fired) - 6 + 1 + 3
