"""JSON API: runbooks and executions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from opsroom.catalog.schema import Parameter
from opsroom.runbooks import service
from opsroom.runbooks.schemas import ExecutionDetail, ExecutionOut, RunbookOut, RunRequest
from opsroom.secrets.masking import MASK
from opsroom.web.deps import ApiActor, PathId, RuntimeDep

router = APIRouter(tags=["runbooks"])


@router.get("/runbooks")
async def list_runbooks(rt: RuntimeDep, actor: ApiActor) -> list[RunbookOut]:
    return [RunbookOut(name=r.name, title=r.title, description=r.description, approval=r.approval,
                       parameters={k: _parameter(p) for k, p in r.parameters.items()},
                       content_hash=r.content_hash)
            for r in await service.list_runbooks(rt, actor=actor)]


def _parameter(p: Parameter) -> dict[str, Any]:
    shown = p.model_dump(mode="json")
    if p.secret and p.default is not None:
        shown["default"] = MASK  # a secret's default is as secret as a value given
    return shown


@router.post("/runbooks/{name}/run", status_code=202)
async def run_runbook(name: str, body: RunRequest, rt: RuntimeDep, actor: ApiActor) -> ExecutionOut:
    row = await service.request_run(rt, actor=actor, runbook=name, params=dict(body.params), room=body.room)
    return ExecutionOut.model_validate(row)


@router.get("/executions")
async def list_executions(rt: RuntimeDep, actor: ApiActor, limit: int = Query(50, ge=1, le=500),
                          status: str | None = None) -> list[ExecutionOut]:
    rows = await service.list_executions(rt, actor=actor, limit=limit, status=status)
    return [ExecutionOut.model_validate(r) for r in rows]


@router.get("/executions/{execution_id}")
async def get_execution(execution_id: PathId, rt: RuntimeDep, actor: ApiActor) -> ExecutionDetail:
    return ExecutionDetail.model_validate(await service.get_execution(rt, actor=actor, execution_id=execution_id))


@router.post("/executions/{execution_id}/cancel")
async def cancel_execution(execution_id: PathId, rt: RuntimeDep, actor: ApiActor) -> ExecutionOut:
    """Stop a run (its requester, an approver or an admin); answers once it has stopped."""
    return ExecutionOut.model_validate(await service.cancel_execution(rt, actor=actor, execution_id=execution_id))
