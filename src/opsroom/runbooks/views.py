"""JSON API: runbooks and executions."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from opsroom.catalog.schema import Parameter
from opsroom.rooms import service as rooms
from opsroom.runbooks import service
from opsroom.runbooks.schemas import (
    ExecutionDetail,
    ExecutionOut,
    ExecutionStatus,
    ParameterOut,
    RunbookOut,
    RunRequest,
)
from opsroom.secrets.masking import MASK
from opsroom.web.apitypes import PAGED, Cursor, decode_cursor, limit_query, page
from opsroom.web.deps import ApiActor, PathId, RuntimeDep

router = APIRouter(tags=["runbooks"])


@router.get("/runbooks")
async def list_runbooks(rt: RuntimeDep, actor: ApiActor) -> list[RunbookOut]:
    return [RunbookOut(name=r.name, title=r.title, description=r.description, approval=r.approval,
                       parameters={k: _parameter(p) for k, p in r.parameters.items()},
                       content_hash=r.content_hash)
            for r in await service.list_runbooks(rt, actor=actor)]


def _parameter(p: Parameter) -> ParameterOut:
    shown = ParameterOut.model_validate(p.model_dump())
    if p.secret and p.default is not None:
        shown.default = MASK  # a secret's default is as secret as a value given
    return shown


@router.post("/runbooks/{name}/run", status_code=202)
async def run_runbook(name: str, body: RunRequest, rt: RuntimeDep, actor: ApiActor) -> ExecutionOut:
    # A room nobody has is refused with the nearest names, not silently replaced by the home room.
    room = rooms.resolve_room(rt, body.room) if body.room is not None else None
    row = await service.request_run(rt, actor=actor, runbook=name, params=dict(body.params), room=room)
    return ExecutionOut.model_validate(row)


@router.get("/executions", responses=PAGED)
async def list_executions(request: Request, response: Response, rt: RuntimeDep, actor: ApiActor,
                          limit: int = limit_query(50, 500), status: ExecutionStatus | None = None,
                          cursor: Cursor = None) -> list[ExecutionOut]:
    """Executions, newest first; `status` keeps one status."""
    before = decode_cursor("executions", cursor)
    rows = await service.list_executions(rt, actor=actor, limit=limit + 1, status=status, before=before)
    return page(request, response, resource="executions", rows=[ExecutionOut.model_validate(r) for r in rows],
                limit=limit, key=lambda e: e.id)


@router.get("/executions/{execution_id}")
async def get_execution(execution_id: PathId, rt: RuntimeDep, actor: ApiActor) -> ExecutionDetail:
    return ExecutionDetail.model_validate(await service.get_execution(rt, actor=actor, execution_id=execution_id))


@router.post("/executions/{execution_id}/cancel")
async def cancel_execution(execution_id: PathId, rt: RuntimeDep, actor: ApiActor) -> ExecutionOut:
    """Stop a run (its requester, an approver or an admin); answers once it has stopped."""
    return ExecutionOut.model_validate(await service.cancel_execution(rt, actor=actor, execution_id=execution_id))
