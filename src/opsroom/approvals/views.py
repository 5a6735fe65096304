"""JSON API: approval requests and decisions."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from opsroom.approvals import service
from opsroom.approvals.schemas import ApprovalOut, DecisionRequest
from opsroom.web.apitypes import PAGED, Cursor, decode_cursor, limit_query, page
from opsroom.web.deps import ApiActor, DecisionActor, PathId, RuntimeDep

router = APIRouter(tags=["approvals"])


@router.get("/approvals", responses=PAGED)
async def list_open(request: Request, response: Response, rt: RuntimeDep, actor: ApiActor,
                    cursor: Cursor = None, limit: int = limit_query(100, 500)) -> list[ApprovalOut]:
    """Open requests, oldest first (the one that expires soonest leads)."""
    after = decode_cursor("approvals", cursor) or 0
    # The open requests are few (each waits for a person): read whole, paged here.
    rows = [ApprovalOut.model_validate(r) for r in await service.list_open(rt, actor=actor) if r.id > after]
    return page(request, response, resource="approvals", rows=rows[:limit + 1], limit=limit, key=lambda a: a.id)


@router.get("/approvals/{approval_id}")
async def get_approval(approval_id: PathId, rt: RuntimeDep, actor: ApiActor) -> ApprovalOut:
    return ApprovalOut.model_validate(await service.get(rt, actor=actor, approval_id=approval_id))


@router.post("/approvals/{approval_id}/decision")
async def decide(approval_id: PathId, body: DecisionRequest, rt: RuntimeDep,
                 actor: DecisionActor) -> ApprovalOut:
    row = await service.decide(rt, actor=actor, approval_id=approval_id, approve=body.decision == "approve",
                               reason=body.reason)
    return ApprovalOut.model_validate(row)
