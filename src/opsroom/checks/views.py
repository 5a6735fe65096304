"""JSON API: services, systems, checks. Thin: parse, call the service layer, return."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from opsroom.checks import service
from opsroom.checks.schemas import CheckOut, ServiceOut, ServiceStatusOut, SystemHealthOut, SystemOut
from opsroom.web.deps import ApiActor, RuntimeDep

router = APIRouter(tags=["status"])
# Generous: the service layer finds the name (or the nearest ones) among what a person may type.
Name = Annotated[str, Path(max_length=256)]


@router.get("/systems")
async def list_systems(rt: RuntimeDep, actor: ApiActor) -> list[SystemOut]:
    """Every system with its health: what `status` shows in a room."""
    return [SystemOut.model_validate(v) for v in await service.overview(rt, actor=actor)]


@router.get("/systems/{name}/health")
async def system_health(name: Name, rt: RuntimeDep, actor: ApiActor) -> SystemHealthOut:
    """A system's services and their checks; results older than two intervals are refreshed first."""
    return SystemHealthOut.model_validate(await service.get_system_health(rt, actor=actor, system=name))


@router.get("/services")
async def list_services(rt: RuntimeDep, actor: ApiActor) -> list[ServiceOut]:
    return [ServiceOut.model_validate(v) for v in await service.list_services(rt, actor=actor)]


@router.get("/services/{name}/status")
async def service_status(name: Name, rt: RuntimeDep, actor: ApiActor) -> ServiceStatusOut:
    """Is it running? From its checks (refreshed when stale) and its firing alerts."""
    return ServiceStatusOut.model_validate(await service.get_service_status(rt, actor=actor, service=name))


@router.get("/checks")
async def list_checks(rt: RuntimeDep, actor: ApiActor) -> list[CheckOut]:
    return [CheckOut.model_validate(v) for v in await service.list_checks(rt, actor=actor)]


@router.post("/checks/{name}/run")
async def run_check(name: Name, rt: RuntimeDep, actor: ApiActor) -> CheckOut:
    """Run a check now and answer with its result."""
    return CheckOut.model_validate(await service.run_check(rt, actor=actor, check=name))
