"""Checks service: status of services and systems, on-demand checks. Reads are audited."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from opsroom.access import scope
from opsroom.access.identity import Actor
from opsroom.audit import service as audit
from opsroom.checks.monitor import Monitor
from opsroom.errors import NotFound
from opsroom.runtime import Runtime


def _alerts(rt: Runtime) -> Any:
    """The alerts book (alerts/book.py) when the server runs one: firing alerts count in health."""
    return rt.alerts


def alert_views(rt: Runtime, *, service: str | None = None, system: str | None = None) -> list[dict[str, Any]]:
    """Firing alerts of a service, or those of a system that name no service, as health sees them."""
    book = _alerts(rt)
    if book is None:
        return []
    found = book.of_service(service) if service is not None else book.of_system(system, with_services=False)
    return [book.view(a) for a in sorted(found, key=lambda a: a.id)]


def _counted(views: list[dict[str, Any]]) -> list[str]:
    """Alert states that count: a silenced or informational alert is shown but does not degrade."""
    return [v["state"] for v in views if v["silenced_by"] is None and v["state"] != "OK"]


def _monitor(rt: Runtime) -> Monitor:
    if rt.monitor is None:
        raise RuntimeError("the monitor is not running")
    return rt.monitor


def _suggest(kind: str, name: str, suggestions: list[str]) -> NotFound:
    hint = (f"did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions
            else f"list {kind}s with `status`")
    return NotFound(f"I don't know a {kind} called {name!r}", hint=hint)


def resolve_service(rt: Runtime, text: str) -> str:
    name, suggestions = rt.catalog.find_service(text)
    if name is None:
        raise _suggest("service", text, suggestions)
    return name


def resolve_system(rt: Runtime, text: str) -> str:
    name, suggestions = rt.catalog.find_system(text)
    if name is None:
        raise _suggest("system", text, suggestions)
    return name


def check_view(rt: Runtime, name: str, now: float | None = None) -> dict[str, Any]:
    mon = _monitor(rt)
    st, last = mon.status.get(name), mon.last.get(name)
    now = now or time.time()
    return {
        "check": name,
        "service": rt.catalog.checks[name].service,
        "state": st.state if st else "PENDING",
        "state_type": st.state_type if st else None,
        "attempt": st.attempt if st else 0,
        "since": st.since if st else None,
        "flapping": st.flapping if st else False,
        "output": last.output if last else "",
        "latency_ms": round(last.latency_ms, 1) if last else None,
        "checked_at": last.at if last else None,
        "age_s": round(now - last.at, 1) if last else None,
        "down": last.down if last else None,
    }


async def _fresh(rt: Runtime, names: list[str]) -> None:
    """Run checks whose last result is older than two intervals (or missing) before answering."""
    mon, now = _monitor(rt), time.time()
    stale = [n for n in names if (last := mon.last.get(n)) is None
             or now - last.at > 2 * rt.catalog.checks[n].interval]
    # Together, not in turn: two dead services cost one probe timeout, not two.
    await asyncio.gather(*(mon.run_check(n) for n in stale))


async def get_service_status(rt: Runtime, *, actor: Actor, service: str) -> dict[str, Any]:
    """Is it running? Derived from the service's checks, refreshed when stale."""
    actor.require("status.read", what="see service status")
    name = resolve_service(rt, service)
    checks = rt.catalog.checks_of_service(name)
    await _fresh(rt, checks)
    views = [check_view(rt, c) for c in checks]
    alerts = alert_views(rt, service=name)
    by_checks = _worst([v["state"] for v in views])
    worst = _worst([v["state"] for v in views] + _counted(alerts))
    # Running is what its checks see; a firing alert makes it unhealthy, not stopped.
    result = {"service": name, "environment": rt.catalog.service_environment(name),
              "protected": rt.catalog.is_protected(rt.catalog.service_environment(name)),
              "state": worst, "running": by_checks in ("OK", "WARNING"),
              "checks": views, "alerts": alerts}
    await audit.append_alone(rt, actor=actor, action="service.status", target=f"service:{name}",
                             details={"state": worst})
    return result


