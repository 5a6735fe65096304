"""JSON API: alerts in (from senders), alerts and silences out. Thin: parse, call the service layer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from opsroom.alerts import service, silences
from opsroom.alerts.schemas import SilenceRequest
from opsroom.catalog.durations import parse_duration
from opsroom.errors import Invalid
from opsroom.web.deps import ApiActor, PathId, RuntimeDep

router = APIRouter(tags=["alerts"])


@router.post("/alerts/{source}", status_code=200)
async def receive(source: str, request: Request, rt: RuntimeDep) -> dict[str, Any]:
    """What a sender posts. No session or API token: the source's own token or signature decides."""
    body = await request.body()
    return await service.receive(rt, source=source, headers=request.headers, body=body)


@router.get("/alerts")
async def list_alerts(rt: RuntimeDep, actor: ApiActor, resolved: bool = False) -> list[dict[str, Any]]:
    return await service.list_alerts(rt, actor=actor, include_resolved=resolved)


@router.get("/alerts/{alert_id}")
async def get_alert(alert_id: PathId, rt: RuntimeDep, actor: ApiActor) -> dict[str, Any]:
    return await service.get_alert(rt, actor=actor, alert_id=alert_id)


@router.post("/alerts/{alert_id}/ack")
async def acknowledge(alert_id: PathId, rt: RuntimeDep, actor: ApiActor) -> dict[str, Any]:
    return await service.acknowledge(rt, actor=actor, alert_id=alert_id)


@router.get("/silences")
async def list_silences(rt: RuntimeDep, actor: ApiActor) -> list[dict[str, Any]]:
    return await silences.list_active(rt, actor=actor)


@router.post("/silences", status_code=201)
async def create_silence(body: SilenceRequest, rt: RuntimeDep, actor: ApiActor) -> dict[str, Any]:
    try:
        duration = parse_duration(body.duration)
    except ValueError as exc:
        raise Invalid(f"duration: {exc}") from None
    return await silences.create(rt, actor=actor, what=body.what, duration_s=duration, reason=body.reason)


@router.delete("/silences/{silence_id}")
async def remove_silence(silence_id: PathId, rt: RuntimeDep, actor: ApiActor) -> dict[str, Any]:
    return await silences.remove(rt, actor=actor, silence_id=silence_id)
