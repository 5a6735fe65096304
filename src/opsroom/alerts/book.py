"""The alerts a server knows now: the latest occurrence of every alert, the active silences, and
the configured sources. Kept in memory (loaded from the store at start) so a delivery of ten
alerts is deduplicated without a query, and `is service-b running` reads them without one.
The store stays the truth: the book only changes after the transaction that stored a change.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import or_, select

from opsroom.alerts.base import AlertIn, AlertSourceKind
from opsroom.alerts.matchers import Matcher, all_match, parse_matchers
from opsroom.alerts.models import AlertRow, SilenceRow
from opsroom.automation.templates import render
from opsroom.catalog.schema import AlertSource
from opsroom.errors import OpsroomError
from opsroom.plugins import alert_source_kinds
from opsroom.runtime import Runtime

log = structlog.get_logger(__name__)
# How far back the latest occurrence of each alert is loaded at start: a sender's repeats of an
# older one (after a long outage) are still caught by the store's unique key.
REMEMBER_S = 7 * 86400.0
CRITICAL_SEVERITIES = frozenset({"critical", "page", "error", "high", "disaster", "fatal", "emergency"})
QUIET_SEVERITIES = frozenset({"info", "informational", "none", "debug", "low"})


@dataclass(slots=True)
class Known:
    """The latest occurrence of one alert (source, fingerprint), as stored."""

    id: int
    source: str
    fingerprint: str
    starts_at: float
    status: str
    name: str
    severity: str | None
    summary: str
    labels: dict[str, str]
    service: str | None
    system: str | None
    environment: str | None
    url: str | None = None
    ends_at: float | None = None
    acked_by: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def state(self) -> str:
        """What it does to its service's health: CRITICAL, WARNING, or OK for an info alert."""
        sev = (self.severity or "").lower()
        if sev in CRITICAL_SEVERITIES:
            return "CRITICAL"
        return "OK" if sev in QUIET_SEVERITIES else "WARNING"


@dataclass(slots=True)
class Silence:
    id: int
    service: str | None
    system: str | None
    matchers: tuple[Matcher, ...]
    reason: str
    created_by: str
    starts_at: float
    ends_at: float
    remote: list[dict[str, Any]] = field(default_factory=list)

    @property
    def what(self) -> str:
        return self.service or self.system or ", ".join(map(str, self.matchers))

    def covers(self, alert: Known, now: float) -> bool:
        if not self.starts_at <= now < self.ends_at:
            return False
        if self.service is not None:
            return alert.service == self.service
        if self.system is not None:
            return alert.system == self.system
        return bool(self.matchers) and all_match(self.matchers, alert.labels)


_PLAIN_LABEL = re.compile(r"^\{\{\s*labels(?:\.(\w+)|\[\s*['\"](\w+)['\"]\s*\])\s*\}\}$")


def plain_label(template: str | None) -> str | None:
    """The label a `service:` template reads as it is (`{{ labels.service }}`), or None when the
    mapping is more than that (then a silence cannot be turned back into label matchers)."""
    m = _PLAIN_LABEL.match((template or "").strip())
    return (m.group(1) or m.group(2)) if m else None


