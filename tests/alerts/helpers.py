"""What the alert tests share: a catalog with one source of each kind, payloads and signatures
built as the senders' documentation says (computed here with hashlib, not with opsroom's own
signing code), and small waits and counts over the real store."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from opsroom.alerts.models import AlertRow
from opsroom.audit.models import AuditRecordRow
from tests.alerts.alertmanager import TOKEN
from tests.chat.harness import Served

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "alerts"
GRAFANA_TOKEN = "grafana-test-token-0123456789"
GRAFANA_SECRET = "grafana-test-secret-0123456789"
GRAFANA_TS = "X-Grafana-Alerting-Timestamp"
WEBHOOK_SECRET = "webhook-test-secret-0123456789"
AM_TOKEN = TOKEN


def sources(*, api_url: str | None = None) -> list[dict[str, Any]]:
    """One source of each kind; `monitor` maps the service from the webhook's `host` field."""
    prometheus: dict[str, Any] = {"name": "prometheus", "kind": "alertmanager", "token": AM_TOKEN,
                                  "service": "{{ labels.service }}", "system": "{{ labels.system }}"}
    if api_url is not None:
        prometheus["api_url"] = api_url
    return [
        prometheus,
        {"name": "grafana-token", "kind": "grafana", "token": GRAFANA_TOKEN, "system": "{{ labels.team }}"},
        {"name": "grafana-hmac", "kind": "grafana", "hmac_secret": GRAFANA_SECRET, "timestamp_header": GRAFANA_TS,
         "system": "{{ labels.team }}"},
        {"name": "monitor", "kind": "webhook", "hmac_secret": WEBHOOK_SECRET, "alerts": "data.items",
         "service": "{{ labels.host }}",
         "fields": {"name": "{{ alert.check }}", "status": "{{ alert.state }}", "severity": "{{ alert.level }}",
                    "summary": "{{ alert.message }}", "starts_at": "{{ alert.time }}",
                    "fingerprint": "{{ alert.id | default('') }}", "url": "{{ alert.link | default('') }}",
                    "labels": {"host": "{{ alert.host }}", "sender": "{{ body.sender | default('') }}"}}},
        {"name": "monitor-single", "kind": "webhook", "hmac_secret": WEBHOOK_SECRET, "service": "{{ labels.host }}",
         "fields": {"name": "{{ alert.check }}", "status": "{{ alert.state }}", "severity": "{{ alert.level }}",
                    "summary": "{{ alert.message }}", "starts_at": "{{ alert.time }}",
                    "url": "{{ alert.link | default('') }}", "labels": {"host": "{{ alert.host }}"}}},
    ]


def catalog(tmp: Path, *, api_url: str | None = None, **extra: Any) -> dict[str, Any]:
    """system-a (prod): service-b, service-c, db-1; system-b (test): db-2; `blue` for Grafana's team."""
    data: dict[str, Any] = {
        "systems": [{"name": "system-a", "title": "System A", "environment": "prod"},
                    {"name": "system-b", "title": "System B", "environment": "test"},
                    {"name": "blue", "title": "Blue", "environment": "test"}],
        "services": [{"name": "service-b", "system": "system-a"}, {"name": "service-c", "system": "system-a"},
                     {"name": "db-1", "system": "system-a"}, {"name": "db-2", "system": "system-b"}],
        "checks": [],
        "aliases": [],
        "alert_sources": sources(api_url=api_url),
        "runbooks": [{
            "name": "note", "environment": "test", "approval": "none",
            "parameters": {"text": {"type": "string"}},
            "steps": [{"command": ["/bin/sh", "-c", 'printf "%s\\n" "$1" >> "$2"', "note", "{{ params.text }}",
                                   str(tmp / "runs.txt")]}],
        }],
        "rules": [],
    }
    data.update(extra)
    return data


def runs(tmp: Path) -> list[str]:
    """What the `note` runbook wrote, one line per run."""
    path = tmp / "runs.txt"
    return path.read_text().splitlines() if path.exists() else []


def am_alert(labels: dict[str, str], *, status: str = "firing", starts_at: str = "2026-11-30T05:00:00Z",
             summary: str = "", fingerprint: str | None = None,
             ends_at: str = "0001-01-01T00:00:00Z") -> dict[str, Any]:
    """One alert of an Alertmanager webhook body (version 4)."""
    fp = fingerprint or hashlib.sha256(json.dumps(sorted(labels.items())).encode()).hexdigest()[:16]
    return {"status": status, "labels": labels, "annotations": {"summary": summary} if summary else {},
            "startsAt": starts_at, "endsAt": ends_at, "generatorURL": "", "fingerprint": fp}


def am_body(alerts: list[dict[str, Any]], *, external_url: str = "http://127.0.0.1:9/") -> dict[str, Any]:
    return {"version": "4", "status": alerts[0]["status"], "groupKey": "{}:{}", "receiver": "opsroom",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": external_url,
            "truncatedAlerts": 0, "alerts": alerts}


async def post_am(served: Served, alerts: list[dict[str, Any]], **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=20) as client:
        return await client.post(f"{served.base}/api/v1/alerts/prometheus", json=am_body(alerts, **kw),
                                 headers={"Authorization": f"Bearer {AM_TOKEN}"})


def hex_hmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def grafana_signed(body: bytes, ts: int | None = None) -> dict[str, str]:
    """Grafana's HMAC headers: hex HMAC-SHA256 of `timestamp:body`, timestamp in its own header."""
    ts = int(time.time()) if ts is None else ts
    return {"X-Grafana-Alerting-Signature": hex_hmac(GRAFANA_SECRET, f"{ts}:".encode() + body), GRAFANA_TS: str(ts)}


def webhook_signed(body: bytes, ts: int | None = None, secret: str = WEBHOOK_SECRET) -> dict[str, str]:
    """docs/alerts.md: sha256=hex(HMAC-SHA256(secret, timestamp + "." + body))."""
    ts = int(time.time()) if ts is None else ts
    return {"X-Opsroom-Timestamp": str(ts),
            "X-Opsroom-Signature": "sha256=" + hex_hmac(secret, f"{ts}.".encode() + body)}


async def count(served: Served, stmt: Any) -> int:
    async with served.rt.read() as s:
        return int((await s.execute(stmt)).scalar_one())


async def alert_rows(served: Served) -> list[AlertRow]:
    async with served.rt.read() as s:
        return list((await s.execute(select(AlertRow).order_by(AlertRow.id))).scalars())


async def audited(served: Served, action: str, outcome: str | None = None) -> int:
    stmt = select(func.count()).select_from(AuditRecordRow).where(AuditRecordRow.action == action)
    if outcome is not None:
        stmt = stmt.where(AuditRecordRow.outcome == outcome)
    return await count(served, stmt)


async def until(predicate: Callable[[], Awaitable[bool]], *, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
