"""Server-rendered pages beyond the room: an execution with its whole output.

Chat platforms cut long output and link here (`settings.web_url` + /executions/N), so this page
is where the rest is read. It reads through the service layer, which checks `execution.read`
and audits the view, and masks on the way out as the JSON API does: stored output is written as
the command printed it, and a secret learnt since must not show either.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from opsroom.approvals import service as approvals
from opsroom.errors import NotFound, OpsroomError
from opsroom.runbooks import service as runbooks
from opsroom.secrets.masking import mask, mask_obj
from opsroom.web.deps import MAX_ID, RuntimeDep, WebSession
from opsroom.web.ui import page_error, templates

router = APIRouter(include_in_schema=False)


def _when(at: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)) if at is not None else None


@router.get("/executions/{execution_id}")
async def execution_page(execution_id: str, request: Request, rt: RuntimeDep, session: WebSession) -> Response:
    if session is None:
        return RedirectResponse("/login?next=" + quote(f"/executions/{execution_id}", safe=""), status_code=303)
    actor = session[0].via("web")
    # A path segment, not a typed int: anything but a number gets this page's 404, not a JSON 422.
    if not (execution_id.isascii() and execution_id.isdigit() and len(execution_id) <= 12
            and 1 <= int(execution_id) <= MAX_ID):
        return page_error(request, 404, "not found", "An execution is named by its number, e.g. /executions/12.")
    try:
        row = await runbooks.get_execution(rt, actor=actor, execution_id=int(execution_id))
    except NotFound as exc:
        return page_error(request, 404, "not found", exc.message, exc.hint)
    except OpsroomError as exc:
        return page_error(request, 403, "not allowed", exc.message, exc.hint)
    decision: dict[str, Any] | None = None
    if row.approval_id is not None and actor.can("approval.read"):
        req = await approvals.get(rt, actor=actor, approval_id=row.approval_id)
        decision = {"id": req.id, "status": req.status, "roles": req.roles, "by": req.decided_by,
                    "at": _when(req.decided_at), "reason": mask(req.reason) if req.reason else None}
    view = {
        "id": row.id, "runbook": row.runbook, "summary": mask(row.summary), "status": row.status,
        "environment": row.environment, "target": row.target, "room": row.room,
        "params": mask_obj(row.params), "requested_by": row.requested_by, "door": row.door, "rule": row.rule,
        "created": _when(row.created_at), "started": _when(row.started_at), "finished": _when(row.finished_at),
        "duration_s": round(row.finished_at - row.started_at, 1) if row.finished_at and row.started_at else None,
        "output": mask(row.output or ""), "error": mask(row.error) if row.error else None,
        "catalog_hash": row.catalog_hash, "catalog_now": row.catalog_hash == rt.catalog_hash,
    }
    return templates.TemplateResponse(request, "execution.html", {"x": view, "decision": decision,
                                                                   "me": actor.name})
