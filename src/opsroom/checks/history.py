"""A service's last day in one read: its state now, its checks' results over a window (downsampled
in the store), its firing alerts and the recent runbook executions on it. The service page
(web/service_page.py) draws it; any other door could.

Reading the state now does not run probes (get_service_status does, for a person asking in chat):
a page anyone can reload must not turn into a way to hammer a service with checks.
"""

from __future__ import annotations

import math
import time
from typing import Any

from sqlalchemy import ColumnElement, Float, Integer, and_, case, cast, func, or_, select

from opsroom.access.identity import Actor
from opsroom.audit import service as audit
from opsroom.checks.models import CheckResultRow
from opsroom.checks.service import _counted, _worst, alert_views, check_view, resolve_service
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime
from opsroom.secrets.masking import mask, mask_obj

MAX_POINTS = 300  # per check: more than a phone-wide plot has pixels for
MIN_POINTS = 48
POINT_BUDGET = 1200  # over all checks of the page: keeps the page small when a service has many
MAX_HOURS = 7 * 24
RECENT_EXECUTIONS = 10
STATE_RANK = {"OK": 0, "UNKNOWN": 1, "WARNING": 2, "CRITICAL": 3}
RANK_STATE = {v: k for k, v in STATE_RANK.items()}


def points_per_check(checks: int) -> int:
    """How many buckets each check's history is cut into: ~300, fewer when a service has many checks."""
    return max(MIN_POINTS, min(MAX_POINTS, POINT_BUDGET // max(1, checks)))


def _bucket_of(dialect: str, start: float, width: float) -> ColumnElement[int]:
    offset = (CheckResultRow.at - start) / width
    # CAST truncates on SQLite (offsets are >= 0, so it is floor) but rounds on PostgreSQL.
    if dialect == "postgresql":
        return cast(func.floor(offset), Integer)
    return cast(offset, Integer)


async def _history(rt: Runtime, checks: list[str], start: float, end: float,
                   buckets: int) -> dict[str, list[dict[str, Any]]]:
    """Per check, one point per time bucket that holds results: the worst state and the highest
    latency in it, grouped by the store so at most `buckets` rows per check come back."""
    out: dict[str, list[dict[str, Any]]] = {c: [] for c in checks}
    if not checks:
        return out
    width = (end - start) / buckets
    bucket = _bucket_of(rt.engine.dialect.name, start, width).label("bucket")
    rank = case(*((CheckResultRow.state == s, r) for s, r in STATE_RANK.items()), else_=STATE_RANK["UNKNOWN"])
    stmt = (select(CheckResultRow.check, bucket, func.min(CheckResultRow.at), func.max(rank),
                   func.max(cast(CheckResultRow.latency_ms, Float)), func.count())
            .where(CheckResultRow.check.in_(checks), CheckResultRow.at >= start, CheckResultRow.at <= end)
            .group_by(CheckResultRow.check, bucket)
            .order_by(CheckResultRow.check, bucket)
            .limit(len(checks) * (buckets + 1)))
    async with rt.read() as s:
        rows = (await s.execute(stmt)).all()
    for check, _b, at, worst, latency, count in rows:
        lat = float(latency) if latency is not None else None
        out[check].append({"at": float(at), "state": RANK_STATE.get(int(worst), "UNKNOWN"),
                           "latency_ms": lat if lat is not None and math.isfinite(lat) else None,
                           "results": int(count)})
    return out


def _service_params(rt: Runtime) -> list[tuple[str | None, str]]:
    """(runbook or None for any, parameter) pairs that name a service: `service`, and every
    parameter of type service."""
    pairs: list[tuple[str | None, str]] = [(None, "service")]
    for name, rb in rt.catalog.runbooks.items():
        pairs += [(name, p) for p, spec in rb.parameters.items() if spec.type == "service" and p != "service"]
    return pairs


async def _executions(rt: Runtime, service: str) -> list[dict[str, Any]]:
    conds = []
    for runbook, param in _service_params(rt):
        match = ExecutionRow.params[param].as_string() == service
        conds.append(match if runbook is None else and_(ExecutionRow.runbook == runbook, match))
    stmt = select(ExecutionRow).where(or_(*conds)).order_by(ExecutionRow.id.desc()).limit(RECENT_EXECUTIONS)
    async with rt.read() as s:
        rows = list((await s.execute(stmt)).scalars())
    return [{"id": r.id, "runbook": r.runbook, "status": r.status, "summary": mask(r.summary or ""),
             "requested_by": r.requested_by, "door": r.door, "environment": r.environment,
             "params": mask_obj(r.params), "created_at": r.created_at, "finished_at": r.finished_at}
            for r in rows]


async def service_history(rt: Runtime, *, actor: Actor, service: str, hours: float = 24) -> dict[str, Any]:
    """Everything the service page shows, read once, authorized and audited as one view."""
    if not actor.can("status.read"):
        await audit.append_alone(rt, actor=actor, action="service.view", target=f"service:{service[:64]}",
                                 outcome="refused", details={"reason": "missing permission status.read"})
        actor.require("status.read", what="see service status")
    if not (isinstance(hours, int | float) and math.isfinite(hours) and 0 < hours <= MAX_HOURS):
        hours = 24
    name = resolve_service(rt, service)
    cat, now = rt.catalog, time.time()
    checks = cat.checks_of_service(name)
    views = [check_view(rt, c, now) for c in checks]
    for v in views:
        v["output"] = mask(v["output"])
        v["interval"] = cat.checks[v["check"]].interval
    alerts = [{**a, "summary": mask(a["summary"] or ""), "labels": mask_obj(a["labels"])}
              for a in alert_views(rt, service=name)]
    start = now - hours * 3600
    buckets = points_per_check(len(checks))
    history = await _history(rt, checks, start, now, buckets)
    may_read_runs = actor.can("execution.read")
    executions = await _executions(rt, name) if may_read_runs else None
    env = cat.service_environment(name)
    svc = cat.services[name]
    state = _worst([v["state"] for v in views] + _counted(alerts))
    result = {"service": name, "title": svc.title, "description": svc.description, "system": svc.system,
              "environment": env, "protected": cat.is_protected(env), "state": state,
              "running": _worst([v["state"] for v in views]) in ("OK", "WARNING"),
              "checks": views, "alerts": alerts, "executions": executions, "start": start, "end": now,
              "bucket_s": (now - start) / buckets, "history": history,
              # Below this gap between two stored results a line joins them: OK results of a steady
              # check are kept once a `check_result_ok_interval`, not on every run.
              "gap_s": {c: max(3 * cat.checks[c].interval, 2.5 * rt.settings.check_result_ok_interval,
                               2.5 * (now - start) / buckets) for c in checks}}
    await audit.append_alone(rt, actor=actor, action="service.view", target=f"service:{name}",
                             details={"state": state, "hours": hours})
    return result
