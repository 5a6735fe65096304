"""JSON API: the cluster's nodes. Thin: parse, call the service layer, return."""

from __future__ import annotations

from fastapi import APIRouter

from opsroom.cluster import service
from opsroom.cluster.schemas import ClusterOut
from opsroom.web.deps import ApiActor, RuntimeDep

router = APIRouter(tags=["cluster"])


@router.get("/cluster", response_model=ClusterOut)
async def cluster_status(rt: RuntimeDep, actor: ApiActor) -> ClusterOut:
    """Every server and worker: heartbeat age, the shards and leases it holds, checks scheduled, lag."""
    return ClusterOut.model_validate(await service.cluster_status(rt, actor=actor))
