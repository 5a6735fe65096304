"""Acceptance point 3 through the real endpoint: Grafana (bearer, HMAC) and the signed webhook,
posted over HTTP to a whole opsroom served on loopback with the fake chat platform as the room."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.alerts.helpers import (
    FIXTURES,
    GRAFANA_TOKEN,
    alert_rows,
    audited,
    catalog,
    grafana_signed,
    webhook_signed,
)
from tests.chat.drivers.fake import FakeDriver
from tests.chat.harness import Served, serve


def _grafana_headers(source: str, body: bytes, ts: int | None = None) -> dict[str, str]:
    if source == "grafana-token":
        return {"Authorization": f"Bearer {GRAFANA_TOKEN}", "Content-Type": "application/json"}
    return {**grafana_signed(body, ts), "Content-Type": "application/json"}


async def _post(served: Served, source: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=20) as client:
        return await client.post(f"{served.base}/api/v1/alerts/{source}", content=body, headers=headers)


@pytest.mark.parametrize("source", ["grafana-token", "grafana-hmac"])
async def test_grafana_fires_once_announces_once_dedupes_a_repeat_and_resolves_once(tmp_path: Path,
                                                                                  source: str) -> None:
    driver = FakeDriver()
    firing = (FIXTURES / "grafana_firing.json").read_bytes()
    resolved = (FIXTURES / "grafana_resolved.json").read_bytes()
    async with serve(tmp_path, driver, **catalog(tmp_path)) as served:
        await driver.attach(served)
        r = await _post(served, source, firing, _grafana_headers(source, firing))
        assert r.status_code == 200, r.text
        assert r.json()["fired"] == 2 and r.json()["received"] == 2
        # The repeat: same fingerprints and startsAt (signed anew: a signature is good once).
        r = await _post(served, source, firing, _grafana_headers(source, firing, int(time.time()) + 1))
        assert r.status_code == 200, r.text
        assert r.json()["fired"] == 0 and r.json()["repeats"] == 2
        await served.settle()
        rows = await alert_rows(served)
        assert [(x.name, x.system, x.repeats) for x in rows] == [
            ("High memory usage", "blue", 1), ("High CPU usage", "blue", 1)]
        mem = rows[0]
        assert mem.summary == "Memory above 90% in zone us-1"
        assert mem.url == "https://grafana.example.com/alerting/grafana/1afz29v7z/view"
        assert rows[1].url == "https://grafana.example.com/d/shop-cpu"  # panelURL empty: the dashboard
        notices = [t for t in driver.received() if "ALERTS firing" in t or "ALERT firing" in t]
        assert len(notices) == 1, driver.received()
        assert "2 ALERTS firing" in notices[0] and "High memory usage" in notices[0]

        r = await _post(served, source, resolved, _grafana_headers(source, resolved, int(time.time()) + 2))
        assert r.status_code == 200 and r.json()["resolved"] == 1, r.text
        r = await _post(served, source, resolved, _grafana_headers(source, resolved, int(time.time()) + 3))
        assert r.status_code == 200 and r.json()["resolved"] == 0, r.text  # the resolve repeated
        await served.settle()
        rows = await alert_rows(served)
        assert [x.status for x in rows] == ["resolved", "firing"]
        said = driver.received()
        assert len([t for t in said if "alert resolved" in t]) == 1, said
        assert len([t for t in said if "firing" in t.lower() and "ALERT" in t]) == 1, said
        assert await audited(served, "alert.received") == 2  # the firing and the resolve, not repeats


async def test_grafana_hmac_without_the_right_signature_is_refused(tmp_path: Path) -> None:
    firing = (FIXTURES / "grafana_firing.json").read_bytes()
    async with serve(tmp_path, None, **catalog(tmp_path)) as served:
        ts = int(time.time())
        good = grafana_signed(firing, ts)
        body_only = {"X-Grafana-Alerting-Signature": grafana_signed(firing, ts)["X-Grafana-Alerting-Signature"]}
        for headers in ({}, body_only, {**good, "X-Grafana-Alerting-Timestamp": str(ts + 1)},
                        {"Authorization": f"Bearer {GRAFANA_TOKEN}"}):
            r = await _post(served, "grafana-hmac", firing, headers)
            assert r.status_code == 401, r.text
        assert await alert_rows(served) == []
        assert await audited(served, "alert.refused", "denied") == 4


async def test_signed_webhook_single_and_batch_are_mapped_by_the_source_templates(tmp_path: Path) -> None:
    driver = FakeDriver()
    single = (FIXTURES / "webhook_single.json").read_bytes()
    batch = (FIXTURES / "webhook_batch.json").read_bytes()
    async with serve(tmp_path, driver, **catalog(tmp_path)) as served:
        await driver.attach(served)
        r = await _post(served, "monitor-single", single, webhook_signed(single))
        assert r.status_code == 200 and r.json()["fired"] == 1, r.text
        r = await _post(served, "monitor", batch, webhook_signed(batch))
        assert r.status_code == 200, r.text
        assert r.json()["received"] == 2 and r.json()["fired"] == 1 and r.json()["stored"] == 1, r.text
        await served.settle()
        rows = await alert_rows(served)
        by = {(x.source, x.name): x for x in rows}
        disk = by[("monitor-single", "disk-full")]
        assert (disk.status, disk.severity, disk.service, disk.system) == ("firing", "critical", "db-1", "system-a")
        assert disk.summary == "Disk / at 97%" and disk.starts_at == 1704164645.0
        assert disk.url == "https://monitor.example.com/checks/disk-full?host=db-1"
        late = by[("monitor", "backup-late")]
        assert (late.status, late.service, late.system, late.fingerprint) == ("firing", "db-2", "system-b",
                                                                             "backup-late/db-2")
        assert late.labels == {"host": "db-2", "sender": "monitor.example.com"}
        assert late.starts_at == 1704164400.0  # 04:00+01:00
        cleared = by[("monitor", "disk-full")]
        assert cleared.status == "resolved" and cleared.service == "db-1"
        said = driver.received()
        assert any("ALERT firing" in t and "disk-full on db-1 (critical)" in t for t in said), said
        assert any("ALERT firing" in t and "backup-late on db-2 (warning)" in t for t in said), said


async def test_replayed_stale_and_future_requests_are_refused_audited_and_change_nothing(tmp_path: Path) -> None:
    single = (FIXTURES / "webhook_single.json").read_bytes()
    async with serve(tmp_path, None, **catalog(tmp_path)) as served:
        signed = webhook_signed(single)
        r = await _post(served, "monitor-single", single, signed)
        assert r.status_code == 200 and r.json()["fired"] == 1, r.text
        before = [(x.id, x.repeats, x.last_seen_at) for x in await alert_rows(served)]
        refused = [
            ("replay", signed, "already received"),
            ("stale", webhook_signed(single, int(time.time()) - 1000), "in the past"),
            ("future", webhook_signed(single, int(time.time()) + 1000), "in the future"),
        ]
        for what, headers, said in refused:
            r = await _post(served, "monitor-single", single, headers)
            assert r.status_code == 401, (what, r.text)
            assert said in r.json()["detail"], (what, r.text)
        assert [(x.id, x.repeats, x.last_seen_at) for x in await alert_rows(served)] == before
        assert await audited(served, "alert.refused", "denied") == 3
        # Just inside the window either way is accepted (a repeat of the same alert).
        for skew in (-250, 250):
            r = await _post(served, "monitor-single", single, webhook_signed(single, int(time.time()) + skew))
            assert r.status_code == 200 and r.json()["repeats"] == 1, r.text


async def test_a_webhook_body_the_templates_cannot_map_is_422_and_stores_nothing(tmp_path: Path) -> None:
    async with serve(tmp_path, None, **catalog(tmp_path)) as served:
        item = {"check": "x", "state": "weird", "host": "db-1", "time": "1704164645"}
        body = json.dumps({"data": {"items": [item]}}).encode()
        r = await _post(served, "monitor", body, webhook_signed(body))
        assert r.status_code == 422, r.text
        assert "data.items[0]" in r.json()["detail"] and "fields.status" in r.json()["detail"]
        assert await alert_rows(served) == []
