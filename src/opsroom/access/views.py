"""JSON API: users (list, disable, enable) and API tokens (list, revoke). Thin: the service decides."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from opsroom.access import service
from opsroom.access.schemas import TokenOut, UserOut
from opsroom.web.deps import ApiActor, PathId, RuntimeDep

router = APIRouter(tags=["access"])
# Generous here: the service normalises and says exactly what a user name may hold.
UserName = Annotated[str, Path(max_length=256)]


@router.get("/users")
async def list_users(rt: RuntimeDep, actor: ApiActor) -> list[UserOut]:
    return [UserOut.model_validate(u) for u in await service.list_users(rt, actor=actor)]


@router.post("/users/{name}/disable", status_code=204)
async def disable_user(rt: RuntimeDep, actor: ApiActor, name: UserName) -> Response:
    await service.disable_user(rt, actor=actor, name=name)
    return Response(status_code=204)


@router.post("/users/{name}/enable", status_code=204)
async def enable_user(rt: RuntimeDep, actor: ApiActor, name: UserName) -> Response:
    await service.enable_user(rt, actor=actor, name=name)
    return Response(status_code=204)


@router.get("/tokens")
async def list_tokens(rt: RuntimeDep, actor: ApiActor, user: str | None = None) -> list[TokenOut]:
    return [TokenOut.model_validate(t) for t in await service.list_tokens(rt, actor=actor, user=user)]


@router.delete("/tokens/{token_id}", status_code=204)
async def revoke_token(rt: RuntimeDep, actor: ApiActor, token_id: PathId) -> Response:
    await service.revoke_token(rt, actor=actor, token_id=token_id)
    return Response(status_code=204)
