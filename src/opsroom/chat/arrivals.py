"""What reaches a room's queue from elsewhere: announcements and messages other servers stored.

The hub (chat/hub.py) keeps one ordered queue per server. Announcements no longer start there:
the announcer (chat/announcer.py) stores them from the event log, here or on another server.
For an event made on this server the queue keeps a place (`Pending`) where its announcement is
fanned out when it comes back, so the room keeps the order things happened in. This module is
that bookkeeping: which places are kept, what came back for them, and what the relay brings.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import structlog

from opsroom.chat.announce import one_line, render
from opsroom.chat.announcer import ANNOUNCED_TYPES, announced_uid, extra_of
from opsroom.chat.base import Binding, Message, Person
from opsroom.eventlog.relay import is_foreign
from opsroom.events import Event, RoomMessagePosted
from opsroom.rooms import service as rooms
from opsroom.runtime import Runtime
from opsroom.secrets.masking import mask

log = structlog.get_logger(__name__)

ANNOUNCE_WAIT_S = 2.0  # how long the room waits for the announcement of an event made here
UNLOGGED_WAIT_S = 1.0  # ... and for it to be in the event log at all (results are logged every 0.5 s)
REMEMBERED = 1000  # recent announced events and announcements, by uid


@dataclass
class Pending:
    """The announcement of an event this server made, awaited in the room's queue in its place."""

    event: Event
    expected: int  # one message per room the event is announced in
    got: list[Message] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Arrivals:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._pending: dict[str, Pending] = {}
        self._events: OrderedDict[str, Event] = OrderedDict()  # uid -> announced event seen here
        self._announced: OrderedDict[str, None] = OrderedDict()  # uids whose announcement came already
        # Announced by the hub itself (never logged in time): if it is logged after all, this
        # server's announcer skips it.
        self.announced_here: OrderedDict[str, None] = OrderedDict()

    def place_for(self, ev: Event) -> Pending | None:
        """An announced event on this server's bus: the place its announcement takes in the
        queue when it was made here (logged already, or yet to be: the monitor publishes first
        and its results writer logs the event with the check's state row); None otherwise."""
        if ev.type not in ANNOUNCED_TYPES:
            return None
        _remember(self._events, ev.uid, ev)
        if is_foreign(self.rt, ev) or ev.uid in self._announced:
            return None
        note = render(self.rt, ev)
        if note is None:
            return None
        here = [room for room in dict.fromkeys(note.rooms) if room in self.rt.catalog.rooms]
        if not here:
            return None
        pending = self._pending[ev.uid] = Pending(ev, len(here))
        return pending

    def arrived(self, uid: str, msgs: list[Message]) -> list[Message]:
        """Messages of an announcement, stored already: kept for their place if one waits for
        them; else returned, for the end of the queue."""
        _remember(self._announced, uid, None)
        pending = self._pending.get(uid)
        if pending is None:
            return msgs
        pending.got.extend(msgs)
        if len(pending.got) >= pending.expected:
            pending.done.set()
        return []

    def from_log(self, ev: RoomMessagePosted) -> tuple[str | None, Message] | None:
        """A message the relay brought: (the uid of the event it announces or None, the message
        to fan out), or None when it is this server's own or names no room here."""
        if not is_foreign(self.rt, ev):
            return None  # stored here: fanned out as it was stored
        if ev.room not in self.rt.catalog.rooms:
            log.warning("a relayed room message names no room of this catalog; dropped",
                        room=one_line(ev.room[:64]), uid=ev.uid, origin=one_line(str(ev.origin)[:96]))
            return None
        msg = relayed(ev)
        uid = announced_uid(ev.source)
        seen = self._events.get(uid) if uid is not None else None
        if seen is not None:
            msg = dataclasses.replace(msg, extra={**extra_of(seen), **msg.extra})
        return uid, msg

    async def wait(self, pending: Pending) -> list[Message] | None:
        """Wait, at most ANNOUNCE_WAIT_S, for the announcement of `pending`: its messages (all or
        those that came), or None when the event never reached the log (announce it here)."""
        ev = pending.event
        loop = asyncio.get_running_loop()
        began = loop.time()
        while not pending.done.is_set():
            waited = loop.time() - began
            # A producer that only publishes never logs: the room must not wait for it long.
            if waited >= ANNOUNCE_WAIT_S or (ev.origin is None and waited >= UNLOGGED_WAIT_S):
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pending.done.wait(), 0.05)
        # From now on a late message of this announcement goes to the queue's end.
        self._pending.pop(ev.uid, None)
        if not pending.done.is_set() and not pending.got and ev.origin is None:
            log.info("an announced event was never written to the event log; announced here",
                     type=ev.type, uid=ev.uid)
            _remember(self._announced, ev.uid, None)
            _remember(self.announced_here, ev.uid, None)
            return None
        if not pending.done.is_set():
            log.info("an announcement is late; the room goes on without waiting", uid=ev.uid)
        return pending.got


def relayed(ev: RoomMessagePosted) -> Message:
    """A message another server stored, as this hub fans it out. The log is an input like any
    other (a forged or newer row): its text is masked and bounded again as store_message does,
    and each adapter renders it for its platform (chat/safe.py) as any line."""
    origin = None
    if ev.kind == "person" and ev.source.startswith("said:"):
        with contextlib.suppress(ValueError):
            origin = Binding.parse(ev.source.removeprefix("said:"))
    author = Person(platform_id="", display_name=ev.author) if ev.kind == "person" else None
    kind = ev.kind if ev.kind in ("person", "bot", "notice") else "notice"
    text = rooms.storable(mask(ev.text))[:8000]
    return Message(room=ev.room, text=text, author=author, id=ev.message_id, kind=kind, reply_to=ev.reply_to,
                   origin=origin, extra={"at": ev.at, "author": ev.author})


def _remember(seen: OrderedDict[str, Any], key: str, value: Any) -> None:
    seen[key] = value
    seen.move_to_end(key)
    if len(seen) > REMEMBERED:
        seen.popitem(last=False)
