"""Live streams over Server-Sent Events: a room's messages and an execution's output.

Each stream subscribes (through one hub per application, since the bus keeps its handlers for
good) before it reads the stored state, so nothing said between the replay and the live part is
lost, and event ids skip what the replay already held. Every stream is bounded: a per-stream queue
(a client that falls behind gets a last `error` event and is dropped), a write timeout, and a
cap on open streams per user and in all. Streams end on client disconnect, on an access change of
their user, and when the server is asked to stop (uvicorn waits for open responses before its
lifespan shutdown, so the streams must end first).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from fastapi import APIRouter, Header, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from opsroom.access.identity import Actor
from opsroom.errors import Invalid, TooManyAttempts
from opsroom.events import (
    AccessChanged,
    ApprovalDecided,
    Event,
    ExecutionFinished,
    ExecutionOutput,
    ExecutionStarted,
    RoomMessagePosted,
)
from opsroom.rooms import service as rooms
from opsroom.rooms.schemas import MessageOut
from opsroom.runbooks import service as runbooks
from opsroom.runbooks.models import ExecutionRow
from opsroom.runbooks.schemas import ExecutionOut
from opsroom.runtime import Runtime
from opsroom.web.deps import MAX_ID, ApiActor, PathId, QueryId, RuntimeDep

router = APIRouter(tags=["streams"])

PING_S = 15.0  # a comment line this often keeps proxies from closing an idle stream
QUEUE_MAX = 1000  # events waiting for one client; more and it has fallen behind
QUEUE_BYTES = 1024 * 1024  # or this much text waiting (an output chunk is up to 4000 characters)
WRITE_TIMEOUT_S = 30.0  # a client that reads nothing for this long is dropped
PER_USER_MAX = 16  # open streams per user (a script opening them in a loop stops here)
TOTAL_MAX = 256  # so at most TOTAL_MAX * QUEUE_BYTES wait for slow readers in all
ACTIVE = {"pending", "awaiting_approval", "running"}  # domain/execution.py ACTIVE
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
          "description": "Server-Sent Events (see docs/api.md)"}}


class _Stop:
    """Why a stream ends before its natural end: sent as a last `error` event."""

    def __init__(self, code: str, detail: str, hint: str) -> None:
        self.code, self.detail, self.hint = code, detail, hint


STOPPING = _Stop("server_stopping", "the server is stopping", "connect again once it is back")
BEHIND = _Stop("fell_behind", "this client fell behind the stream and was dropped",
               "read the stream faster, or reconnect (a room stream resumes with Last-Event-ID)")
ACCESS = _Stop("access_changed", "the access of this stream's user changed",
               "connect again; it is checked anew")


class Feed:
    """One stream's bounded queue of bus events."""

    def __init__(self, owner: str, user_id: int | None) -> None:
        self.owner, self.user_id = owner, user_id
        self.items: deque[Event | _Stop] = deque()
        self.size = 0  # characters of text waiting
        self.stopped: _Stop | None = None
        self._ready = asyncio.Event()

    def push(self, item: Event | _Stop) -> None:
        if self.stopped is not None:
            return
        weight = 0 if isinstance(item, _Stop) else len(getattr(item, "text", "")) + 100
        if isinstance(item, _Stop) or len(self.items) >= QUEUE_MAX or self.size + weight > QUEUE_BYTES:
            # What was queued is dropped too: the memory of a slow client is freed at once.
            self.stopped = item if isinstance(item, _Stop) else BEHIND
            self.items.clear()
            self.size = 0
        else:
            self.items.append(item)
            self.size += weight
        self._ready.set()

    async def next(self, timeout: float) -> Event | _Stop | None:
        """The next event, the reason to stop, or None after `timeout` seconds of nothing."""
        if not self.items and self.stopped is None:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return None
        if self.stopped is not None:
            return self.stopped
        item = self.items.popleft()
        self.size -= len(getattr(item, "text", "")) + 100
        return item


