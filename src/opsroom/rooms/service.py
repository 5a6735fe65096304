"""Rooms service: what a person sees on opening a room, and saying something in it."""

from __future__ import annotations

import contextlib
import difflib
import re
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from opsroom.access import service as access
from opsroom.access.identity import Actor
from opsroom.approvals import service as approvals
from opsroom.audit import service as audit
from opsroom.errors import NotFound, OpsroomError
from opsroom.eventlog import log as eventlog
from opsroom.events import RoomMessagePosted
from opsroom.rooms.models import RoomMessageRow
from opsroom.runtime import Runtime
from opsroom.secrets.masking import mask

_ADD_MESSAGE = insert(RoomMessageRow)


def _room(rt: Runtime, room: str) -> None:
    if room not in rt.catalog.rooms:
        raise NotFound(f"there is no room {room!r}", hint=f"rooms: {', '.join(sorted(rt.catalog.rooms))}")


def resolve_room(rt: Runtime, text: str) -> str:
    """The room named `text`, or NotFound with the nearest names (a run reporting to a typo'd room
    must be refused, not reported nowhere)."""
    if text in rt.catalog.rooms:
        return text
    close = difflib.get_close_matches(text, sorted(rt.catalog.rooms), n=3, cutoff=0.5)
    hint = (f"did you mean {' or '.join(repr(c) for c in close)}?" if close
            else f"rooms: {', '.join(sorted(rt.catalog.rooms)) or 'none (add one under `rooms:`)'}")
    raise NotFound(f"there is no room {text[:64]!r}", hint=hint)


def _environments(rt: Runtime, room: str) -> list[str]:
    cat = rt.catalog
    return sorted({cat.systems[s].environment for s in (cat.rooms[room].systems or cat.systems) if s in cat.systems})


async def list_rooms(rt: Runtime, *, actor: Actor) -> list[dict[str, Any]]:
    """Every room: its name, title, systems and the protected environments it shows."""
    actor.require("status.read", what="list rooms")
    cat = rt.catalog
    out = [{"name": name, "title": r.title or name, "systems": list(r.systems or cat.systems),
            "protected": [e for e in _environments(rt, name) if cat.is_protected(e)]}
           for name, r in cat.rooms.items()]
    await audit.append_alone(rt, actor=actor, action="room.list", target="rooms", details={"count": len(out)})
    return out


async def messages(rt: Runtime, *, actor: Actor, room: str, after: int | None,
                   limit: int) -> list[RoomMessageRow]:
    """A room's messages, oldest first: with `after`, the first `limit` stored after that id (walk
    forward by passing the last id back); without it, the newest `limit`."""
    actor.require("status.read", what="read rooms")
    _room(rt, room)
    if after is None:
        rows = await history_of(rt, room=room, limit=limit)
    else:
        query = (select(RoomMessageRow).where(RoomMessageRow.room == room, RoomMessageRow.id > after)
                 .order_by(RoomMessageRow.id).limit(limit))
        async with rt.read() as s:
            rows = list((await s.execute(query)).scalars())
    await audit.append_alone(rt, actor=actor, action="room.read", target=f"room:{room}",
                             details={"count": len(rows)})
    return rows


async def open_room(rt: Runtime, *, actor: Actor, room: str, limit: int = 50) -> dict[str, Any]:
    """History, open requests and the room's environment marking; opening a room is a view."""
    actor.require("status.read", what="open rooms")
    _room(rt, room)
    history = await history_of(rt, room=room, limit=limit)
    cat = rt.catalog
    envs = _environments(rt, room)
    await audit.append_alone(rt, actor=actor, action="room.open", target=f"room:{room}")
    return {
        "room": room,
        "title": cat.rooms[room].title or room,
        "protected": [e for e in envs if cat.is_protected(e)],
        "messages": [{"id": m.id, "at": m.at, "author": m.author, "kind": m.kind, "text": m.text} for m in history],
        "approvals": await approval_views(rt, actor=actor),
    }


async def approval_views(rt: Runtime, *, actor: Actor,
                         sign: Callable[[int, str], str] | None = None) -> list[dict[str, Any]]:
    """Open requests as a room shows them; `sign(id, binding_hash)` adds the web door's decision
    token to the ones this actor may decide (the binding hash itself never leaves the server)."""
    rows = await approvals.list_open(rt, actor=actor)
    views = []
    for r in rows:
        # Shown, not enforced here: decide() refuses regardless of what the page offers.
        can = actor.can_somewhere("approval.decide") and r.requester != actor.name
        view = {"id": r.id, "summary": r.summary, "requester": r.requester, "roles": r.roles,
                "expires_at": r.expires_at, "can_decide": can}
        if can and sign is not None:
            view["token"] = sign(r.id, r.binding_hash)
        views.append(view)
    return views


async def join_room(rt: Runtime, *, actor: Actor, room: str) -> None:
    """A live connection to a room (the web room's socket) is a view too: checked and audited."""
    actor.require("status.read", what="join rooms")
    _room(rt, room)
    await audit.append_alone(rt, actor=actor, action="room.join", target=f"room:{room}")


