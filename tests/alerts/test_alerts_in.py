"""Alerts in, end to end: a real Alertmanager (Debian's 0.25) posts to a real opsroom server on
loopback; the room is the fake platform, people linked as in the chat tests."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from opsroom.alerts.models import AlertRow, SilenceRow
from opsroom.audit.models import AuditRecordRow
from opsroom.automation.models import RuleRunRow
from opsroom.runbooks.models import ExecutionRow
from tests.alerts.alertmanager import TOKEN, Alertmanager, firing, push_alerts, resolved, silences
from tests.chat.drivers.fake import FakeDriver
from tests.chat.harness import Served, serve

LABELS = {"alertname": "HighLatency", "service": "service-b", "severity": "page"}


def catalog(tmp: Path, am: Alertmanager, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "systems": [{"name": "system-a", "title": "System A", "environment": "prod"}],
        "services": [{"name": "service-b", "system": "system-a"}, {"name": "service-c", "system": "system-a"}],
        "checks": [],
        "aliases": [],
        "alert_sources": [{"name": "prometheus", "kind": "alertmanager", "token": TOKEN, "api_url": am.url,
                           "service": "{{ labels.service }}"}],
        "runbooks": [{
            "name": "restart", "environment": "prod", "approval": "none",
            "parameters": {"service": {"type": "service"}},
            "steps": [{"command": [sys.executable, "-c", "import sys; open(sys.argv[1], 'a').write(sys.argv[2])",
                                   str(tmp / "restarted.txt"), "{{ params.service }}"]}],
        }],
        "rules": [{"name": "latency-restart", "when": {"alert": 'alertname=~"HighLat.*", severity="page"'},
                   "then": {"runbook": "restart", "params": {"service": "{{ service }}"}},
                   "policy": {"verify": None}}],
    }
    data.update(extra)
    return data


async def _count(served: Served, stmt: Any) -> int:
    async with served.rt.read() as s:
        return int((await s.execute(stmt)).scalar_one())


async def _until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_firing_repeats_and_resolved_make_one_alert_one_notice_one_run_one_recovery(tmp_path: Path) -> None:
    am = Alertmanager("http://127.0.0.1:9/unset", repeat_interval="1s", group_interval="200ms")
    driver = FakeDriver()
    try:
        async with serve(tmp_path, driver, **catalog(tmp_path, am)) as served:
            await driver.attach(served)
            am.write_config(f"{served.base}/api/v1/alerts/prometheus")
            await asyncio.to_thread(am.start)
            alert = firing(LABELS, annotations={"summary": "p99 latency 2.3 s"})
            await push_alerts(am.url, [alert])

            async def repeated() -> bool:
                rows = await _rows(served)
                return len(rows) == 1 and rows[0].repeats >= 2
            await _until(repeated, what="two repeats of the group")  # repeat_interval 1s: ~2.5 s
            await push_alerts(am.url, [resolved(alert)])

            async def closed() -> bool:
                rows = await _rows(served)
                return bool(rows) and rows[0].status == "resolved"
            await _until(closed, what="the resolved notification")
            await served.settle()
            rows = await _rows(served)
            assert len(rows) == 1 and rows[0].service == "service-b" and rows[0].system == "system-a"
            said = driver.received()
            problems = [t for t in said if "ALERT firing" in t]
            recoveries = [t for t in said if "alert resolved" in t]
            assert len(problems) == 1, said
            assert problems[0].startswith("[PROD] ") and "HighLatency on service-b (page)" in problems[0]
            assert "p99 latency 2.3 s" in problems[0]
            assert len(recoveries) == 1, said
            assert await _count(served, select(func.count()).select_from(RuleRunRow).where(
                RuleRunRow.outcome == "triggered")) == 1
            assert await _count(served, select(func.count()).select_from(ExecutionRow)) == 1
            assert (tmp_path / "restarted.txt").read_text() == "service-b"
            # Repeats are not audited; the firing and the resolve are.
            assert await _count(served, select(func.count()).select_from(AuditRecordRow).where(
                AuditRecordRow.action == "alert.received")) == 2
    finally:
        await asyncio.to_thread(am.close)


async def _rows(served: Served) -> list[AlertRow]:
    async with served.rt.read() as s:
        return list((await s.execute(select(AlertRow))).scalars())


async def test_a_wrong_token_is_refused_and_audited_and_stores_nothing(tmp_path: Path) -> None:
    am = Alertmanager("http://127.0.0.1:9/unset")
    try:
        async with serve(tmp_path, None, **catalog(tmp_path, am)) as served, httpx.AsyncClient() as client:
            body = (Path(__file__).parent.parent / "fixtures" / "alerts" / "am_real_firing.json").read_bytes()
            for auth in ("Bearer wrong-token-0123456789", "", f"Basic {TOKEN}", f"Bearer {TOKEN}x"):
                r = await client.post(f"{served.base}/api/v1/alerts/prometheus", content=body,
                                      headers={"Authorization": auth, "Content-Type": "application/json"})
                assert r.status_code == 401, r.text
                assert "token" in r.json()["detail"]
            assert await _rows(served) == []
            assert await _count(served, select(func.count()).select_from(AuditRecordRow).where(
                AuditRecordRow.action == "alert.refused", AuditRecordRow.outcome == "denied")) == 4
            r = await client.post(f"{served.base}/api/v1/alerts/prometheus", content=body,
                                  headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200 and r.json()["fired"] == 1, r.text
            r = await client.post(f"{served.base}/api/v1/alerts/nosuch", content=body,
                                  headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 404 and "alert_sources" in r.json()["hint"]
    finally:
        await asyncio.to_thread(am.close)


async def test_a_malformed_delivery_is_422_naming_the_field_and_stores_nothing_of_it(tmp_path: Path) -> None:
    am = Alertmanager("http://127.0.0.1:9/unset")
    try:
        async with serve(tmp_path, None, **catalog(tmp_path, am)) as served, httpx.AsyncClient() as client:
            good = {"version": "4", "status": "firing", "groupKey": "{}:{}", "receiver": "opsroom",
                    "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": am.url,
                    "truncatedAlerts": 0,
                    "alerts": [{"status": "firing", "labels": LABELS, "annotations": {},
                                "startsAt": "2026-11-30T05:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                                "generatorURL": "", "fingerprint": "aaaa"}]}
            bad = {**good, "alerts": [*good["alerts"], {**good["alerts"][0], "fingerprint": "bbbb",
                                                         "startsAt": "yesterday"}]}
            r = await client.post(f"{served.base}/api/v1/alerts/prometheus", json=bad,
                                  headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 422, r.text
            assert "alerts[1].startsAt" in r.json()["detail"]
            assert await _rows(served) == []  # the good first alert was not stored either
    finally:
        await asyncio.to_thread(am.close)


async def test_silence_typed_in_chat_is_created_in_alertmanager_and_expired_there_when_removed(
        tmp_path: Path) -> None:
    am = Alertmanager("http://127.0.0.1:9/unset")
    driver = FakeDriver()
    try:
        async with serve(tmp_path, driver, **catalog(tmp_path, am)) as served:
            await driver.attach(served)
            am.write_config(f"{served.base}/api/v1/alerts/prometheus")
            await asyncio.to_thread(am.start)
            await driver.say("alice", "silence service-b 1h because deploy")
            await served.settle()
            async with served.rt.read() as s:
                row = (await s.execute(select(SilenceRow))).scalar_one()
            assert row.service == "service-b" and row.reason == "deploy" and len(row.remote) == 1
            there = [x for x in await silences(am.url) if x["id"] == row.remote[0]["id"]]
            assert len(there) == 1 and there[0]["status"]["state"] == "active"
            assert there[0]["matchers"] == [{"name": "service", "value": "service-b", "isRegex": False,
                                             "isEqual": True}]
            assert "deploy" in there[0]["comment"] and there[0]["createdBy"] == "opsroom:you"
            assert abs(_epoch(there[0]["endsAt"]) - (row.starts_at + 3600)) < 2
            assert any("silenced service-b" in t and "also set in prometheus" in t for t in driver.received())

            # While silenced: an alert of service-b is stored and listed, but not announced and runs no rule.
            await push_alerts(am.url, [firing(LABELS)])
            await asyncio.sleep(1.0)
            assert await _rows(served) == []  # Alertmanager itself holds it back now
            await driver.say("alice", f"unsilence {row.id}")
            await served.settle()
            there = [x for x in await silences(am.url) if x["id"] == row.remote[0]["id"]]
            assert there[0]["status"]["state"] == "expired"
            assert any(f"removed silence #{row.id}" in t for t in driver.received())
            # Expired there, Alertmanager sends the held alert: now it is announced.
            await _until(lambda: _rows_nonempty(served), what="the alert after the silence ended")
    finally:
        await asyncio.to_thread(am.close)


async def _rows_nonempty(served: Served) -> bool:
    return bool(await _rows(served))


def _epoch(text: str) -> float:
    from opsroom.alerts.alertmanager_api import parse_time

    return parse_time(text)


@pytest.mark.parametrize("line, answer", [
    ("silence service-b 1h", "needs a reason"),
    ("silence service-b forever because x", "cannot read"),
    ("silence nosuch 1h because x", "don't know a service or system"),
    ("silence service-b 30d because x", "two weeks"),
])
async def test_a_silence_that_cannot_be_made_says_why_and_makes_none(tmp_path: Path, line: str,
                                                                       answer: str) -> None:
    am = Alertmanager("http://127.0.0.1:9/unset")
    driver = FakeDriver()
    try:
        async with serve(tmp_path, driver, **catalog(tmp_path, am)) as served:
            await driver.attach(served)
            await driver.say("alice", line)
            await served.settle()
            assert answer in driver.received()[-1], driver.received()
            assert await _count(served, select(func.count()).select_from(SilenceRow)) == 0
    finally:
        await asyncio.to_thread(am.close)
