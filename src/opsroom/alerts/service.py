"""Alerts service: receive a sender's delivery, deduplicate and store it, list and acknowledge.

Receiving: the source proves who it is (a refusal is a 401, audited), the body is parsed whole
(a bad field is a 422 naming it, nothing stored), and every change of one delivery is stored in
one transaction with its audit record. Only then does the in-memory book change and the events
go out: one AlertFired per new occurrence (never for a repeat), one AlertResolved when it ends,
and one AlertsNoticed per system for the room.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from opsroom.access.identity import Actor, alert_source_actor
from opsroom.alerts.base import AlertIn
from opsroom.alerts.book import AlertBook, Known, Silence, known_from_row
from opsroom.alerts.models import AlertRow
from opsroom.audit import service as audit
from opsroom.audit.refusals import RefusalAudit
from opsroom.errors import NotFound, Unauthenticated
from opsroom.eventlog import log as eventlog
from opsroom.events import AlertAcknowledged, AlertFired, AlertResolved, AlertsNoticed, Event
from opsroom.runtime import Runtime

_TABLE = cast(Table, AlertRow.__table__)
_ID = _TABLE.c.id
# Each dialect's own INSERT: both have ON CONFLICT DO NOTHING ... RETURNING, so a copy stored by
# another server (or before the book's horizon) is found, not a failed delivery. Built once, on
# the Core table, with the row as parameters: building `.values(row)` per alert through the ORM
# cost ten times the SQL it ran (most of a delivery's time on the writer).
_INSERTS: dict[str, Any] = {
    name: dialect_insert(_TABLE).on_conflict_do_nothing(
        index_elements=["source", "fingerprint", "starts_at"]).returning(_ID)
    for name, dialect_insert in (("sqlite", sqlite.insert), ("postgresql", postgresql.insert))}
_END_OLD = update(_TABLE).where(_ID == bindparam("b_id")).values(status="resolved", ends_at=bindparam("b_ends"))
_SET_STATUS = update(_TABLE).where(_ID == bindparam("b_id")).values(
    status=bindparam("b_status"), ends_at=bindparam("b_ends"), last_seen_at=bindparam("b_seen"))
_REPEATED = update(_TABLE).where(_ID.in_(bindparam("b_ids", expanding=True))).values(
    last_seen_at=bindparam("b_seen"), repeats=_TABLE.c.repeats + 1)
LIST_LIMIT = 200


def book(rt: Runtime) -> AlertBook:
    found = rt.alerts
    if found is None:
        raise RuntimeError("the alerts book is not running")
    assert isinstance(found, AlertBook)
    return found


def _refusals(rt: Runtime) -> RefusalAudit:
    found = rt.alert_refusals
    if found is None:
        found = rt.alert_refusals = RefusalAudit(rt, action="alert.refused")
    assert isinstance(found, RefusalAudit)
    return found


@dataclass(slots=True)
class Change:
    kind: str  # fired | resolved | repeat | stored (a resolved one never seen firing) | stale
    known: Known | None


# --- receiving -----------------------------------------------------------------


async def receive(rt: Runtime, *, source: str, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """One delivery from a sender: authenticate, parse, deduplicate, store, announce."""
    b = book(rt)
    kind = b.sources.get(source)
    if kind is None:
        raise NotFound(f"there is no alert source {source[:64]!r}",
                       hint="declare it under `alert_sources:` in the catalog; the URL is /api/v1/alerts/NAME")
    now = time.time()
    try:
        kind.authenticate(headers=headers, body=body, now=now)
    except Unauthenticated as exc:
        await _refusals(rt).record(key=source, target=f"alert_source:{source}", what="unauthenticated",
                                   detail=exc.message)
        raise
    alerts = kind.parse(body)
    placed = [(a, b.place(source, a)) for a in alerts]
    silences = list(b.silences.values())  # read here: the body runs on the store's writer thread

    def record(s: Session) -> tuple[list[Change], list[Event]]:
        changes = _store(s, b, source, placed, now)
        events = _events(source, changes, silences, now)
        eventlog.append_many(s, events, origin=rt.node_id)  # in the event log with the change
        return changes, events

    async with b.lock(source):
        changes, events = await rt.transact(record)
        for change in changes:
            if change.known is not None:
                b.remember(change.known)
    for ev in events:
        rt.bus.publish(ev)
    counts: dict[str, int] = {}
    for change in changes:
        counts[change.kind] = counts.get(change.kind, 0) + 1
    return {"received": len(alerts), "fired": counts.get("fired", 0), "resolved": counts.get("resolved", 0),
            "repeats": counts.get("repeat", 0), "stored": counts.get("stored", 0), "stale": counts.get("stale", 0)}


def _row_values(source: str, a: AlertIn, place: tuple[str | None, str | None, str | None],
                now: float) -> dict[str, Any]:
    service, system, environment = place
    return {"source": source, "fingerprint": a.fingerprint, "starts_at": a.starts_at, "status": a.status,
            "name": a.name, "severity": a.severity, "summary": a.summary, "labels": a.labels,
            "annotations": a.annotations, "service": service, "system": system, "environment": environment,
            "url": a.url, "group_key": a.group_key, "received_at": now, "last_seen_at": now, "repeats": 0,
            "ends_at": a.ends_at if a.status == "resolved" else None, "acked_by": None, "acked_at": None}


def _store(session: Session, b: AlertBook, source: str,
           placed: list[tuple[AlertIn, tuple[str | None, str | None, str | None]]], now: float) -> list[Change]:
    """Every change of one delivery, in the caller's transaction (runs on the store's writer)."""
    conn = session.connection()
    insert = _INSERTS[conn.dialect.name]
    changes: list[Change] = []
    repeats: list[int] = []
    for alert, place in placed:
        known = b.latest.get((source, alert.fingerprint))
        if known is None or known.starts_at < alert.starts_at:
            values = _row_values(source, alert, place, now)
            new_id = conn.execute(insert, values).scalar()
            if new_id is not None:
                fresh = _known(new_id, values)
                if known is not None and known.status == "firing":
                    # A new occurrence while the old one was never resolved here: the old one ended.
                    conn.execute(_END_OLD, {"b_id": known.id, "b_ends": alert.starts_at})
                changes.append(Change("fired" if alert.status == "firing" else "stored", fresh))
                continue
            known = None  # stored before (another server, or before the book's horizon)
        if known is None or known.starts_at != alert.starts_at:
            row = session.execute(select(AlertRow).where(
                AlertRow.source == source, AlertRow.fingerprint == alert.fingerprint,
                AlertRow.starts_at == alert.starts_at)).scalar_one_or_none()
            if row is None:
                changes.append(Change("stale", None))  # a late copy of an occurrence long superseded
                continue
            known = known_from_row(row)
        changes.append(_update(conn, known, alert, now, repeats))
    if repeats:
        conn.execute(_REPEATED, {"b_ids": repeats, "b_seen": now})
    fired = [c.known.id for c in changes if c.kind == "fired" and c.known]
    resolved = [c.known.id for c in changes if c.kind == "resolved" and c.known]
    if fired or resolved:
        # Repeats change nothing anyone reads: they are not audited, so a sender's every
        # repeat_interval does not grow the chain.
        audit.append_in(session, actor=alert_source_actor(source), action="alert.received",
                        target=f"alert_source:{source}",
                        details={"fired": fired[:50], "resolved": resolved[:50], "received": len(placed)})
    return changes


def _update(conn: Any, known: Known, alert: AlertIn, now: float, repeats: list[int]) -> Change:
    """An occurrence already stored: a repeat, its end, or (firing again) its return."""
    if alert.status == known.status:
        repeats.append(known.id)
        return Change("repeat", None)
    ends_at = (alert.ends_at or now) if alert.status == "resolved" else None
    conn.execute(_SET_STATUS, {"b_id": known.id, "b_status": alert.status, "b_ends": ends_at, "b_seen": now})
    return Change("resolved" if alert.status == "resolved" else "fired",
                  replace(known, status=alert.status, ends_at=ends_at))


def _known(alert_id: int, v: dict[str, Any]) -> Known:
    return Known(id=alert_id, source=v["source"], fingerprint=v["fingerprint"], starts_at=v["starts_at"],
                 status=v["status"], name=v["name"], severity=v["severity"], summary=v["summary"],
                 labels=v["labels"], service=v["service"], system=v["system"], environment=v["environment"],
                 url=v["url"], ends_at=v["ends_at"], annotations=v["annotations"])


def _brief(a: Known) -> dict[str, Any]:
    return {"id": a.id, "name": a.name, "severity": a.severity, "service": a.service, "summary": a.summary,
            "since": a.starts_at, "ends_at": a.ends_at, "source": a.source}


def _events(source: str, changes: list[Change], silences: list[Silence], now: float) -> list[Event]:
    """The events of one delivery's changes: each alert's, then one notice per system."""
    notices: dict[str | None, AlertsNoticed] = {}
    events: list[Event] = []
    for change in changes:
        a = change.known
        if a is None or change.kind not in ("fired", "resolved"):
            continue
        silenced = any(s.covers(a, now) for s in silences)
        correlation = f"alert:{source}:{a.fingerprint}:{a.starts_at:.3f}"
        if change.kind == "fired":
            events.append(AlertFired(
                alert_id=a.id, alert_source=source, name=a.name, severity=a.severity, summary=a.summary,
                labels=a.labels, annotations=a.annotations, service=a.service, system=a.system,
                environment=a.environment,
                starts_at=a.starts_at, url=a.url, silenced=silenced, correlation_id=correlation,
                source=f"alert:{source}"))
        else:
            events.append(AlertResolved(
                alert_id=a.id, alert_source=source, name=a.name, service=a.service, system=a.system,
                environment=a.environment, starts_at=a.starts_at, ends_at=a.ends_at or now, silenced=silenced,
                correlation_id=correlation, source=f"alert:{source}"))
        if silenced:
            continue
        notice = notices.get(a.system)
        if notice is None:
            notice = notices[a.system] = AlertsNoticed(system=a.system, environment=a.environment,
                                                       correlation_id=correlation, source=f"alert:{source}")
        (notice.fired if change.kind == "fired" else notice.resolved).append(_brief(a))
    return [*events, *notices.values()]


# --- reading and acknowledging -------------------------------------------------


async def list_alerts(rt: Runtime, *, actor: Actor, include_resolved: bool = False,
                      limit: int = LIST_LIMIT, before: int | None = None) -> list[dict[str, Any]]:
    """Firing alerts, newest first (and, asked for, the recently resolved ones from the store);
    `before`: only those with a smaller id (the API's next page)."""
    actor.require("status.read", what="see alerts")
    b = book(rt)
    now = time.time()
    limit = min(limit, LIST_LIMIT + 1)  # one past the API's largest page: whether another follows
    if include_resolved:
        query = select(AlertRow).order_by(AlertRow.id.desc()).limit(limit)
        if before is not None:
            query = query.where(AlertRow.id < before)
        async with rt.read() as s:
            rows = (await s.execute(query)).scalars().all()
        views = [b.view(known_from_row(r), now) for r in rows]
    else:
        firing = [a for a in b.firing.values() if before is None or a.id < before]
        views = [b.view(a, now) for a in sorted(firing, key=lambda a: -a.id)[:limit]]
    await audit.append_alone(rt, actor=actor, action="alert.list", target="alerts", details={"count": len(views)})
    return views


async def get_alert(rt: Runtime, *, actor: Actor, alert_id: int) -> dict[str, Any]:
    actor.require("status.read", what="see alerts")
    async with rt.read() as s:
        row = await s.get(AlertRow, alert_id)
    if row is None:
        raise NotFound(f"there is no alert #{alert_id}", hint="`alerts` lists the firing ones")
    view = book(rt).view(known_from_row(row))
    view["annotations"] = dict(row.annotations or {})
    view["repeats"], view["received_at"], view["last_seen_at"] = row.repeats, row.received_at, row.last_seen_at
    await audit.append_alone(rt, actor=actor, action="alert.read", target=f"alert:{alert_id}")
    return view


async def acknowledge(rt: Runtime, *, actor: Actor, alert_id: int, room: str | None = None) -> dict[str, Any]:
    """Someone is on it: shown beside the alert everywhere; it keeps firing until its sender resolves it."""
    actor.require("alert.ack", what="acknowledge alerts")
    b = book(rt)
    now = time.time()

    def body(session: Session) -> tuple[Known, AlertAcknowledged | None]:
        row = session.get(AlertRow, alert_id)
        if row is None:
            raise NotFound(f"there is no alert #{alert_id}", hint="`alerts` lists the firing ones")
        if row.acked_by is not None:
            return known_from_row(row), None
        row.acked_by, row.acked_at = actor.name, now
        audit.append_in(session, actor=actor, action="alert.ack", target=f"alert:{alert_id}",
                        details={"name": row.name, "status": row.status})
        ev = AlertAcknowledged(alert_id=alert_id, name=row.name, by=actor.name, system=row.system, room=room,
                               correlation_id=f"alert:{row.source}:{row.fingerprint}")
        eventlog.append(session, ev, origin=rt.node_id)  # the first acknowledgement, with its row
        return known_from_row(row), ev

    known, acked = await rt.transact(body)
    was = b.firing.get(alert_id)
    if was is not None and was.acked_by is None:
        was.acked_by = known.acked_by
    if acked is not None:
        rt.bus.publish(acked)
    return b.view(known, now)
