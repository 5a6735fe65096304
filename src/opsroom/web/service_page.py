"""The page of one service (/services/NAME): its state now, its last day as a plot, its firing
alerts and the runbooks run on it. Chat replies about a service link here.

Read through the service layer (checks/history.py: status.read, audited); the plot is drawn on
the server as SVG (web/svgplot.py), so the page needs no script at all.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from markupsafe import Markup

from opsroom.checks.history import service_history
from opsroom.errors import NotFound, OpsroomError
from opsroom.web import svgplot
from opsroom.web.deps import RuntimeDep, WebSession
from opsroom.web.ui import page_error, templates

router = APIRouter(include_in_schema=False)
MAX_NAME = 200  # far over a catalog name (64); a longer path segment is not worth a lookup


def _when(at: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)) if at is not None else None


def _age(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    s = max(0, round(seconds))
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago" if s < 7200 else f"{s // 3600} h ago"


def _plot(view: dict[str, Any]) -> Markup:
    series = [svgplot.Series(name=c, points=[(p["at"], p["latency_ms"], p["state"]) for p in pts],
                             gap_s=view["gap_s"][c]) for c, pts in view["history"].items()]
    hours = round((view["end"] - view["start"]) / 3600)
    svg = svgplot.render(series, start=view["start"], end=view["end"], id_prefix="svc-plot",
                         title=f"{view['service']}: latency and state over the last {hours} h")
    # svgplot escapes every text and attribute it writes: this is the one place markup is trusted.
    return Markup(svg)  # noqa: S704


def _external(url: object) -> str | None:
    """An alert's link only when it is http(s): a `javascript:` URL from a sender is not a link."""
    return url if isinstance(url, str) and url.lower().startswith(("https://", "http://")) else None


@router.get("/services/{name}")
async def service_page(name: str, request: Request, rt: RuntimeDep, session: WebSession) -> Response:
    if session is None:
        return RedirectResponse("/login?next=" + quote(f"/services/{name}", safe=""), status_code=303)
    actor = session[0].via("web")
    if len(name) > MAX_NAME or not name.isprintable():
        return page_error(request, 404, "not found", "A service is named as in the catalog, e.g. /services/web.")
    try:
        view = await service_history(rt, actor=actor, service=name)
    except NotFound as exc:
        return page_error(request, 404, "not found", exc.message, exc.hint)
    except OpsroomError as exc:
        return page_error(request, 403, "not allowed", exc.message, exc.hint)
    if view["service"] != name:
        # An alias or a title found it: one address per service.
        return RedirectResponse(f"/services/{quote(view['service'], safe='')}", status_code=303)
    checks = [{**c, "colour": svgplot.colour(i), "age": _age(c["age_s"]),
               "latency": svgplot.fmt_ms(c["latency_ms"]) if c["latency_ms"] is not None else None,
               "points": len(view["history"][c["check"]])} for i, c in enumerate(view["checks"])]
    alerts = [{**a, "since": _when(a["since"]), "link": _external(a["url"]),
               "labels": sorted(a["labels"].items())} for a in view["alerts"]]
    runs = None if view["executions"] is None else [
        {**x, "created": _when(x["created_at"])} for x in view["executions"]]
    return templates.TemplateResponse(request, "service.html", {
        "s": view, "checks": checks, "alerts": alerts, "runs": runs, "plot": _plot(view),
        "generated": _when(view["end"]), "me": actor.name})
