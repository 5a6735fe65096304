"""JSON API: services, systems, checks. Thin: parse, call the service layer, return."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from opsroom.checks import service
from opsroom.web.deps import ApiActor, RuntimeDep

router = APIRouter(tags=["status"])


@router.get("/systems")
async def list_systems(rt: RuntimeDep, actor: ApiActor) -> list[dict[str, Any]]:
    return await service.overview(rt, actor=actor)


@router.get("/systems/{name}/health")
async def system_health(name: str, rt: RuntimeDep, actor: ApiActor) -> dict[str, Any]:
    return await service.get_system_health(rt, actor=actor, system=name)


@router.get("/services/{name}/status")
async def service_status(name: str, rt: RuntimeDep, actor: ApiActor) -> dict[str, Any]:
    return await service.get_service_status(rt, actor=actor, service=name)


@router.get("/checks")
async def list_checks(rt: RuntimeDep, actor: ApiActor) -> list[dict[str, Any]]:
    return await service.list_checks(rt, actor=actor)


@router.post("/checks/{name}/run")
async def run_check(name: str, rt: RuntimeDep, actor: ApiActor) -> dict[str, Any]:
    return await service.run_check(rt, actor=actor, check=name)
