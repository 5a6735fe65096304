"""The built-in web room: an HTML page plus a WebSocket, and its ChatAdapter."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlparse

import structlog
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from opsroom.access import service as access
from opsroom.access.identity import Actor
from opsroom.approvals import service as approvals
from opsroom.chat.base import ChatAdapter, Message, MessageHandler, Person
from opsroom.errors import OpsroomError
from opsroom.events import ApprovalDecided, ApprovalRequested, Event
from opsroom.rooms import service as rooms
from opsroom.runtime import Runtime
from opsroom.web.deps import SESSION_COOKIE

log = structlog.get_logger(__name__)
router = APIRouter()


class _Conn:
    def __init__(self, ws: WebSocket, actor: Actor) -> None:
        self.ws, self.actor = ws, actor
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=500)

    def push(self, frame: dict[str, Any] | str) -> None:
        try:
            self.queue.put_nowait(frame if isinstance(frame, str) else json.dumps(frame))
        except asyncio.QueueFull:
            # A phone that stopped reading must not hold the room up; it reloads history on reconnect.
            pass


class WebAdapter(ChatAdapter):
    platform = "web"

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.conns: dict[str, set[_Conn]] = defaultdict(set)
        self._on_message: MessageHandler | None = None
        self._on_presence: Callable[[str, Person, bool], Awaitable[None]] | None = None

    async def start(self, on_message: MessageHandler,
                    on_presence: Callable[[str, Person, bool], Awaitable[None]]) -> None:
        self._on_message, self._on_presence = on_message, on_presence
        self.rt.bus.subscribe(ApprovalRequested, self._approvals_changed)
        self.rt.bus.subscribe(ApprovalDecided, self._approvals_changed)

    async def stop(self) -> None:
        for conns in self.conns.values():
            for c in list(conns):
                with contextlib.suppress(Exception):
                    await c.ws.close(code=1001)

    async def send(self, message: Message) -> None:
        # Serialised once for every listener: a room of 100 phones costs one json.dumps.
        frame = json.dumps({"type": "message", "id": message.id, "at": message.extra.get("at"),
                            "author": message.extra.get("author", "opsroom"), "kind": message.kind,
                            "text": message.text})
        for c in self.conns.get(message.room, ()):
            c.push(frame)

    async def stream_output(self, room: str, execution_id: int, text: str) -> None:
        frame = json.dumps({"type": "output", "execution_id": execution_id, "text": text})
        for c in self.conns.get(room, ()):
            c.push(frame)

    async def identify(self, platform_id: str) -> Person:
        name = platform_id.removeprefix("web:")
        return Person(platform_id, name, name)

    async def presence(self, room: str) -> list[Person]:
        names = sorted({c.actor.name for c in self.conns.get(room, ())})
        return [Person(f"web:{n}", n, n) for n in names]

    async def _approvals_changed(self, _ev: Event) -> None:
        for conns in self.conns.values():
            for c in list(conns):
                with contextlib.suppress(OpsroomError):
                    c.push({"type": "approvals", "items": await rooms.approval_views(self.rt, actor=c.actor)})

    async def connected(self, room: str, conn: _Conn) -> None:
        first = not any(c.actor.name == conn.actor.name for c in self.conns[room])
        self.conns[room].add(conn)
        if first and self._on_presence is not None:
            await self._on_presence(room, Person(f"web:{conn.actor.name}", conn.actor.name, conn.actor.name), True)

    async def disconnected(self, room: str, conn: _Conn) -> None:
        self.conns[room].discard(conn)
        last = not any(c.actor.name == conn.actor.name for c in self.conns[room])
        if last and self._on_presence is not None:
            await self._on_presence(room, Person(f"web:{conn.actor.name}", conn.actor.name, conn.actor.name), False)


def _same_origin(ws: WebSocket) -> bool:
    """Refuse cross-site WebSocket hijacking: a browser always sends Origin."""
    origin = ws.headers.get("origin")
    if origin is None:
        return True  # not a browser (CLI clients, tests); they still need the session cookie
    return urlparse(origin).netloc == ws.headers.get("host")


@router.websocket("/rooms/{room}/ws")
async def room_socket(ws: WebSocket, room: str) -> None:
    rt: Runtime = ws.app.state.rt
    adapter: WebAdapter = ws.app.state.web_adapter
    cookie = ws.cookies.get(SESSION_COOKIE)
    if not _same_origin(ws) or not cookie or room not in rt.catalog.rooms:
        await ws.close(code=4403)
        return
    try:
        actor, _csrf = await access.session_actor(rt, session_token=cookie, door="web")
    except OpsroomError:
        await ws.close(code=4401)
        return
    await ws.accept()
    conn = _Conn(ws, actor)
    sender = asyncio.get_running_loop().create_task(_sender(conn))
    await adapter.connected(room, conn)
    conn.push({"type": "approvals", "items": await rooms.approval_views(rt, actor=actor)})
    try:
        while True:
            raw = await ws.receive_text()
            await _handle_frame(rt, conn, room, raw)
    except WebSocketDisconnect:
        pass
    finally:
        sender.cancel()
        await adapter.disconnected(room, conn)


async def _sender(conn: _Conn) -> None:
    with contextlib.suppress(Exception):
        while True:
            await conn.ws.send_text(await conn.queue.get())


async def _handle_frame(rt: Runtime, conn: _Conn, room: str, raw: str) -> None:
    try:
        frame = json.loads(raw)
        kind = frame.get("type") if isinstance(frame, dict) else None
    except ValueError:
        kind = None
    try:
        if kind == "say" and isinstance(frame.get("text"), str):
            await rooms.say(rt, actor=conn.actor, room=room, text=frame["text"])
        elif kind == "decide" and isinstance(frame.get("id"), int) and frame.get("decision") in ("approve", "deny"):
            await approvals.decide(rt, actor=conn.actor, approval_id=frame["id"],
                                   approve=frame["decision"] == "approve", reason=frame.get("reason"))
        else:
            conn.push({"type": "error", "text": 'send {"type": "say", "text": "..."} or a decision'})
    except OpsroomError as exc:
        conn.push({"type": "error", "text": str(exc)})
