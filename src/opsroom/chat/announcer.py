"""The announcer: each announced event becomes its room messages once, for the whole cluster.

A singleton consumer of the event log (eventlog/consumer.py): one server at a time runs it (the
lease `consumer:announcer`; on SQLite, the one server). Its handle renders each event
(chat/announce.py) and stores the room messages, each with its RoomMessagePosted, in the
transaction that moves the consumer's position. A kill -9 before that commit leaves both undone
and the next holder (this server after a restart, or another) announces the event; after it,
nobody announces it again. The fan-out (sockets, platforms) follows the commit: on this server
through the hub, on the others from the RoomMessagePosted their relay brings (chat/hub.py).

A message names the event it announces in its `source` (`event:<uid>`): a server that has the
event itself (it made it, or the relay brought it) draws the request's buttons and mentions
from it, and a hub that waits for the announcement of its own event knows it when it comes.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import structlog
from sqlalchemy.orm import Session

from opsroom.chat.announce import ANNOUNCED, render
from opsroom.chat.base import Message
from opsroom.eventlog.consumer import Consumer, PostCommit
from opsroom.events import ApprovalRequested, Event, RoomMessagePosted
from opsroom.rooms import service as rooms
from opsroom.runtime import Runtime

if TYPE_CHECKING:
    from opsroom.chat.hub import RoomHub

log = structlog.get_logger(__name__)

ANNOUNCER = "announcer"
ANNOUNCED_TYPES = frozenset(t.type for t in ANNOUNCED)
_SOURCE = "event:"


def source_of(ev: Event) -> str:
    return f"{_SOURCE}{ev.uid}"


def announced_uid(source: str) -> str | None:
    """The uid of the event a message announces, from its `source`; None for any other message."""
    return source[len(_SOURCE):] if source.startswith(_SOURCE) else None


def extra_of(ev: Event) -> dict[str, object]:
    """What the fan-out adds to an announcement beyond its text: the request to draw buttons
    for, the approvers to mention, the execution to link to."""
    extra: dict[str, object] = {"event": ev.type, "correlation_id": ev.correlation_id or ""}
    if isinstance(ev, ApprovalRequested):
        extra["approval_id"] = ev.approval_id
        extra["approvers"] = list(ev.approvers)
    execution_id = getattr(ev, "execution_id", None)
    if isinstance(execution_id, int):
        extra["execution_id"] = execution_id
    return extra


class Announcer:
    def __init__(self, rt: Runtime, hub: RoomHub, *, every: float = 0.2) -> None:
        self.rt, self.hub = rt, hub
        # The consumer wakes itself when this process publishes one of its types (bus listener):
        # an event committed here is announced within one round, not one polling interval.
        self.consumer = Consumer(rt, name=ANNOUNCER, handle=self._handle, types=ANNOUNCED_TYPES, every=every)

    async def start(self) -> None:
        await self.consumer.start()

    async def stop(self) -> None:
        # One last round first: what this server committed just before a clean stop is announced
        # now, not when another server takes the lease over (or at the next start).
        with contextlib.suppress(Exception):
            await self.consumer.run_once()
        await self.consumer.stop()

    def _handle(self, s: Session, events: list[Event]) -> PostCommit | None:
        done: list[tuple[str, list[Message], list[RoomMessagePosted]]] = []
        for ev in events:
            if ev.uid in self.hub.arrivals.announced_here:
                continue
            try:
                note = render(self.rt, ev)
            except Exception:
                # A row that decodes but cannot be worded (a newer writer, a forged one) is skipped:
                # raising here would roll the round back and stop the room's log for good.
                log.exception("an announced event could not be rendered; skipped", type=ev.type, uid=ev.uid)
                continue
            if note is None:
                continue
            extra = extra_of(ev)
            msgs: list[Message] = []
            posted: list[RoomMessagePosted] = []
            for room in dict.fromkeys(note.rooms):
                if room not in self.rt.catalog.rooms:
                    continue
                p = rooms.add_message(s, self.rt, room=room, author="opsroom", kind=note.kind, text=note.text,
                                      reply_to=None, source=source_of(ev), correlation_id=ev.correlation_id)
                posted.append(p)
                msgs.append(Message(room=room, text=p.text, kind=note.kind, id=p.message_id,
                                    extra={**extra, "at": p.at, "author": "opsroom"}))
            if posted:
                done.append((ev.uid, msgs, posted))
        if not done:
            return None

        async def fan_out() -> None:
            for uid, msgs, posted in done:
                for p in posted:
                    self.rt.bus.publish(p)  # this server's streams; the log carries it to the others
                self.hub.announced(uid, msgs)

        return fan_out