class Hub:
    """The application's streams, fed by one set of bus subscriptions."""

    def __init__(self, rt: Runtime) -> None:
        self.loop = asyncio.get_running_loop()
        self.executions: dict[int, set[Feed]] = {}
        self.rooms: dict[str, set[Feed]] = {}
        self.per_owner: dict[str, int] = {}
        self.feeds: set[Feed] = set()
        for kind in (ExecutionStarted, ExecutionOutput, ExecutionFinished, ApprovalDecided):
            rt.bus.subscribe(kind, self._execution_event)
        rt.bus.subscribe(RoomMessagePosted, self._room_event)
        rt.bus.subscribe(AccessChanged, self._access_event)
        _HUBS.add(self)
        if _STOPPING:
            self.stop_all()

    def open(self, actor: Actor, *, execution: int | None = None, room: str | None = None) -> Feed:
        owner = f"user:{actor.user_id}" if actor.user_id is not None else f"name:{actor.name}"
        if _STOPPING:
            raise TooManyAttempts("the server is stopping", retry_after=5, hint="connect again once it is back")
        if self.per_owner.get(owner, 0) >= PER_USER_MAX or len(self.feeds) >= TOTAL_MAX:
            mine = self.per_owner.get(owner, 0) >= PER_USER_MAX
            raise TooManyAttempts(f"{PER_USER_MAX} streams are open for {actor.name} already" if mine
                                  else "the server has as many streams open as it serves",
                                  retry_after=5, hint="close a stream before opening another")
        feed = Feed(owner, actor.user_id)
        self.feeds.add(feed)
        self.per_owner[owner] = self.per_owner.get(owner, 0) + 1
        if execution is not None:
            self.executions.setdefault(execution, set()).add(feed)
        if room is not None:
            self.rooms.setdefault(room, set()).add(feed)
        return feed

    def close(self, feed: Feed) -> None:
        if feed not in self.feeds:
            return
        self.feeds.discard(feed)
        left = self.per_owner.get(feed.owner, 1) - 1
        if left:
            self.per_owner[feed.owner] = left
        else:
            self.per_owner.pop(feed.owner, None)
        for eid in [k for k, feeds in self.executions.items() if feed in feeds]:
            self._drop(self.executions, eid, feed)
        for room in [k for k, feeds in self.rooms.items() if feed in feeds]:
            self._drop(self.rooms, room, feed)

    @staticmethod
    def _drop(index: dict[Any, set[Feed]], key: Any, feed: Feed) -> None:
        index[key].discard(feed)
        if not index[key]:
            del index[key]

    def stop_all(self) -> None:
        for feed in list(self.feeds):
            feed.push(STOPPING)

    async def _execution_event(self, event: Event) -> None:
        for feed in list(self.executions.get(getattr(event, "execution_id", -1), ())):
            feed.push(event)

    async def _room_event(self, event: RoomMessagePosted) -> None:
        for feed in list(self.rooms.get(event.room, ())):
            feed.push(event)

    async def _access_event(self, event: AccessChanged) -> None:
        for feed in list(self.feeds):
            if feed.user_id == event.user_id:
                feed.push(ACCESS)


# Uvicorn waits for every open response before it runs the lifespan shutdown, and an event stream
# never ends by itself: its signal handler is wrapped once so that a stop ends the streams first.
_HUBS: weakref.WeakSet[Hub] = weakref.WeakSet()
_STOPPING = False


def _watch_server_exit() -> None:
    try:
        from uvicorn.server import Server
    except ImportError:  # pragma: no cover - uvicorn is a dependency
        return
    original = Server.handle_exit
    if getattr(original, "_opsroom_streams", False):
        return

    def handle_exit(self: Server, sig: int, frame: FrameType | None) -> None:
        global _STOPPING
        original(self, sig, frame)
        if sig in (signal.SIGINT, signal.SIGTERM):
            _STOPPING = True
            for hub in list(_HUBS):  # a signal handler: hand the wake-up to the loop
                hub.loop.call_soon_threadsafe(hub.stop_all)

    handle_exit._opsroom_streams = True  # type: ignore[attr-defined]
    Server.handle_exit = handle_exit  # type: ignore[method-assign]


_watch_server_exit()


def _hub(request: Request, rt: Runtime) -> Hub:
    hub: Hub | None = getattr(request.app.state, "stream_hub", None)
    if hub is None:
        hub = request.app.state.stream_hub = Hub(rt)
    return hub


def iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()


def sse(event: str, data: Any, *, event_id: int | None = None) -> bytes:
    # json.dumps leaves no raw newline in the data, so one `data:` line always holds it whole.
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _stop_event(stop: _Stop) -> bytes:
    return sse("error", {"detail": stop.detail, "code": stop.code, "hint": stop.hint})