REPLAY_MAX = 500  # a socket that missed more is told to reload rather than flooded


async def missed(rt: Runtime, *, actor: Actor, room: str, after: int) -> tuple[list[dict[str, Any]], bool]:
    """What a reconnecting socket missed: the room's messages stored after id `after`, oldest
    first, at most REPLAY_MAX of them (the newest), and whether older ones were left out.
    Not audited again: the socket's own `room.join` record already covers this view."""
    actor.require("status.read", what="read rooms")
    _room(rt, room)
    rows = await history_of(rt, room=room, after=after, limit=REPLAY_MAX + 1)
    cut = len(rows) > REPLAY_MAX
    return [{"type": "message", "id": m.id, "at": m.at, "author": m.author, "kind": m.kind, "text": m.text}
            for m in rows[-REPLAY_MAX:]], cut


async def say(rt: Runtime, *, actor: Actor, room: str, text: str) -> None:
    """A line from the web room, which has its own adapter like every platform: the room is
    checked here, and the line goes in through that adapter to the hub. Speaking in a room needs
    what joining it needs; what the line asks for (a command) is checked again as it is handled."""
    actor.require("status.read", what="speak in rooms")
    _room(rt, room)
    said = rt.live_rooms.web
    if said is None:
        raise NotFound("the web room is not running in this server", hint="start it with `opsroom serve`")
    await said(room, actor, text)


async def present(rt: Runtime, *, room: str) -> list[dict[str, Any]]:
    """Who is in a room now (the chat platforms and web sockets of this server), with their roles.
    Part of the room's view, as `who` shows it: not audited on its own."""
    out = []
    for key, person in sorted(rt.live_rooms.people[room].items()):
        roles: list[str] = []
        if person.user:
            with contextlib.suppress(OpsroomError):
                roles = sorted((await access.actor_by_name(rt, name=person.user, door="chat")).roles)
        out.append({"name": person.display_name or key, "roles": roles})
    return out


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """Text any store keeps: a lone UTF-16 surrogate cannot be encoded as UTF-8 and PostgreSQL
    refuses NUL; both become U+FFFD, as a chat platform's odd bytes must not lose the message."""
    return _UNSTORABLE.sub("\ufffd", text)


def add_message(s: Session, rt: Runtime, *, room: str, author: str, kind: str, text: str, reply_to: int | None,
                source: str = "opsroom", correlation_id: str | None = None) -> RoomMessagePosted:
    """Keep what was said (people and bot) in the caller's transaction: the room's history, the
    incident's raw timeline, and its RoomMessagePosted in the event log, which commit together
    (the announcer stores an announcement in the transaction that moves its log position; other
    servers fan the message out to their web rooms and platform connections from the log).

    The text is masked, storable and bounded here, once, so what the hub then publishes to
    sockets and adapters is exactly what every viewer reads later. The event is returned with
    its origin set; the caller publishes it on the local bus after the commit.
    """
    at = time.time()
    text = storable(mask(text))[:8000]
    values = {"room": room, "at": at, "author": author, "kind": kind, "text": text, "reply_to": reply_to}
    # Prebuilt Core insert: every announcement and chat line passes here, often while a
    # recovery is being dispatched, and the unit of work would cost several times the SQL.
    msg_id = int(s.connection().execute(_ADD_MESSAGE, values).inserted_primary_key[0])  # type: ignore[index]
    ev = RoomMessagePosted(room=room, message_id=msg_id, author=author, text=text, kind=kind, reply_to=reply_to,
                           at=at, source=source, correlation_id=correlation_id)
    eventlog.append(s, ev, origin=rt.node_id)
    return ev


async def post_message(rt: Runtime, *, room: str, author: str, kind: str, text: str, reply_to: int | None,
                       source: str = "opsroom") -> RoomMessagePosted:
    """add_message in a transaction of its own (a person's line, the bot's reply)."""
    return await rt.transact(lambda s: add_message(s, rt, room=room, author=author, kind=kind, text=text,
                                                   reply_to=reply_to, source=source))


async def store_message(rt: Runtime, *, room: str, author: str, kind: str, text: str,
                        reply_to: int | None) -> tuple[int, float, str]:
    """post_message, answered as (id, time, the text as stored)."""
    ev = await post_message(rt, room=room, author=author, kind=kind, text=text, reply_to=reply_to)
    return ev.message_id, ev.at, ev.text


async def history_of(rt: Runtime, *, room: str, limit: int = 50, after: int | None = None) -> list[RoomMessageRow]:
    """The room's last `limit` messages, oldest first; with `after`, only those stored after that
    id (what a reconnecting socket missed), still the newest `limit` of them."""
    query = select(RoomMessageRow).where(RoomMessageRow.room == room)
    if after is not None:
        query = query.where(RoomMessageRow.id > after)
    async with rt.read() as s:
        rows = list((await s.execute(query.order_by(RoomMessageRow.id.desc()).limit(limit))).scalars())
    return rows[::-1]