class AlertBook:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.latest: dict[tuple[str, str], Known] = {}
        self.firing: dict[int, Known] = {}
        self.silences: dict[int, Silence] = {}
        self.sources: dict[str, AlertSourceKind] = {}
        self.configs: dict[str, AlertSource] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.build_sources()

    def build_sources(self) -> None:
        kinds = alert_source_kinds()
        for name, source in self.rt.catalog.alert_sources.items():
            cls = kinds[source.kind].load()
            self.sources[name] = cls(name=name, config=cls.Config.model_validate(source.settings))
            self.configs[name] = source

    def lock(self, source: str) -> asyncio.Lock:
        """One delivery of a source at a time: two copies of a new alert must not both be new."""
        return self._locks.setdefault(source, asyncio.Lock())

    async def load(self) -> None:
        horizon = time.time() - REMEMBER_S
        async with self.rt.read() as s:
            rows = (await s.execute(select(AlertRow).where(
                or_(AlertRow.status == "firing", AlertRow.last_seen_at >= horizon)).order_by(AlertRow.id))).scalars()
            for row in rows:
                self.remember(known_from_row(row))
            silences = (await s.execute(select(SilenceRow).where(
                SilenceRow.expired_at.is_(None), SilenceRow.ends_at > time.time()))).scalars()
            for srow in silences:
                self.silences[srow.id] = silence_from_row(srow)

    def remember(self, known: Known) -> None:
        key = (known.source, known.fingerprint)
        old = self.latest.get(key)
        if old is not None and old.starts_at > known.starts_at:
            return  # an older occurrence arrived late: the newer one stays the one we know
        if old is not None and old.id != known.id:
            self.firing.pop(old.id, None)
        self.latest[key] = known
        if known.status == "firing":
            self.firing[known.id] = known
        else:
            self.firing.pop(known.id, None)

    # --- mapping an alert onto the catalog ---------------------------------

    def place(self, source: str, alert: AlertIn) -> tuple[str | None, str | None, str | None]:
        """(service, system, environment) the source's templates map this alert to."""
        cat, cfg = self.rt.catalog, self.configs[source]
        ctx: dict[str, Any] | None = None
        service = system = None
        if cfg.service:
            ctx = ctx or alert.context()
            service, _ = cat.find_service(_filled(cfg.service, alert, ctx))
        if service is not None:
            system = cat.services[service].system
            return service, system, cat.service_environment(service)
        if cfg.system:
            ctx = ctx or alert.context()
            system, _ = cat.find_system(_filled(cfg.system, alert, ctx))
        if system is not None:
            return None, system, cat.systems[system].environment
        return None, None, cfg.environment

    # --- reading ------------------------------------------------------------

    def silenced(self, alert: Known, now: float | None = None) -> Silence | None:
        now = time.time() if now is None else now
        return next((s for s in self.silences.values() if s.covers(alert, now)), None)

    def of_service(self, service: str) -> list[Known]:
        return [a for a in self.firing.values() if a.service == service]

    def of_system(self, system: str, *, with_services: bool = True) -> list[Known]:
        return [a for a in self.firing.values() if a.system == system and (with_services or a.service is None)]

    def unplaced(self) -> list[Known]:
        return [a for a in self.firing.values() if a.system is None]

    def view(self, a: Known, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        silence = self.silenced(a, now)
        return {"id": a.id, "source": a.source, "name": a.name, "status": a.status, "severity": a.severity,
                "state": a.state, "summary": a.summary, "labels": a.labels, "service": a.service,
                "system": a.system, "environment": a.environment, "since": a.starts_at,
                "age_s": round(now - a.starts_at, 1), "ends_at": a.ends_at, "url": a.url,
                "acked_by": a.acked_by, "silenced_by": silence.id if silence else None}

    def active_silences(self, now: float | None = None) -> list[Silence]:
        now = time.time() if now is None else now
        return [s for s in self.silences.values() if s.ends_at > now]


def _filled(template: str, alert: AlertIn, ctx: dict[str, Any]) -> str:
    """The template over this alert; `{{ labels.X }}`, the usual mapping, read without Jinja
    (a tenth of a delivery's time on the loop), with the same result: the label, or "" without it."""
    label = plain_label(template) if template == template.strip() else None
    # Jinja reads `labels.items` as the dict's method, not the label: those go through Jinja.
    if label is not None and not hasattr(dict, label):
        return alert.labels.get(label, "")
    return _rendered(template, ctx)


def _rendered(template: str, ctx: dict[str, Any]) -> str:
    try:
        return render(template, ctx)
    except OpsroomError:
        return ""  # a label the alert does not carry: it maps to nothing, and is still kept


def known_from_row(row: AlertRow) -> Known:
    return Known(id=row.id, source=row.source, fingerprint=row.fingerprint, starts_at=row.starts_at,
                 status=row.status, name=row.name, severity=row.severity, summary=row.summary,
                 labels=dict(row.labels or {}), service=row.service, system=row.system,
                 environment=row.environment, url=row.url, ends_at=row.ends_at, acked_by=row.acked_by,
                 annotations=dict(row.annotations or {}))


def silence_from_row(row: SilenceRow) -> Silence:
    return Silence(id=row.id, service=row.service, system=row.system,
                   matchers=parse_matchers(row.matchers) if row.matchers else (), reason=row.reason,
                   created_by=row.created_by, starts_at=row.starts_at, ends_at=row.ends_at,
                   remote=list(row.remote or []))
