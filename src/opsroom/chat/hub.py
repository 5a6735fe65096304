"""The room hub: one conversation per room, whatever platforms it is bound to.

Everything said in a room passes one ordered queue, so the room reads in the order things
happened (problem before recovery, request before approval). Each stored line then goes to
every binding of the room through that adapter's own send queue: a person's line to every
binding but the one it came from, the bot's to all. The hub never waits for a platform.

In a cluster (docs/cluster.md, "Rooms and chat connections"):
- Announcements are made by the announcer (chat/announcer.py), a log consumer that one server
  runs, never from this server's bus: two servers would both announce, and a crash between a
  change's commit and its announcement would lose it. For an event this server made, the queue
  keeps its place (chat/arrivals.py): what follows it waits, up to 2 s, for its
  announcement to come back (from the local announcer or another server's), so the order holds.
  An event still not in the log by then (a producer that only publishes) is announced here.
- Messages another server stored reach this server's web rooms and the platform connections it
  holds through the relay (a RoomMessagePosted of foreign origin); its own are fanned out as
  they are stored. Each message is fanned out once per server, by the server that stored it or
  by the relay, never both.
- Each platform connection is held by one server (chat/ownership.py); the web room runs on all.
  What a platform POSTs (webhooks, button clicks) is taken by every server: each adapter's
  inbound side listens everywhere (ChatAdapter.listen), a delivery id is claimed in the store
  so a retry on another server runs nothing twice, and replies reach the platform through its
  holder (chat/inbound.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import Any

import structlog

from opsroom.access import links
from opsroom.access import service as access
from opsroom.access.identity import Actor
from opsroom.approvals import service as approvals
from opsroom.audit.refusals import AUDITED_PER_MINUTE, RefusalAudit
from opsroom.chat import accounts, commands
from opsroom.chat.announce import render
from opsroom.chat.announcer import Announcer, extra_of
from opsroom.chat.arrivals import Arrivals, Pending
from opsroom.chat.base import Binding, ChatAdapter, Click, Incoming, Mention, Message, Outgoing, Person
from opsroom.chat.inbound import ChatDirectReply, Deliveries
from opsroom.chat.ownership import ChatOwnership, Fenced
from opsroom.chat.sendqueue import SendQueue
from opsroom.errors import OpsroomError
from opsroom.eventlog import log as eventlog
from opsroom.events import AccessChanged, CatalogReloaded, Event, ExecutionOutput, RoomMessagePosted, RoomPresence
from opsroom.rooms import service as rooms
from opsroom.rooms.live import Platform
from opsroom.runtime import Runtime
from opsroom.secrets.masking import mask

log = structlog.get_logger(__name__)
ACTOR_CACHE_S = 5.0  # the CLI's role edits apply at the next start; its disables send AccessChanged
REFUSALS_AUDITED = AUDITED_PER_MINUTE  # per platform and minute; more are counted into one record


# A message to store (id None) or already stored (fan out only), the place kept for an
# announcement, or None: flushed()'s marker.
_Item = tuple[Message | Pending | None, "asyncio.Future[Message] | None"]


class RoomHub:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.adapters: dict[str, ChatAdapter] = {}
        self.queues: dict[str, SendQueue] = {}
        # Who is present where: kept in the Runtime's read model, which services read (`who`).
        self.people = rt.live_rooms.people
        self.routes: dict[tuple[str, str], str] = {}  # (adapter name, channel) -> room
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self.deliveries = Deliveries(rt)  # a platform's retry, on any server, is handled once
        self._refusals = RefusalAudit(rt, action="chat.refused")
        self._actors: dict[str, tuple[float, Actor | OpsroomError]] = {}
        self._access_epoch = 0  # platform -> [window start, seen, unaudited]
        self.running: set[str] = set()  # adapters started (the platforms this server holds, the web room)
        self.ownership: ChatOwnership | None = None  # PostgreSQL: which platforms this server holds
        self.announcer: Announcer | None = None
        self.arrivals = Arrivals(rt)

    def add_adapter(self, adapter: ChatAdapter, name: str | None = None) -> None:
        adapter.name = name or adapter.name or adapter.platform
        if adapter.name in self.adapters:
            raise ValueError(f"two chat adapters are named {adapter.name!r}")
        self.adapters[adapter.name] = adapter
        self.queues[adapter.name] = self._queue_for(adapter)
        live = self.rt.live_rooms
        live.platforms[adapter.name] = Platform(adapter.name, adapter.implicit, adapter.trusted_identity)
        said = getattr(adapter, "said", None)
        if adapter.name == "web" and said is not None:
            live.web = said  # rooms.service.say hands the web room's lines in here

    def _queue_for(self, adapter: ChatAdapter) -> SendQueue:
        return SendQueue(adapter if adapter.implicit else Fenced(adapter, self.holds))

    def holds(self, name: str) -> bool:
        """Whether this server speaks for adapter `name` now: the web room always; a platform
        while this server holds its connection (always without a cluster)."""
        adapter = self.adapters.get(name)
        if adapter is None:
            return False
        return adapter.implicit or self.ownership is None or self.ownership.holds(name)

    def channels(self, room: str) -> list[tuple[str, str]]:
        """(adapter name, channel) of every binding of a room that has an adapter here."""
        out = [(name, room) for name, a in self.adapters.items() if a.implicit]
        spec = self.rt.catalog.rooms.get(room)
        for text in spec.bind if spec is not None else ():
            name, _, channel = text.partition(":")
            if name in self.adapters and not self.adapters[name].implicit:
                out.append((name, channel.strip()))
        return out

    def _follow_catalog(self) -> None:
        """Routes as the running catalog binds its rooms: a line from a newly bound channel reaches its room."""
        self.routes = {(name, channel): room for room in self.rt.catalog.rooms for name, channel in self.channels(room)}

    async def start(self) -> None:
        """Start the room: its queue, the announcer and the adapters: the web room here always,
        each platform where its connection is held."""
        self._follow_catalog()
        self.rt.bus.subscribe(AccessChanged, self._access_changed)
        # A listener, called in publish itself: the place kept for an announcement is taken
        # before anything the publisher does next can reach the queue.
        self.rt.bus.add_listener(self._on_event)
        self.rt.bus.subscribe(ExecutionOutput, self._on_output)
        self.rt.bus.subscribe(RoomMessagePosted, self._on_posted)
        self.rt.bus.subscribe(ChatDirectReply, self._on_direct)
        self._worker = asyncio.get_running_loop().create_task(self._drain())
        self.announcer = Announcer(self.rt, self)
        await self.announcer.start()
        if self.rt.engine.dialect.name == "postgresql":
            self.ownership = ChatOwnership(self.rt, self)
        for name, adapter in self.adapters.items():
            self.queues[name].start()
            if adapter.implicit or self.ownership is None:
                await self.start_adapter(name)
            else:
                await self._listen(name)  # what the platform POSTs is taken here, holder or not
        if self.ownership is not None:
            await self.ownership.start()  # starts the platforms whose connection it takes

    async def start_adapter(self, name: str) -> None:
        if name in self.running:
            return
        self.running.add(name)
        bound = sorted(channel for (n, channel) in self.routes if n == name)
        try:
            await self.adapters[name].start(self, bound)
        except Exception:
            # One platform that cannot start (a bad token) must not keep the others or the
            # web room from running: it is logged, and its queue holds what it misses.
            log.exception("chat adapter failed to start", platform=name)

    async def _listen(self, name: str) -> None:
        bound = sorted(channel for (n, channel) in self.routes if n == name)
        try:
            await self.adapters[name].listen(self, bound)
        except Exception:
            log.exception("chat adapter failed to listen", platform=name)

    async def stop_adapter(self, name: str) -> None:
        """Disconnect a platform whose connection this server no longer holds, at once: what its
        queue still held is dropped (the new holder speaks from now on). Its inbound side (what
        the platform POSTs) keeps listening here."""
        if name not in self.running:
            return
        self.running.discard(name)
        old = self.queues[name]
        self.queues[name] = self._queue_for(self.adapters[name])
        self.queues[name].start()
        await old.stop()
        try:
            async with asyncio.timeout(5):
                await self.adapters[name].stop()
        except Exception:
            log.warning("stopping a chat adapter failed", platform=name, exc_info=True)

    async def stop(self) -> None:
        self.rt.bus.remove_listener(self._on_event)
        self.rt.live_rooms.web = None
        if self.announcer is not None:
            await self.announcer.stop()
        for name, adapter in self.adapters.items():
            if name in self.running:
                await self.queues[name].drained(timeout=2.0)
                with contextlib.suppress(Exception):
                    await adapter.stop()
            await self.queues[name].stop()
            with contextlib.suppress(Exception):
                await adapter.close()  # its inbound side
        self.running.clear()
        if self.ownership is not None:
            await self.ownership.stop()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per adapter: its send queue's figures, whether it is connected, and whether this server
        holds its connection (a platform another server holds is not connected here, rightly)."""
        return {name: {**dataclasses.asdict(q.stats), "queued": len(q), "connected": self.adapters[name].is_connected(),
                       "held": self.holds(name)}
                for name, q in self.queues.items()}

    # --- what adapters hand in (AdapterSink) ------------------------------

    async def _first_time(self, adapter: ChatAdapter, delivery_id: str | None) -> bool:
        return delivery_id is None or await self.deliveries.claim(adapter.name, delivery_id)

    async def _person(self, adapter: ChatAdapter, author: Person) -> Person:
        if adapter.trusted_identity:
            return author
        user = await links.linked_user(self.rt, platform=adapter.name, account_id=author.platform_id)
        return dataclasses.replace(author, user=user)

    def _lost(self, adapter: ChatAdapter) -> bool:
        """Still connected, no longer held (paused past its lease): what it hears, the new holder
        hears too and answers. A webhook delivery to a server that holds no connection for it
        (it is not running here, only listening) is taken: the platform sent it to this server
        alone."""
        return adapter.name in self.running and not self.holds(adapter.name)

    async def message(self, adapter: ChatAdapter, incoming: Incoming) -> None:
        if self._lost(adapter):
            return  # a connection this server lost: the holder answers it
        if incoming.author.is_bot or not await self._first_time(adapter, incoming.delivery_id):
            return  # never answer a bot, ourselves included; a redelivery is answered once
        room = self.routes.get((adapter.name, incoming.channel))
        person = await self._person(adapter, incoming.author)
        if room is None:
            await self._direct(adapter, incoming, person)
            return
        await self.on_message(Message(room=room, text=incoming.text, author=person,
                                      origin=_binding(adapter, incoming.channel)))

    async def _direct(self, adapter: ChatAdapter, incoming: Incoming, person: Person) -> None:
        """A channel no room is bound to (a direct message to the bot): only one's own account
        (`link CODE`, `whoami`, `help`) is handled there, so a code need not be typed in a
        shared channel. Nothing is stored: it belongs to no room."""
        reply = await accounts.handle(self.rt, platform=adapter.name, person=person, text=incoming.text)
        if not reply:
            return
        if self.holds(adapter.name):
            await self.queues[adapter.name].put(Outgoing(room="", channel=incoming.channel, text=reply))
        else:  # taken on a server without the connection: its holder sends it, from the log
            await eventlog.emit(self.rt, ChatDirectReply(platform=adapter.name, channel=incoming.channel,
                                                         text=mask(reply)))

    async def _on_direct(self, ev: ChatDirectReply) -> None:
        """A direct reply made on a server without the connection (or here): sent if this server holds it."""
        adapter = self.adapters.get(ev.platform)
        if adapter is None or adapter.implicit or not self.holds(ev.platform):
            return
        await self.queues[ev.platform].put(Outgoing(room="", channel=ev.channel, text=mask(ev.text)))

    async def presence(self, adapter: ChatAdapter, channel: str, person: Person, joined: bool) -> None:
        room = self.routes.get((adapter.name, channel))
        if room is not None and not person.is_bot and not self._lost(adapter):
            await self.on_presence(room, await self._person(adapter, person), joined)

    async def click(self, adapter: ChatAdapter, click: Click) -> None:
        if click.author.is_bot or not await self._first_time(adapter, click.delivery_id):
            return
        room = self.routes.get((adapter.name, click.channel))
        person = await self._person(adapter, click.author)
        reply = await self._decide(adapter, person, click)
        if reply and room is not None:
            await self.post(Message(room=room, text=reply, kind="bot"))

    async def _decide(self, adapter: ChatAdapter, person: Person, click: Click) -> str:
        if person.user is None:
            return (f"{person.display_name}: your {adapter.name} account is not linked to an opsroom user; "
                    "`link CODE` first (get a code in the web UI or from an admin)")
        try:
            actor = await access.actor_by_name(self.rt, name=person.user, door="chat")
            reason = None if click.decision == "approve" else f"denied with the {adapter.name} button"
            await approvals.decide(self.rt, actor=actor, approval_id=click.approval_id,
                                   approve=click.decision == "approve", reason=reason)
        except OpsroomError as exc:
            return f"{person.display_name}: {exc.message}" + (f" — {exc.hint}" if exc.hint else "")
        return ""  # the approval.decided event announces it

    async def refused(self, adapter: ChatAdapter, *, what: str, detail: str) -> None:
        """A forged or unsigned request: audited, within limits (audit/refusals.py)."""
        await self._refusals.record(key=adapter.name, target=f"platform:{adapter.name}", what=what, detail=detail)

    # --- a line said in a room ---------------------------------------------

    async def on_message(self, msg: Message) -> None:
        if msg.room not in self.rt.catalog.rooms:
            return
        if msg.text != rooms.storable(msg.text):
            # From any adapter: the command, its echo and the reply all see the same clean text.
            msg = dataclasses.replace(msg, text=rooms.storable(msg.text))
        # The person's user is read once per line, for the masking below and for the command.
        actor: Actor | OpsroomError | None = None
        if msg.author is not None and msg.author.user is not None:
            actor = await self._actor(msg.author.user)
        # Only what a person who may run runbooks types as a secret is taught to the process-wide
        # masker: anyone else could make any word of the logs vanish by "typing it as a secret".
        may_run = isinstance(actor, Actor) and actor.can_somewhere("runbook.run")
        shown = accounts.redact(commands.redact(self.rt, msg.text, learn=may_run))
        stored = await self.post(msg if shown == msg.text else dataclasses.replace(msg, text=shown))
        reply = await self.answer(msg, actor)
        if reply:
            await self.post(Message(room=msg.room, text=reply, kind="bot", reply_to=stored.id))

    async def _actor(self, user: str) -> Actor | OpsroomError:
        """The user a chat line acts as, kept ACTOR_CACHE_S: every line of a busy room would
        otherwise read it again. Any AccessChanged (disabled, roles, password, unlinked), in this
        process or relayed from another through the outbox, drops the whole cache at once."""
        # One turn of the loop first: an AccessChanged published just before this line (its
        # handler is a task already scheduled) clears the cache before it is trusted.
        await asyncio.sleep(0)
        now = time.monotonic()
        hit = self._actors.get(user)
        if hit is not None and now - hit[0] < ACTOR_CACHE_S:
            return hit[1]
        epoch = self._access_epoch
        try:
            found: Actor | OpsroomError = await access.actor_by_name(self.rt, name=user, door="chat")
        except OpsroomError as exc:
            found = exc
        if epoch == self._access_epoch:  # not read across a change: it may already be stale
            self._actors[user] = (now, found)
        return found

    async def _access_changed(self, _ev: Event) -> None:
        self._access_epoch += 1
        self._actors.clear()

    async def answer(self, msg: Message, actor: Actor | OpsroomError | None) -> str:
        person = msg.author
        if person is None:
            return ""
        platform = msg.origin.platform if msg.origin is not None else "web"
        own = await accounts.handle(self.rt, platform=platform, person=person, text=msg.text)
        if own is not None:
            return own  # help, whoami and link: the only commands an unlinked account has
        # On a platform channel people also talk among themselves: only `!`/`/` lines and real
        # commands are answered there; the web room is opsroom's own, so every line is.
        origin = self.adapters.get(platform)
        addressed = origin is None or origin.implicit
        if person.user is None:
            speaks_to_us = addressed or commands.looks_like_command(self.rt, msg.text)
            return accounts.unlinked_reply(platform) if speaks_to_us else ""
        if not isinstance(actor, Actor):
            return actor.message if actor is not None else "I don't know who you are here"
        try:
            return await commands.handle(self.rt, actor=actor, room=msg.room, text=msg.text, addressed=addressed)
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

    # --- outbound -------------------------------------------------------

    async def post(self, msg: Message) -> Message:
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((msg, fut))
        return await fut

    def post_nowait(self, msg: Message) -> None:
        self._queue.put_nowait((msg, None))

    async def flushed(self) -> None:
        """Every message posted so far is stored and in the adapters' send queues (tests, stop)."""
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((None, fut))
        await fut

    def _on_event(self, ev: Event) -> None:
        """An announced event on this server's bus: the announcer's to announce (one server
        announces each); made here, the queue keeps its announcement's place. A reload's routes
        follow in the publish itself, in the step of the loop that swapped the catalog."""
        if isinstance(ev, CatalogReloaded):
            self._follow_catalog()
            return
        pending = self.arrivals.place_for(ev)
        if pending is not None:
            self._queue.put_nowait((pending, None))

    def announced(self, uid: str, msgs: list[Message]) -> None:
        """Messages of an announcement, stored already (by this server's announcer, or relayed
        from the one that stored them): in the place kept for them, else at the queue's end."""
        for msg in self.arrivals.arrived(uid, msgs):
            self._queue.put_nowait((msg, None))

    async def _on_posted(self, ev: RoomMessagePosted) -> None:
        """A message another server stored: to this server's web rooms and held connections."""
        got = self.arrivals.from_log(ev)
        if got is None:
            return
        uid, msg = got
        if uid is None:
            self._queue.put_nowait((msg, None))
        else:
            self.announced(uid, [msg])

    async def _on_output(self, ev: ExecutionOutput) -> None:
        # Through the same queue as messages, so output never shows before "approved by".
        if ev.room is not None:
            self.post_nowait(Message(room=ev.room, text=ev.text, kind="output",
                                     extra={"execution_id": ev.execution_id}))

    async def _drain(self) -> None:
        while True:
            msg, fut = await self._queue.get()
            if msg is None:  # flushed()'s marker: everything before it is done
                if fut is not None and not fut.done():
                    fut.set_result(Message(room="", text=""))
                continue
            if isinstance(msg, Pending):
                await self._awaited(msg)
                continue
            try:
                if msg.id is not None:
                    stored = msg  # stored by the announcer or by another server
                else:
                    stored = await self._stream(msg) if msg.kind == "output" else await self._store(msg)
                await self._fan_out(stored)
                if fut is not None and not fut.done():
                    fut.set_result(stored)
            except Exception as exc:
                log.exception("posting to room failed", room=msg.room)
                if fut is not None and not fut.done():
                    fut.set_exception(exc)

    async def _awaited(self, pending: Pending) -> None:
        msgs = await self.arrivals.wait(pending)
        if msgs is None:
            # Never in the event log: a producer that only publishes on the bus. Announced here,
            # as before the log (its announcement is not kept through a crash).
            await self._announce_here(pending.event)
            return
        for msg in msgs:
            try:
                await self._fan_out(msg)
            except Exception:
                log.exception("posting to room failed", room=msg.room)

    async def _announce_here(self, ev: Event) -> None:
        note = render(self.rt, ev)
        for room in dict.fromkeys(note.rooms if note is not None else ()):
            if note is not None and room in self.rt.catalog.rooms:
                try:
                    await self._fan_out(await self._store(Message(room=room, text=note.text, kind=note.kind,
                                                                  extra=extra_of(ev))))
                except Exception:
                    log.exception("posting to room failed", room=room)

    async def _stream(self, msg: Message) -> Message:
        """Output is live-only: shown to those watching, not stored as room history."""
        return dataclasses.replace(msg, text=mask(msg.text))

    async def _fan_out(self, msg: Message) -> None:
        mentions = await self._mentions(msg)
        for name, channel in self.channels(msg.room):
            adapter = self.adapters[name]
            if not self.holds(name):
                continue  # the server holding that connection sends it (from the log)
            if msg.kind == "person" and msg.origin == _binding(adapter, channel) and not adapter.mirrors:
                continue  # never echoed back to where it was said
            if msg.kind == "output" and not adapter.streams:
                continue
            await self.queues[name].put(self.outgoing(msg, adapter, channel, mentions.get(name, ())))

    async def _mentions(self, msg: Message) -> dict[str, tuple[Mention, ...]]:
        """An approval request mentions, on each platform, the approvers linked there."""
        approvers = msg.extra.get("approvers")
        if not isinstance(approvers, list) or not approvers:
            return {}
        out: dict[str, tuple[Mention, ...]] = {}
        for name, adapter in self.adapters.items():
            if adapter.trusted_identity:
                continue
            try:
                found = await links.accounts_of(self.rt, platform=name, users=[str(a) for a in approvers])
            except Exception:
                log.warning("looking up approvers' chat accounts failed", platform=name, exc_info=True)
                continue
            out[name] = tuple(Mention(account_id, display) for _user, account_id, display in found)
        return out

    def outgoing(self, msg: Message, adapter: ChatAdapter, channel: str, mentions: tuple[Mention, ...]) -> Outgoing:
        """A stored message as one binding's adapter is handed it (the fan-out, and a takeover's catch-up)."""
        relayed = msg.kind == "person"
        author = msg.author.display_name if relayed and msg.author is not None else None
        if relayed and msg.author is not None and msg.author.user and adapter.implicit:
            author = msg.author.user  # the web room names people by their opsroom user
        via = msg.origin.platform if msg.origin is not None else None
        execution_id = msg.extra.get("execution_id")
        approval_id = msg.extra.get("approval_id")
        return Outgoing(room=msg.room, channel=channel, text=msg.text, kind=msg.kind, author=author,
                        via=via, message_id=msg.id, at=_float(msg.extra.get("at")), reply_to=msg.reply_to,
                        approval_id=approval_id if isinstance(approval_id, int) else None,
                        mentions=mentions, link=self._link(msg.room, execution_id),
                        execution_id=execution_id if isinstance(execution_id, int) else None)

    def _link(self, room: str, execution_id: object) -> str:
        base = self.rt.settings.web_url
        if isinstance(execution_id, int):
            return f"{base}/executions/{execution_id}"
        return f"{base}/rooms/{room}"

    async def _store(self, msg: Message) -> Message:
        author = msg.author.user or msg.author.display_name if msg.author else "opsroom"
        # Everything said in a room (people, replies, announcements) is masked once, by
        # store_message: what is stored, published to sockets and sent to every adapter is the
        # one text it returns.
        # A person's line names where it was said, so no server sends it back there.
        source = f"said:{msg.origin}" if msg.kind == "person" and msg.origin is not None else "opsroom"
        ev = await rooms.post_message(self.rt, room=msg.room, author=author or "?", kind=msg.kind, text=msg.text,
                                      reply_to=msg.reply_to, source=source)
        self.rt.bus.publish(ev)
        return dataclasses.replace(msg, text=ev.text, id=ev.message_id,
                                   extra={**msg.extra, "at": ev.at, "author": author})


def _binding(adapter: ChatAdapter, channel: str) -> Binding:
    return Binding(adapter.name, channel)


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None
