"""JSON API: the audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from opsroom.audit import service
from opsroom.audit.schemas import AuditRecordOut, VerifyOut
from opsroom.web.apitypes import PAGED, Cursor, decode_cursor, limit_query, page
from opsroom.web.deps import ApiActor, QueryId, RuntimeDep

router = APIRouter(tags=["audit"])
Action = Annotated[str | None, Query(max_length=64, pattern=r"^[a-z_]+(\.[a-z_]+)*$",
                                     description="only records of this action, e.g. runbook.run")]


@router.get("/audit", responses=PAGED)
async def list_records(request: Request, response: Response, rt: RuntimeDep, actor: ApiActor,
                       limit: int = limit_query(100, 1000), action: Action = None, since_seq: QueryId = None,
                       cursor: Cursor = None) -> list[AuditRecordOut]:
    """Records, newest first; `since_seq` keeps only those after that sequence number."""
    before = decode_cursor("audit", cursor)
    rows = await service.list_records(rt, actor=actor, limit=limit + 1, action=action, since_seq=since_seq,
                                      before_seq=before)
    return page(request, response, resource="audit", rows=[AuditRecordOut.model_validate(r) for r in rows],
                limit=limit, key=lambda r: r.seq)


@router.get("/audit/verify")
async def verify(rt: RuntimeDep, actor: ApiActor) -> VerifyOut:
    result = await service.verify_as(rt, actor=actor)
    return VerifyOut(ok=result.ok, records=result.records, broken_seq=result.broken_seq, reason=result.reason,
                     checkpoints=result.checkpoints, bad_checkpoint=result.bad_checkpoint)
