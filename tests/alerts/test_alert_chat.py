"""Alerts in chat and over the JSON API: listing, acknowledging, silencing, and alerts in the
answers about health, with the fake platform's people (alice -> you, the operator; bob -> boss,
the approver; carol unlinked; dave -> dev, a viewer)."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy import func, select

from opsroom.alerts.models import AlertRow, SilenceRow
from tests.alerts.helpers import alert_rows, am_alert, catalog, count, post_am
from tests.chat.drivers.fake import FakeDriver
from tests.chat.harness import Served, said_after, serve
from tests.factories import link, token_for

HIGH = {"alertname": "HighLatency", "service": "service-b", "severity": "page"}
DISK = {"alertname": "DiskFull", "service": "service-c", "severity": "warning"}


async def _silences(served: Served) -> list[SilenceRow]:
    async with served.rt.read() as s:
        return list((await s.execute(select(SilenceRow).where(SilenceRow.expired_at.is_(None)))).scalars())


async def test_alerts_from_chat_list_show_ack_silence_and_count_in_health(tmp_path: Path) -> None:
    driver = FakeDriver()
    async with serve(tmp_path, driver, **catalog(tmp_path)) as served:
        await driver.attach(served)
        await link(served.rt, driver.name, driver.account_id("dave"), "dev", "dave")
        assert "healthy" in await said_after(served, driver, "alice", "health system-a")
        r = await post_am(served, [am_alert(HIGH, summary="p99 latency 2.3 s"), am_alert(DISK)])
        assert r.json()["fired"] == 2, r.text
        high, disk = (x.id for x in await alert_rows(served))

        listed = await said_after(served, driver, "alice", "alerts")
        assert listed.startswith("2 firing:"), listed
        assert f"#{high} HighLatency on service-b (page)" in listed and "p99 latency 2.3 s" in listed
        assert f"#{disk} DiskFull on service-c (warning)" in listed
        shown = await said_after(served, driver, "alice", f"alert {high}")
        assert "labels: alertname=HighLatency, service=service-b, severity=page" in shown, shown
        assert "firing · from prometheus" in shown

        said = await said_after(served, driver, "alice", f"ack {high}")
        assert said.count(f"alert #{high} HighLatency acknowledged by you") == 1, said
        again = await said_after(served, driver, "bob", f"ack {high}")
        assert "already acknowledged by you" in again and "acknowledged by boss" not in again, again
        assert [t for t in driver.received() if "acknowledged by" in t and "already" not in t] == [said]

        # A viewer may look but not act; nothing changes.
        refused = await said_after(served, driver, "dave", f"ack {disk}")
        assert "may not acknowledge alerts" in refused and "alert.ack" in refused, refused
        refused = await said_after(served, driver, "dave", "silence service-c 1h because i said so")
        assert "may not silence alerts" in refused, refused
        assert "link" in await said_after(served, driver, "carol", f"ack {disk}")
        assert [x.acked_by for x in await alert_rows(served)] == ["you", None]
        assert await _silences(served) == []

        running = await said_after(served, driver, "alice", "is service-b running")
        assert f"ALERT #{high} HighLatency (page, acked by you) firing since" in running, running
        health = await said_after(served, driver, "alice", "health system-a")
        assert "System A is UNHEALTHY" in health and f"ALERT #{high}" not in health, health
        assert "service-b CRITICAL (1 alert)" in health and "service-c WARNING (1 alert)" in health, health
        status = await said_after(served, driver, "alice", "status")
        assert f"System A: UNHEALTHY (alert #{high} HighLatency, alert #{disk} DiskFull)" in status, status

        await said_after(served, driver, "alice", "silence service-c 1h because disk swap")
        (silence,) = await _silences(served)
        listed = await said_after(served, driver, "alice", "silences")
        assert f"#{silence.id} service-c until" in listed and 'by you: "disk swap"' in listed, listed
        assert f"#{disk} DiskFull on service-c (warning, silenced #{silence.id})" in await said_after(
            served, driver, "alice", "alerts")
        refused = await said_after(served, driver, "bob", f"unsilence {silence.id}")
        assert "may not remove silences" in refused, refused
        assert [s.id for s in await _silences(served)] == [silence.id]

        r = await post_am(served, [am_alert(HIGH, status="resolved", ends_at="2026-11-30T05:10:00Z")])
        assert r.json()["resolved"] == 1
        health = await said_after(served, driver, "alice", "health system-a")
        assert "System A is healthy" in health, health  # the silenced warning does not count
        assert "removed silence" in await said_after(served, driver, "alice", f"unsilence {silence.id}")
        assert await _silences(served) == []
        assert "System A is UNHEALTHY" in await said_after(served, driver, "alice", "health system-a")


async def test_the_json_api_lists_shows_acks_and_manages_silences(tmp_path: Path) -> None:
    async with serve(tmp_path, None, **catalog(tmp_path)) as served, httpx.AsyncClient(timeout=20) as client:
        you = {"Authorization": f"Bearer {await token_for(served.rt, 'you')}"}
        dev = {"Authorization": f"Bearer {await token_for(served.rt, 'dev')}"}
        api = f"{served.base}/api/v1"
        assert (await client.get(f"{api}/alerts")).status_code == 401
        await post_am(served, [am_alert(HIGH, summary="slow")])
        (row,) = await alert_rows(served)

        listed = (await client.get(f"{api}/alerts", headers=dev)).json()
        assert [(a["id"], a["name"], a["service"], a["state"]) for a in listed] == [
            (row.id, "HighLatency", "service-b", "CRITICAL")]
        one = (await client.get(f"{api}/alerts/{row.id}", headers=dev)).json()
        assert one["labels"] == HIGH and one["repeats"] == 0 and one["summary"] == "slow"
        assert (await client.get(f"{api}/alerts/{row.id + 1}", headers=dev)).status_code == 404

        r = await client.post(f"{api}/alerts/{row.id}/ack", headers=dev)
        assert r.status_code == 403, r.text
        r = await client.post(f"{api}/alerts/{row.id}/ack", headers=you)
        assert r.status_code == 200 and r.json()["acked_by"] == "you", r.text
        assert await count(served, select(func.count()).select_from(AlertRow).where(AlertRow.acked_by == "you")) == 1

        body = {"what": "service-b", "duration": "1h", "reason": "deploy"}
        assert (await client.post(f"{api}/silences", json=body, headers=dev)).status_code == 403
        r = await client.post(f"{api}/silences", json={**body, "duration": "forever"}, headers=you)
        assert r.status_code == 422 and "duration" in r.json()["detail"], r.text
        r = await client.post(f"{api}/silences", json=body, headers=you)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        listed = (await client.get(f"{api}/silences", headers=dev)).json()
        assert [(s["id"], s["service"], s["reason"], s["created_by"]) for s in listed] == [
            (sid, "service-b", "deploy", "you")]
        assert (await client.get(f"{api}/alerts", headers=dev)).json()[0]["silenced_by"] == sid
        assert (await client.delete(f"{api}/silences/{sid}", headers=dev)).status_code == 403
        assert (await client.delete(f"{api}/silences/{sid}", headers=you)).status_code == 200
        assert (await client.get(f"{api}/silences", headers=you)).json() == []
        assert (await client.delete(f"{api}/silences/{sid}", headers=you)).status_code == 404
