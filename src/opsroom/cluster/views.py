"""JSON API: the cluster's nodes. Thin: parse, call the service layer, return."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from opsroom.cluster import service
from opsroom.web.deps import ApiActor, RuntimeDep

router = APIRouter(tags=["cluster"])


@router.get("/cluster")
async def cluster_status(rt: RuntimeDep, actor: ApiActor) -> dict[str, Any]:
    """Every server and worker: heartbeat age, the shards and leases it holds, checks scheduled, lag."""
    return await service.cluster_status(rt, actor=actor)
