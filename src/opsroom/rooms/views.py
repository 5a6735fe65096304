"""JSON API: rooms and their messages. Thin: parse, call the service layer, return."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from opsroom.rooms import service
from opsroom.rooms.schemas import MessageOut, RoomOut, SaidOut, SayRequest
from opsroom.web.apitypes import PAGED, Cursor, decode_cursor, limit_query, page
from opsroom.web.deps import ApiActor, QueryId, RuntimeDep

router = APIRouter(tags=["rooms"])
RoomName = Annotated[str, Path(max_length=128)]


@router.get("/rooms")
async def list_rooms(rt: RuntimeDep, actor: ApiActor) -> list[RoomOut]:
    return [RoomOut.model_validate(r) for r in await service.list_rooms(rt, actor=actor)]


@router.get("/rooms/{room}/messages", responses=PAGED)
async def list_messages(room: RoomName, request: Request, response: Response, rt: RuntimeDep, actor: ApiActor,
                        after: QueryId = None, cursor: Cursor = None,
                        limit: int = limit_query(50, 500)) -> list[MessageOut]:
    """Oldest first. Without `after`: the newest `limit` messages. With `after=ID`: those stored after
    that id, a page at a time (X-Next-Cursor while more follow) — what a client that was away missed."""
    start = decode_cursor(f"room:{room}", cursor)
    start = start if start is not None else after
    rows = await service.messages(rt, actor=actor, room=room, after=start,
                                  limit=limit + 1 if start is not None else limit)
    return page(request, response, resource=f"room:{room}", rows=[MessageOut.model_validate(m) for m in rows],
                limit=limit, key=lambda m: m.id)


@router.post("/rooms/{room}/messages", status_code=201)
async def say(room: RoomName, body: SayRequest, rt: RuntimeDep, actor: ApiActor) -> SaidOut:
    """Say a line in the room as yourself: a command (`status`, `run NAME`) is answered as if typed
    there, with your permissions, and audited the same way."""
    newest = await service.history_of(rt, room=room, limit=1)
    await service.say(rt, actor=actor, room=room, text=body.text)
    after = newest[-1].id if newest else 0
    said = await service.messages(rt, actor=actor, room=room, after=after, limit=100)
    return SaidOut(room=room, messages=[MessageOut.model_validate(m) for m in said])
