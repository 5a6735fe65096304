"""What a room said while no server held a platform's connection reaches that platform, once.

Between a holder's death and another server's takeover of `chat:<platform>` (chat/ownership.py,
~3 s) every server stores what is said and announced, and none sends it to that platform: the
fan-out skips a platform this server does not hold. So the holder records how far it has sent
the room's messages, as a position in the event log: the row `chat-sent:<platform>` of
`consumer_positions` (the messages are `RoomMessagePosted` rows of the log, read in commit
order). The next holder sends, before anything newer, every message after that position of the
rooms bound to the platform, as the holder would have (no echo to where a line was said).

The position moves only past what was delivered: the holder takes its relay's position R (every
other server's message up to R is on this server's bus, its own were fanned out as stored), lets
the hub pass what it holds into the send queue (`flushed`), waits for the queue to be empty
(delivered, or given up by the queue as refused or overflowing) and then stores R, in one UPDATE
that moves it only forward and only while this server holds the lease by the store's clock. So
a platform that is away holds the position back, and its next holder sends what was queued.

Once, not twice: a message the new holder sends from the log may also come to it by the relay
(its fan-out then includes the platform). For TWICE_S after a takeover, `Fenced`
(chat/ownership.py) sends each of those (message, channel) once (`first_copy`); any other
message goes as it comes, so a forged log row reusing an id hides nothing else. A holder killed
after delivering a message and before storing the position after it (a window of about MARK_S)
has that message sent again by the next holder.

At most CATCH_UP_MAX messages said within CATCH_UP_S are sent after a takeover: a platform away
for an hour is not flooded; the room's history (web, API) has the rest.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from opsroom.chat.arrivals import relayed
from opsroom.chat.base import Binding, ChatAdapter, Outgoing
from opsroom.eventlog import sent
from opsroom.eventlog.log import Position
from opsroom.events import RoomMessagePosted
from opsroom.runtime import Runtime

if TYPE_CHECKING:
    from opsroom.chat.hub import RoomHub

log = structlog.get_logger(__name__)

PREFIX = "chat-sent:"
MARK_S = 0.2  # how often a holder tries to move its position (about the relay's pace)
KEEP_S = 5.0  # ... and moves it at least this often when nothing was sent (the log moves on)
FLUSH_S = 3.0  # longest wait for the hub (an announcement awaited in its place: 2 s) and the queue
CATCH_UP_MAX = 100
CATCH_UP_S = 600.0
TWICE_S = 60.0  # how long a message sent from the log may still come by the relay too
_TYPE = RoomMessagePosted.type


def position_name(platform: str) -> str:
    return f"{PREFIX}{platform}"


# Per adapter (the hub makes a new send queue, and so a new Fenced, whenever it drops one): until
# when, and the (message id, channel) sent from the log at its last takeover -> sent yet.
_CAUGHT: weakref.WeakKeyDictionary[ChatAdapter, tuple[float, dict[tuple[int, str], bool]]] = \
    weakref.WeakKeyDictionary()


_TAKEN: weakref.WeakKeyDictionary[ChatAdapter, float] = weakref.WeakKeyDictionary()  # monotonic


def just_taken(adapter: ChatAdapter) -> bool:
    """Whether this server took the adapter's connection over within the last TWICE_S."""
    return time.monotonic() - _TAKEN.get(adapter, -TWICE_S) < TWICE_S


def first_copy(adapter: ChatAdapter, out: Outgoing) -> bool:
    """Whether `out` is to be sent: False for the second copy of a message sent from the log."""
    caught = _CAUGHT.get(adapter)
    if caught is None or out.message_id is None:
        return True
    until, keys = caught
    if time.monotonic() > until:
        del _CAUGHT[adapter]
        return True
    key = (out.message_id, out.channel)
    if key not in keys:
        return True
    if keys[key]:
        return False
    keys[key] = True
    return True


class Handover:
    """One server's part: send what a takeover missed; as the holder, store how far it sent."""

    def __init__(self, rt: Runtime, hub: RoomHub, *, lease: Callable[[str], str]) -> None:
        self.rt, self.hub = rt, hub
        self.lease = lease  # platform -> its lease's name
        self.written: dict[str, Position] = {}  # held platforms: the position as last stored
        self._sent_seen: dict[str, tuple[int, int]] = {}  # (queue, what it had sent) at that store
        self._wrote_at: dict[str, float] = {}

    async def taken(self, platform: str) -> int:
        """Right after taking the platform's lease: queue what it missed; how many messages."""
        pos, found = await sent.missed(self.rt, name=position_name(platform), type_=_TYPE, within_s=CATCH_UP_S,
                                       limit=CATCH_UP_MAX)
        missed = [ev for ev in found if isinstance(ev, RoomMessagePosted)]
        adapter = self.hub.adapters[platform]
        _TAKEN[adapter] = time.monotonic()
        self.written[platform] = pos
        self._wrote_at[platform] = time.monotonic()
        self._sent_seen.pop(platform, None)
        outs = []
        for ev in missed:
            if ev.room not in self.rt.catalog.rooms:
                continue
            msg = relayed(ev)
            for name, channel in self.hub.channels(ev.room):
                if name != platform:
                    continue
                if msg.kind == "person" and msg.origin == Binding(name, channel) and not adapter.mirrors:
                    continue  # never echoed back to where it was said
                outs.append(self.hub.outgoing(msg, adapter, channel, ()))
        if not outs:
            return 0
        _CAUGHT[adapter] = (time.monotonic() + TWICE_S,
                            {(o.message_id, o.channel): False for o in outs if o.message_id is not None})
        for out in outs:
            await self.hub.queues[platform].put(out)
        log.info("sending what the platform missed while nobody held it", platform=platform, messages=len(outs))
        return len(outs)

    def forget(self, platform: str) -> None:
        self.written.pop(platform, None)

    async def mark(self, platform: str, *, wait: float = FLUSH_S) -> bool:
        """As the holder: store how far the platform has been sent everything; whether it moved.
        `wait`: how long the hub and the send queue may take to pass on what they hold."""
        last = self.written.get(platform)
        relay = self.rt.outbox
        upto = relay.position if relay is not None else None
        if last is None or upto is None or upto <= last:
            return False
        queue = self.hub.queues[platform]
        sent = (id(queue), queue.stats.delivered + queue.stats.failed + queue.stats.overflow)
        if sent == self._sent_seen.get(platform) and time.monotonic() - self._wrote_at.get(platform, 0.0) < KEEP_S:
            return False  # nothing sent since the last store: it can wait
        # What the relay published up to `upto` reaches the hub's queue in its subscribers' first
        # step (they are ready to run); then the hub passes it on to the send queues.
        for _ in range(3):
            await asyncio.sleep(0)
        try:
            await asyncio.wait_for(self.hub.flushed(), wait)
        except TimeoutError:
            return False
        if not await self.hub.queues[platform].drained(timeout=wait):
            return False
        if not await self._store(platform, upto):
            return False
        self.written[platform] = upto
        self._sent_seen[platform] = sent
        self._wrote_at[platform] = time.monotonic()
        return True

    async def _store(self, platform: str, upto: Position) -> bool:
        return await sent.store(self.rt, name=position_name(platform), lease=self.lease(platform), upto=upto)
