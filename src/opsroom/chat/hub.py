"""The room hub: stores room messages, fans them out to adapters, routes commands.

One ordered queue for everything said in rooms, so the room reads in the order
things happened (problem before recovery, request before approval).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import defaultdict
from typing import Any

import structlog

from opsroom.access import service as access
from opsroom.chat import commands
from opsroom.chat.announce import ANNOUNCED, render
from opsroom.chat.base import ChatAdapter, Message, Person
from opsroom.errors import OpsroomError
from opsroom.events import Event, ExecutionOutput, RoomMessagePosted, RoomPresence
from opsroom.rooms import service as rooms
from opsroom.runtime import Runtime
from opsroom.secrets.masking import mask

log = structlog.get_logger(__name__)
_Item = tuple[Message, "asyncio.Future[Message] | None"]


class RoomHub:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.adapters: list[ChatAdapter] = []
        self.people: dict[str, dict[str, Person]] = defaultdict(dict)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for event_type in ANNOUNCED:
            self.rt.bus.subscribe(event_type, self._on_event)
        self.rt.bus.subscribe(ExecutionOutput, self._on_output)
        self._worker = asyncio.get_running_loop().create_task(self._drain())
        for adapter in self.adapters:
            await adapter.start(self.on_message, self.on_presence)

    async def stop(self) -> None:
        for adapter in self.adapters:
            await adapter.stop()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    def add_adapter(self, adapter: ChatAdapter) -> None:
        self.adapters.append(adapter)

    # --- inbound --------------------------------------------------------

    async def on_message(self, msg: Message) -> None:
        if msg.room not in self.rt.catalog.rooms:
            return
        if msg.text != rooms.storable(msg.text):
            # From any adapter: the command, its echo and the reply all see the same clean text.
            msg = dataclasses.replace(msg, text=rooms.storable(msg.text))
        shown = commands.redact(self.rt, msg.text, learn=await self._may_run(msg.author))
        stored = await self.post(msg if shown == msg.text else
                                 Message(room=msg.room, text=shown, author=msg.author, kind=msg.kind))
        reply = await self.answer(msg)
        if reply:
            await self.post(Message(room=msg.room, text=reply, kind="bot", reply_to=stored.id))

    async def _may_run(self, person: Person | None) -> bool:
        """Whether what this person types as a secret may be taught to the process-wide masker."""
        if person is None or person.user is None:
            return False
        try:
            actor = await access.actor_by_name(self.rt, name=person.user, door="chat")
        except OpsroomError:
            return False
        return actor.can("runbook.run")

    async def answer(self, msg: Message) -> str:
        person = msg.author
        if person is None or person.user is None:
            return "I don't know who you are here; ask an admin to map your chat account to an opsroom user"
        try:
            actor = await access.actor_by_name(self.rt, name=person.user, door="chat")
        except OpsroomError as exc:
            return exc.message
        try:
            return await commands.handle(self.rt, actor=actor, room=msg.room, text=msg.text)
        except Exception:
            # The redacted line: the log is read by more people than the room's secrets are for.
            log.exception("chat command crashed", text=commands.redact(self.rt, msg.text)[:200])
            return "something went wrong on my side; the error is in the opsroom log"

    async def on_presence(self, room: str, person: Person, joined: bool) -> None:
        key = person.user or person.platform_id
        if joined:
            self.people[room][key] = person
        else:
            self.people[room].pop(key, None)
        self.rt.bus.publish(RoomPresence(room=room, person=person.display_name, joined=joined))
        verb = "joined" if joined else "left"
        await self.post(Message(room=room, text=f"{person.display_name} {verb} the room", kind="notice"))

    async def present(self, room: str) -> list[dict[str, Any]]:
        out = []
        for key, person in sorted(self.people[room].items()):
            roles: list[str] = []
            if person.user:
                with contextlib.suppress(OpsroomError):
                    roles = sorted((await access.actor_by_name(self.rt, name=person.user, door="chat")).roles)
            out.append({"name": person.display_name or key, "roles": roles})
        return out

    # --- outbound -------------------------------------------------------

    async def post(self, msg: Message) -> Message:
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((msg, fut))
        return await fut

    def post_nowait(self, msg: Message) -> None:
        self._queue.put_nowait((msg, None))

    async def _on_event(self, ev: Event) -> None:
        note = render(self.rt, ev)
        if note is None:
            return
        for room in note.rooms:
            if room in self.rt.catalog.rooms:
                self.post_nowait(Message(room=room, text=note.text, kind=note.kind,
                                         extra={"event": ev.type, "correlation_id": ev.correlation_id or ""}))

    async def _on_output(self, ev: ExecutionOutput) -> None:
        # Through the same queue as messages, so output never shows before "approved by".
        if ev.room is not None:
            self.post_nowait(Message(room=ev.room, text=ev.text, kind="output",
                                     extra={"execution_id": ev.execution_id}))

    async def _stream(self, msg: Message) -> None:
        """Output is live-only: shown to those watching, not stored as room history."""
        for adapter in self.adapters:
            stream = getattr(adapter, "stream_output", None)
            if stream is not None:
                await stream(msg.room, msg.extra["execution_id"], mask(msg.text))

    async def _drain(self) -> None:
        while True:
            msg, fut = await self._queue.get()
            if msg.kind == "output":
                try:
                    await self._stream(msg)
                except Exception:
                    log.exception("streaming output failed", room=msg.room)
                continue
            try:
                stored = await self._store(msg)
                for adapter in self.adapters:
                    try:
                        await adapter.send(stored)
                    except Exception:
                        log.exception("adapter send failed", platform=adapter.platform)
                if fut is not None and not fut.done():
                    fut.set_result(stored)
            except Exception as exc:
                log.exception("posting to room failed", room=msg.room)
                if fut is not None and not fut.done():
                    fut.set_exception(exc)

    async def _store(self, msg: Message) -> Message:
        author = msg.author.user or msg.author.display_name if msg.author else "opsroom"
        # Everything said in a room (people, replies, announcements) is masked once, by
        # store_message: what is stored, published to sockets and sent to every adapter is the
        # one text it returns.
        msg_id, at, text = await rooms.store_message(self.rt, room=msg.room, author=author or "?",
                                                     kind=msg.kind, text=msg.text, reply_to=msg.reply_to)
        self.rt.bus.publish(RoomMessagePosted(room=msg.room, message_id=msg_id, author=author or "?",
                                              text=text, kind=msg.kind, reply_to=msg.reply_to))
        return Message(room=msg.room, text=text, author=msg.author, id=msg_id, kind=msg.kind,
                       reply_to=msg.reply_to, extra={**msg.extra, "at": at, "author": author})
