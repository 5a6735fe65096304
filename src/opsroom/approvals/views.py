"""JSON API: approval requests and decisions."""

from __future__ import annotations

from fastapi import APIRouter

from opsroom.approvals import service
from opsroom.approvals.schemas import ApprovalOut, DecisionRequest
from opsroom.web.deps import ApiActor, DecisionActor, PathId, RuntimeDep

router = APIRouter(tags=["approvals"])


@router.get("/approvals")
async def list_open(rt: RuntimeDep, actor: ApiActor) -> list[ApprovalOut]:
    return [ApprovalOut.model_validate(r) for r in await service.list_open(rt, actor=actor)]


@router.get("/approvals/{approval_id}")
async def get_approval(approval_id: PathId, rt: RuntimeDep, actor: ApiActor) -> ApprovalOut:
    return ApprovalOut.model_validate(await service.get(rt, actor=actor, approval_id=approval_id))


@router.post("/approvals/{approval_id}/decision")
async def decide(approval_id: PathId, body: DecisionRequest, rt: RuntimeDep,
                 actor: DecisionActor) -> ApprovalOut:
    row = await service.decide(rt, actor=actor, approval_id=approval_id, approve=body.decision == "approve",
                               reason=body.reason)
    return ApprovalOut.model_validate(row)
