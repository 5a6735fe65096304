"""JSON API: the rules (what opsroom does by itself). Thin: the service decides."""

from __future__ import annotations

from fastapi import APIRouter

from opsroom.automation import service
from opsroom.automation.schemas import RuleOut
from opsroom.web.deps import ApiActor, RuntimeDep

router = APIRouter(tags=["rules"])


@router.get("/rules")
async def list_rules(rt: RuntimeDep, actor: ApiActor) -> list[RuleOut]:
    return [RuleOut.model_validate(r) for r in await service.list_rules(rt, actor=actor)]