class EventStream(Response):
    """An event stream that ends on disconnect and drops a client that stops reading."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[bytes, None], on_close: Callable[[], None]) -> None:
        super().__init__(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]  # it has no end
        self.events, self.on_close = events, on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def pump() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.events:
                await asyncio.wait_for(send({"type": "http.response.body", "body": chunk, "more_body": True}),
                                       WRITE_TIMEOUT_S)
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        tasks = {asyncio.ensure_future(pump()), asyncio.ensure_future(gone())}
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                if isinstance(task.exception(), TimeoutError):
                    return  # the response stays incomplete: the server closes the connection
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await self.events.aclose()
            self.on_close()


async def _execution_row(rt: Runtime, execution_id: int) -> ExecutionRow | None:
    # The connect was authorized and audited by the service (get_execution); re-reading the same
    # row on each status change is that same view, as a room socket's replay is its join.
    async with rt.read() as s:
        return await s.get(ExecutionRow, execution_id)


def _out(row: ExecutionRow) -> Any:
    return ExecutionOut.model_validate(row).model_dump(mode="json")


@router.get("/executions/{execution_id}/stream", response_class=Response, responses=SSE_RESPONSE)
async def execution_stream(execution_id: PathId, request: Request, rt: RuntimeDep, actor: ApiActor) -> Response:
    """An execution's status and output, live: `execution`, `output`… then `end` (docs/api.md)."""
    hub = _hub(request, rt)
    feed = hub.open(actor, execution=execution_id)  # before the read: nothing falls between the two
    try:
        row = await runbooks.get_execution(rt, actor=actor, execution_id=execution_id)
    except BaseException:
        hub.close(feed)
        raise
    return EventStream(_execution_events(rt, feed, row), lambda: hub.close(feed))


async def _execution_events(rt: Runtime, feed: Feed, row: ExecutionRow) -> AsyncGenerator[bytes, None]:
    eid, shown = row.id, row.status
    yield sse("execution", _out(row))
    last_output = 0  # output events up to this id are in the replay
    if row.status == "running":
        live = rt.executor.live_output(eid) if rt.executor is not None else None
        if live is not None:
            text, last_output = live
            if text:
                yield sse("output", {"text": text, "step": "", "at": iso(time.time())})
        else:  # it may have ended between the read and now (then the store holds its output)
            row = await _execution_row(rt, eid) or row
    if row.status not in ACTIVE:  # ended before this stream could see any of it live: the replay
        if row.status != shown:
            yield sse("execution", _out(row))
        if row.output:
            yield sse("output", {"text": row.output, "step": "", "at": iso(row.finished_at)})
        yield sse("end", _out(row))
        return
    while True:
        item = await feed.next(PING_S)
        if isinstance(item, _Stop):
            yield _stop_event(item)
            return
        if isinstance(item, ExecutionOutput):
            if item.id > last_output:
                yield sse("output", {"text": item.text, "step": item.step, "at": iso(item.at)})
            continue
        if item is None:
            yield b": ping\n\n"
        # A status may have changed (started, decided, finished; or an event missed): read it.
        row = await _execution_row(rt, eid) or row
        if row.status not in ACTIVE:
            yield sse("end", _out(row))
            return
        if row.status != shown:
            shown = row.status
            yield sse("execution", _out(row))


def _message(room: str, message_id: int, at: float, author: str, kind: str, text: str) -> Any:
    """The message as GET /api/v1/rooms/{room}/messages gives it (the same model)."""
    return MessageOut(id=message_id, room=room, at=at, author=author, kind=kind, text=text).model_dump(mode="json")


@router.get("/rooms/{room}/stream", response_class=Response, responses=SSE_RESPONSE)
async def room_stream(room: str, request: Request, rt: RuntimeDep, actor: ApiActor, after: QueryId = None,
                      last_event_id: str | None = Header(None, include_in_schema=False)) -> Response:
    """A room's messages, live (`message` events, each with its id); resumes after `after` or Last-Event-ID."""
    if after is None and last_event_id is not None:
        if not last_event_id.strip().isdigit() or int(last_event_id) > MAX_ID:
            raise Invalid(f"Last-Event-ID {last_event_id[:40]!r} is not a message id",
                          hint="send the id of the last `message` event received, or leave it out")
        after = int(last_event_id)
    hub = _hub(request, rt)
    feed = hub.open(actor, room=room)  # before the read: nothing falls between the two
    try:
        await rooms.join_room(rt, actor=actor, room=room)  # the permission and the audit record
        missed, cut = await rooms.missed(rt, actor=actor, room=room, after=after) if after is not None else ([], False)
    except BaseException:
        hub.close(feed)
        raise
    return EventStream(_room_events(room, feed, missed, cut), lambda: hub.close(feed))


async def _room_events(room: str, feed: Feed, missed: list[dict[str, Any]], cut: bool) -> AsyncGenerator[bytes, None]:
    if cut:
        yield sse("gap", {"detail": f"more messages were missed than the {rooms.REPLAY_MAX} replayed",
                          "hint": f"read the older ones with GET /api/v1/rooms/{room}/messages"})
    last = 0
    for m in missed:
        last = m["id"]
        yield sse("message", _message(room, m["id"], m["at"], m["author"], m["kind"], m["text"]), event_id=last)
    while True:
        item = await feed.next(PING_S)
        if item is None:
            yield b": ping\n\n"
        elif isinstance(item, _Stop):
            yield _stop_event(item)
            return
        elif isinstance(item, RoomMessagePosted) and item.message_id > last:
            last = item.message_id
            yield sse("message", _message(room, last, item.at, item.author, item.kind, item.text), event_id=last)