async def get_system_health(rt: Runtime, *, actor: Actor, system: str) -> dict[str, Any]:
    actor.require("status.read", what="see system health")
    name = resolve_system(rt, system)
    cat = rt.catalog
    await _fresh(rt, cat.checks_of_system(name))
    services = []
    for svc in cat.services_of_system(name):
        views = [check_view(rt, c) for c in cat.checks_of_service(svc)]
        alerts = alert_views(rt, service=svc)
        services.append({"service": svc, "state": _worst([v["state"] for v in views] + _counted(alerts)),
                         "checks": views, "alerts": alerts})
    system_alerts = alert_views(rt, system=name)
    healthy = all(s["state"] in ("OK", "PENDING") for s in services) and not _counted(system_alerts)
    sysobj = cat.systems[name]
    result = {"system": name, "title": sysobj.display, "environment": sysobj.environment,
              "protected": cat.is_protected(sysobj.environment), "healthy": healthy, "services": services,
              "alerts": system_alerts}
    await audit.append_alone(rt, actor=actor, action="system.health", target=f"system:{name}",
                             details={"healthy": healthy})
    return result


async def run_check(rt: Runtime, *, actor: Actor, check: str) -> dict[str, Any]:
    if not actor.can_somewhere("check.run"):
        actor.require("check.run", what="run checks")
    name, suggestions = rt.catalog.find_check(check)
    if name is None:
        raise _suggest("check", check, suggestions)
    check = name
    where = scope.check_scope(rt.catalog, check)
    if not actor.can("check.run", environment=where.environment, system=where.system):
        # A role bound to test runs no check of prod (docs/access.md): refused, and recorded.
        await audit.append_alone(rt, actor=actor, action="check.run", target=f"check:{check}", outcome="refused",
                                 details={"reason": f"no role grants check.run in {where.label}"})
        actor.require("check.run", what=f"run check {check}", environment=where.environment, system=where.system)
    result = await _monitor(rt).run_check(check)
    await audit.append_alone(rt, actor=actor, action="check.run", target=f"check:{check}",
                             details={"state": result.state})
    return check_view(rt, check)


async def list_checks(rt: Runtime, *, actor: Actor) -> list[dict[str, Any]]:
    actor.require("status.read", what="list checks")
    views = [check_view(rt, c) for c in rt.catalog.checks]
    await audit.append_alone(rt, actor=actor, action="check.list", target="checks", details={"count": len(views)})
    return views


async def list_services(rt: Runtime, *, actor: Actor) -> list[dict[str, Any]]:
    """Every service with its state from the last results (nothing is run: a list of many services
    must not probe them all), counted alerts included, as `status SERVICE` would judge it."""
    actor.require("status.read", what="list services")
    cat, out = rt.catalog, []
    for name, svc in cat.services.items():
        checks = cat.checks_of_service(name)
        states = [check_view(rt, c)["state"] for c in checks] + _counted(alert_views(rt, service=name))
        env = cat.service_environment(name)
        out.append({"service": name, "title": svc.title, "system": svc.system, "environment": env,
                    "protected": cat.is_protected(env), "state": _worst(states), "checks": checks})
    await audit.append_alone(rt, actor=actor, action="service.list", target="services", details={"count": len(out)})
    return out


async def overview(rt: Runtime, *, actor: Actor, audited: bool = True) -> list[dict[str, Any]]:
    """Every system with its health: the `status` command and the API's front page.
    `audited=False` for a caller that audits the whole view it is part of (`status`: one record)."""
    actor.require("status.read", what="see status")
    mon, cat = _monitor(rt), rt.catalog
    out = []
    book = _alerts(rt)
    for name, sysobj in cat.systems.items():
        failing = mon.failing(name)
        alerts = [book.view(a) for a in book.of_system(name)] if book is not None else []
        out.append({"system": name, "title": sysobj.display, "environment": sysobj.environment,
                    "protected": cat.is_protected(sysobj.environment), "healthy": not failing and not _counted(alerts),
                    "failing": failing, "alerts": alerts, "services": cat.services_of_system(name)})
    if audited:
        await audit.append_alone(rt, actor=actor, action="status", target="systems")
    return out


_ORDER = {"OK": 0, "PENDING": 1, "WARNING": 2, "UNKNOWN": 3, "CRITICAL": 4}


def _worst(states: list[str]) -> str:
    return max(states, key=lambda s: _ORDER.get(s, 3)) if states else "PENDING"
