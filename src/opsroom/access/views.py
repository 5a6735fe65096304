"""JSON API: users, API tokens and one's own chat links. Thin: the service decides."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from opsroom.access import explain as explaining
from opsroom.access import links, service
from opsroom.access.names import normalise_name
from opsroom.access.schemas import (
    ExplainOut,
    LinkCodeOut,
    LinkOut,
    MeOut,
    TokenCreatedOut,
    TokenOut,
    TokenRequest,
    UserOut,
)
from opsroom.web.deps import ApiActor, PathId, RuntimeDep

router = APIRouter(tags=["access"])
# Generous here: the service normalises and says exactly what a user name may hold.
UserName = Annotated[str, Path(max_length=256)]
Platform = Annotated[str, Path(max_length=64)]
AccountId = Annotated[str, Path(max_length=links.MAX_ACCOUNT)]


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


@router.get("/me")
async def me(actor: ApiActor) -> MeOut:
    """Who the token (or session) is: its user's name, roles and permissions."""
    return MeOut(name=actor.name, roles=sorted(actor.roles), permissions=sorted(actor.permissions))


@router.get("/tokens")
async def list_tokens(rt: RuntimeDep, actor: ApiActor,
                      user: Annotated[str | None, Query(max_length=256)] = None) -> list[TokenOut]:
    """Tokens (never their values): your own, or with user.manage anyone's (`?user=` one person's)."""
    return [TokenOut.model_validate(t) for t in await service.list_tokens(rt, actor=actor, user=user)]


@router.post("/tokens", status_code=201)
async def create_token(body: TokenRequest, rt: RuntimeDep, actor: ApiActor) -> TokenCreatedOut:
    """A new API token for yourself (another user's needs user.manage); its value is in this answer only."""
    user = body.user if body.user is not None else actor.name
    token = await service.create_token(rt, actor=actor, user=user, name=body.name)
    return TokenCreatedOut(user=normalise_name(user), name=body.name, token=token)


@router.delete("/tokens/{token_id}", status_code=204)
async def revoke_token(rt: RuntimeDep, actor: ApiActor, token_id: PathId) -> Response:
    await service.revoke_token(rt, actor=actor, token_id=token_id)
    return Response(status_code=204)


@router.post("/me/link-code", status_code=201)
async def issue_link_code(rt: RuntimeDep, actor: ApiActor) -> LinkCodeOut:
    """A one-time code that links a chat account to the caller: type `link CODE` on the platform."""
    code, expires = await links.issue_link_code(rt, actor=actor)
    return LinkCodeOut(code=code, expires_at=expires,
                       how=f"type `link {code}` in a chat bound to an opsroom room within "
                           f"{round(links.CODE_TTL_S / 60)} minutes; it works once")


@router.get("/me/links")
async def my_links(rt: RuntimeDep, actor: ApiActor) -> list[LinkOut]:
    return [LinkOut.model_validate(i) for i in await links.list_links(rt, actor=actor, user=actor.name)]


# `:path`: account ids hold '/' and ':' on some platforms (IRC masks, Matrix ids); the client encodes them.
@router.delete("/me/links/{platform}/{account_id:path}", status_code=204)
async def unlink(rt: RuntimeDep, actor: ApiActor, platform: Platform, account_id: AccountId) -> Response:
    await links.unlink(rt, actor=actor, platform=platform, account_id=account_id, user=actor.name)
    return Response(status_code=204)


@router.get("/access/explain")
async def explain(rt: RuntimeDep, actor: ApiActor, action: Annotated[str, Query(max_length=32)],
                  target: Annotated[str, Query(max_length=512)],
                  user: Annotated[str | None, Query(max_length=256)] = None) -> ExplainOut:
    """Whether `user` (default: you) may do `action` on `target`, which role or binding decides, and why."""
    return await explaining.explain(rt, actor=actor, user=user if user is not None else actor.name,
                                    action=action, target=target)
