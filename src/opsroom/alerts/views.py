"""JSON API: alerts in (from senders), alerts and silences out. Thin: parse, call the service layer."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from opsroom.alerts import service, silences
from opsroom.alerts.schemas import (
    AlertDetailOut,
    AlertOut,
    ReceivedOut,
    SilenceChangeOut,
    SilenceOut,
    SilenceRequest,
)
from opsroom.catalog.durations import parse_duration
from opsroom.errors import Invalid
from opsroom.web.apitypes import PAGED, Cursor, decode_cursor, limit_query, page
from opsroom.web.deps import ApiActor, PathId, RuntimeDep

router = APIRouter(tags=["alerts"])


# `security: []`: a sender authenticates with its own token or signature, declared per source in the catalog.
@router.post("/alerts/{source}", status_code=200, openapi_extra={"security": []})
async def receive(source: str, request: Request, rt: RuntimeDep) -> ReceivedOut:
    """What a sender posts. No session or API token: the source's own token or signature decides."""
    body = await request.body()
    return ReceivedOut.model_validate(await service.receive(rt, source=source, headers=request.headers, body=body))


@router.get("/alerts", responses=PAGED)
async def list_alerts(request: Request, response: Response, rt: RuntimeDep, actor: ApiActor,
                      resolved: bool = False, cursor: Cursor = None,
                      limit: int = limit_query(100, service.LIST_LIMIT)) -> list[AlertOut]:
    """Firing alerts, newest first; `resolved=true` adds the resolved ones kept in the store."""
    before = decode_cursor("alerts", cursor)
    views = await service.list_alerts(rt, actor=actor, include_resolved=resolved, limit=limit + 1, before=before)
    return page(request, response, resource="alerts", rows=[AlertOut.model_validate(v) for v in views],
                limit=limit, key=lambda a: a.id)


@router.get("/alerts/{alert_id}")
async def get_alert(alert_id: PathId, rt: RuntimeDep, actor: ApiActor) -> AlertDetailOut:
    return AlertDetailOut.model_validate(await service.get_alert(rt, actor=actor, alert_id=alert_id))


@router.post("/alerts/{alert_id}/ack")
async def acknowledge(alert_id: PathId, rt: RuntimeDep, actor: ApiActor) -> AlertOut:
    return AlertOut.model_validate(await service.acknowledge(rt, actor=actor, alert_id=alert_id))


@router.get("/silences")
async def list_silences(rt: RuntimeDep, actor: ApiActor) -> list[SilenceOut]:
    return [SilenceOut.model_validate(v) for v in await silences.list_active(rt, actor=actor)]


@router.post("/silences", status_code=201)
async def create_silence(body: SilenceRequest, rt: RuntimeDep, actor: ApiActor) -> SilenceChangeOut:
    try:
        duration = parse_duration(body.duration)
    except ValueError as exc:
        raise Invalid(f"duration: {exc}") from None
    return SilenceChangeOut.model_validate(
        await silences.create(rt, actor=actor, what=body.what, duration_s=duration, reason=body.reason))


@router.delete("/silences/{silence_id}")
async def remove_silence(silence_id: PathId, rt: RuntimeDep, actor: ApiActor) -> SilenceChangeOut:
    return SilenceChangeOut.model_validate(await silences.remove(rt, actor=actor, silence_id=silence_id))
