"""JSON API: the audit log."""

from __future__ import annotations

from fastapi import APIRouter, Query

from opsroom.audit import service
from opsroom.audit.schemas import AuditRecordOut, VerifyOut
from opsroom.web.deps import ApiActor, QueryId, RuntimeDep

router = APIRouter(tags=["audit"])


@router.get("/audit")
async def list_records(rt: RuntimeDep, actor: ApiActor, limit: int = Query(100, ge=1, le=1000),
                       action: str | None = None, since_seq: QueryId = None) -> list[AuditRecordOut]:
    rows = await service.list_records(rt, actor=actor, limit=limit, action=action, since_seq=since_seq)
    return [AuditRecordOut.model_validate(r) for r in rows]


@router.get("/audit/verify")
async def verify(rt: RuntimeDep, actor: ApiActor) -> VerifyOut:
    result = await service.verify_as(rt, actor=actor)
    return VerifyOut(ok=result.ok, records=result.records, broken_seq=result.broken_seq, reason=result.reason)
