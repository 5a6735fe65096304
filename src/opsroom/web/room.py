"""The built-in web room: an HTML page plus a WebSocket, and its ChatAdapter.

The socket acts for a web session, so every frame re-reads that session (one indexed read): a
logout, new password or disabled user ends what the socket may do at the next frame, and the
AccessChanged event closes it at once. Frames are checked for shape and size here, so bad input
gets an error frame and the socket stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import Callable, MutableMapping
from typing import Any
from urllib.parse import urlparse

import structlog
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from opsroom.access import service as access
from opsroom.access.identity import Actor
from opsroom.access.secrets import token_hash
from opsroom.approvals import service as approvals
from opsroom.chat.base import AdapterSink, Capabilities, ChatAdapter, Incoming, Outgoing, Person
from opsroom.errors import OpsroomError, Unauthenticated
from opsroom.events import (
    AccessChanged,
    ApprovalDecided,
    ApprovalRequested,
    Event,
    ExecutionFinished,
    ExecutionStarted,
)
from opsroom.rooms import service as rooms
from opsroom.runbooks import active
from opsroom.runtime import Runtime
from opsroom.web import room_runs as runs
from opsroom.web.deps import MAX_ID, SESSION_COOKIE
from opsroom.web.security import (
    MAX_FRAME_CHARS,
    MAX_REASON_CHARS,
    decision_in_text,
    lone_surrogate,
    require_decision_token,
    signer,
)
from opsroom.web.wire import Wire, text_frame

log = structlog.get_logger(__name__)
SWEEP_S = 10.0  # how long an idle socket may outlive a session ended outside this process
# A phone on a poor link drops and comes back within seconds: a leave is announced only when the
# person has not come back within this time, and such a return announces nothing.
PRESENCE_GRACE_S = 30.0
router = APIRouter()


class _Conn:
    """One socket. Frames leave in the order pushed: written straight to the connection while
    nothing waits before them (the common case, and no task wakes per frame), else queued for
    this socket's sender, which waits out a slow reader without holding anyone else up."""

    def __init__(self, ws: WebSocket, actor: Actor, csrf: str, session_token: str) -> None:
        self.ws, self.actor, self.csrf = ws, actor, csrf
        self.session_token = session_token
        self.session_hash = token_hash(session_token)  # what AccessChanged names a logout by
        self.closed = False
        self.wire = Wire.of(ws)  # None when not served by uvicorn's sans-io protocol: all queued
        # A whole replay fits, with room for the live frames that follow it.
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=rooms.REPLAY_MAX + 500)
        self.sending = False  # the sender holds a frame taken from the queue: no write may overtake it
        # While the missed messages are read from the store, live ones wait here so the socket
        # sends them after the replay, in id order, and none that the replay already holds.
        self.held: list[tuple[int | None, str]] | None = None

    async def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):  # already gone: nothing left to close
            await self.ws.close(code=code, reason=reason)

    def push(self, frame: dict[str, Any] | str, msg_id: int | None = None, wire: bytes | None = None) -> None:
        """Send `frame`; `wire` is its WebSocket frame when the caller built it once for a room."""
        text = frame if isinstance(frame, str) else json.dumps(frame)
        if self.held is not None:
            self.held.append((msg_id, text))
            return
        if (self.wire is not None and not self.sending and self.queue.empty()
                and self.wire.write(wire or text_frame(text))):
            return
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            # A phone that stopped reading must not hold the room up; it replays history on reconnect.
            pass

    def release(self, replayed_up_to: int) -> None:
        """End the hold: what arrived live during the replay follows it, minus what it repeated."""
        held, self.held = self.held or [], None
        for msg_id, frame in held:
            if msg_id is None or msg_id > replayed_up_to:
                self.push(frame)


class WebAdapter(ChatAdapter):
    """The web room as a platform: bound to every room, its people logged in to opsroom itself,
    every line shown to every viewer. deliver() only queues frames on sockets, so it runs in line."""

    platform = "web"
    capabilities = Capabilities(buttons=True, edits=False, formatting="plain", max_chars=8000, rate_per_s=None)
    implicit = True
    trusted_identity = True
    mirrors = True

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.name = "web"
        self.conns: dict[str, set[_Conn]] = defaultdict(set)
        self._sink: AdapterSink | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.presence_grace_s = PRESENCE_GRACE_S
        self._leaving: dict[tuple[str, str], asyncio.Task[None]] = {}
        # The runs-going-on lists: one refresh at a time; events during it ask for one more after.
        self._runs: asyncio.Task[None] | None = None
        self._runs_again = False

    async def start(self, sink: AdapterSink, channels: list[str]) -> None:
        self._sink = sink
        self.rt.bus.subscribe(ApprovalRequested, self._approvals_changed)
        self.rt.bus.subscribe(ApprovalDecided, self._approvals_changed)
        self.rt.bus.subscribe(AccessChanged, self._access_changed)
        for kind in (ExecutionStarted, ExecutionFinished, ApprovalRequested, ApprovalDecided):
            self.rt.bus.subscribe(kind, self._runs_changed)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        """A socket that only listens sends no frame to be checked: every SWEEP_S its session is
        read again, so one ended by another process (`opsroom user disable`, `user passwd` on the
        server host) or by expiry stops receiving the room within that time. One read per
        session, not per socket: a person's many tabs share one."""
        while True:
            await asyncio.sleep(SWEEP_S)
            by_session: dict[str, list[_Conn]] = defaultdict(list)
            for conns in self.conns.values():
                for c in conns:
                    by_session[c.session_token].append(c)
            for token, group in by_session.items():
                try:
                    actor, csrf = await access.session_actor(self.rt, session_token=token, door="web")
                except Unauthenticated:
                    for c in group:
                        await c.close(4401, "session ended; log in again")
                    continue
                except Exception:  # the store busy or away: the next sweep tries again
                    log.warning("checking a room socket's session failed", exc_info=True)
                    continue
                for c in group:
                    c.actor, c.csrf = actor, csrf

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in [*self._leaving.values(), self._runs]:
            if task is not None:
                task.cancel()
        for conns in self.conns.values():
            for c in list(conns):
                with contextlib.suppress(Exception):
                    await c.ws.close(code=1001)

    async def deliver(self, out: Outgoing) -> None:
        # Encoded once for every listener, JSON and WebSocket frame both: a room of 1000 phones
        # costs one json.dumps and one frame, then a write per socket.
        author = out.author if out.kind == "person" else "opsroom"
        frame = json.dumps({"type": "message", "id": out.message_id, "at": out.at, "author": author or "?",
                            "kind": out.kind, "text": out.text, **({"via": out.via} if out.via else {})})
        self._broadcast(out.channel, frame, out.message_id)

    async def stream_output(self, out: Outgoing) -> None:
        self._broadcast(out.channel, json.dumps({"type": "output", "execution_id": out.execution_id,
                                                 "text": out.text}))

    def _broadcast(self, room: str, frame: str, msg_id: int | None = None) -> None:
        conns = self.conns.get(room)
        if conns:
            wire = text_frame(frame)
            for c in conns:
                c.push(frame, msg_id, wire)

    async def said(self, room: str, actor: Actor, text: str) -> None:
        """A line typed in the web room: into the hub the way every platform's lines go."""
        person = Person(platform_id=f"web:{actor.name}", display_name=actor.name, user=actor.name)
        if self._sink is not None:
            await self._sink.message(self, Incoming(channel=room, text=text[:2000], author=person))

    async def identify(self, platform_id: str) -> Person:
        name = platform_id.removeprefix("web:")
        return Person(platform_id, name, name)

    async def presence(self, room: str) -> list[Person]:
        names = sorted({c.actor.name for c in self.conns.get(room, ())})
        return [Person(f"web:{n}", n, n) for n in names]

    async def _approvals_changed(self, _ev: Event) -> None:
        """Every socket gets the open requests as its person sees them. Computed once per person
        (one store read and one audit record each), not once per socket: a big incident's room
        has many sockets and few people. Only the decision token differs per session."""
        by_person: dict[tuple[str, frozenset[str]], list[_Conn]] = defaultdict(list)
        for conns in self.conns.values():
            for c in conns:
                by_person[(c.actor.name, c.actor.permissions)].append(c)
        for group in by_person.values():
            hashes: dict[int, str] = {}
            try:
                items = await rooms.approval_views(self.rt, actor=group[0].actor, sign=_keep(hashes))
            except OpsroomError:
                continue
            for c in group:
                c.push({"type": "approvals", "items": _signed(items, hashes, signer(c.csrf))})

    async def _runs_changed(self, _ev: Event) -> None:
        """A run started, ended or began to wait: refresh every socket's list of runs going on.
        A burst of runs costs one refresh plus one, not one per run."""
        if self._runs is not None and not self._runs.done():
            self._runs_again = True
            return
        self._runs = asyncio.get_running_loop().create_task(self._push_runs())

    async def _push_runs(self) -> None:
        """One store read per room and person (never per socket); only the cancel token differs
        per session."""
        while True:
            self._runs_again = False
            by_person: dict[tuple[str, str, frozenset[str]], list[_Conn]] = defaultdict(list)
            for room, conns in self.conns.items():
                for c in conns:
                    by_person[(room, c.actor.name, c.actor.permissions)].append(c)
            for (room, _name, _perms), group in by_person.items():
                try:
                    items = await active.active_in_room(self.rt, actor=group[0].actor, room=room)
                except Exception:  # the store busy or away: the next change refreshes it
                    log.warning("reading a room's runs failed", exc_info=True)
                    continue
                for c in group:
                    c.push(runs.frame(items, c.csrf))
            if not self._runs_again:
                return

    async def _access_changed(self, ev: Event) -> None:
        """Close the sockets of an ended session (logout names it) or of a user whose access
        ended or shrank. 4401 sends the page to the login; after a role change the session is
        still good, so 4001 makes the page reconnect as the person now is."""
        assert isinstance(ev, AccessChanged)
        if ev.reason in ("token_revoked", "chat_unlinked"):
            return  # API tokens and chat links open no sockets; the web sessions stay as they are
        code, why = (4001, "your roles changed") if ev.reason == "roles" else (4401, f"access ended: {ev.reason}")
        for conns in list(self.conns.values()):
            for c in list(conns):
                if c.actor.user_id == ev.user_id and ev.session_hash in (None, c.session_hash):
                    await c.close(code, why)

    async def connected(self, room: str, conn: _Conn) -> None:
        name = conn.actor.name
        pending = self._leaving.pop((room, name), None)
        if pending is not None:
            pending.cancel()  # back within the grace period: to the room, they never left
        first = pending is None and not any(c.actor.name == name for c in self.conns[room])
        self.conns[room].add(conn)
        if first and self._sink is not None:
            await self._sink.presence(self, room, Person(f"web:{name}", name, name), True)

    async def disconnected(self, room: str, conn: _Conn) -> None:
        self.conns[room].discard(conn)
        name = conn.actor.name
        if any(c.actor.name == name for c in self.conns[room]) or (room, name) in self._leaving:
            return
        self._leaving[(room, name)] = asyncio.get_running_loop().create_task(self._leave_later(room, name))

    async def _leave_later(self, room: str, name: str) -> None:
        await asyncio.sleep(self.presence_grace_s)
        if self._leaving.get((room, name)) is not asyncio.current_task():
            return
        del self._leaving[(room, name)]
        if self._sink is not None:
            await self._sink.presence(self, room, Person(f"web:{name}", name, name), False)


def _keep(hashes: dict[int, str]) -> Callable[[int, str], str]:
    """A `sign` for approval_views that signs nothing yet: it notes each binding hash, for
    _signed to turn into each session's own token (the hash itself never reaches a socket)."""
    def sign(approval_id: int, binding_hash: str) -> str:
        hashes[approval_id] = binding_hash
        return ""
    return sign


def _signed(items: list[dict[str, Any]], hashes: dict[int, str],
            sign: Callable[[int, str], str]) -> list[dict[str, Any]]:
    return [{**v, "token": sign(v["id"], hashes[v["id"]])} if "token" in v else v for v in items]


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
        actor, csrf = await access.session_actor(rt, session_token=cookie, door="web")
    except OpsroomError:
        await ws.close(code=4401)
        return
    try:
        await rooms.join_room(rt, actor=actor, room=room)
    except OpsroomError:
        await ws.close(code=4403)
        return
    after = _after(ws.query_params.get("after"))
    await ws.accept()
    conn = _Conn(ws, actor, csrf, cookie)
    sender = asyncio.get_running_loop().create_task(_sender(conn))
    if after is not None:
        conn.held = []
    # Joined to the live set before the replay is read: a message stored in between is either in
    # the replay or held live, never in neither; release() drops the ones that are in both.
    await adapter.connected(room, conn)
    if after is not None:
        await _replay(rt, conn, room, after)
    conn.push({"type": "approvals", "items": await rooms.approval_views(rt, actor=actor, sign=signer(csrf))})
    conn.push(runs.frame(await active.active_in_room(rt, actor=actor, room=room), csrf))
    try:
        while not conn.closed:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            if conn.closed:
                break  # closed by an AccessChanged while this frame was on its way: not acted on
            await _receive(rt, conn, room, message)
    except (WebSocketDisconnect, RuntimeError):
        pass  # the peer left, or we closed the socket while waiting: the finally cleans up
    finally:
        sender.cancel()
        await adapter.disconnected(room, conn)


def _after(raw: str | None) -> int | None:
    """`?after=ID`: the last message id the page holds. Anything else replays nothing."""
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        return None
    return min(int(raw), MAX_ID)


async def _replay(rt: Runtime, conn: _Conn, room: str, after: int) -> None:
    try:
        frames, cut = await rooms.missed(rt, actor=conn.actor, room=room, after=after)
    except Exception:  # the store busy or away: the page still goes live and says what it lacks
        log.warning("replaying a room's missed messages failed", exc_info=True)
        frames, cut = [], True
    held, conn.held = conn.held, None  # the replay goes out first, then what was held
    if cut:
        conn.push({"type": "gap", "text": "some messages missed while you were away "
                                          "are not shown here: reload the page to see them all"})
    for f in frames:
        conn.push(f)
    conn.held = held
    conn.release(frames[-1]["id"] if frames else after)


async def _receive(rt: Runtime, conn: _Conn, room: str, message: MutableMapping[str, Any]) -> None:
    raw = message.get("text")
    if raw is None:
        conn.push({"type": "error", "text": "binary frames are not understood: send JSON text, "
                                            'e.g. {"type": "say", "text": "help"}'})
        return
    if len(raw) > MAX_FRAME_CHARS:
        conn.push({"type": "error", "text": f"frame too large ({len(raw)} characters; the limit is "
                                            f"{MAX_FRAME_CHARS}): say less at a time"})
        return
    # The session is read again for every frame: a logout or a new password elsewhere ends
    # what this socket may do, and changed roles apply at once.
    try:
        conn.actor, conn.csrf = await access.session_actor(rt, session_token=conn.session_token, door="web")
    except Unauthenticated:
        await conn.close(4401, "session ended; log in again")
        return
    except Exception:  # the store busy or away: say so, act on nothing, keep the socket
        log.warning("checking a room socket's session failed", exc_info=True)
        conn.push({"type": "error", "text": "could not check your session just now; nothing was done, try again"})
        return
    try:
        await _handle_frame(rt, conn, room, raw)
    except OpsroomError as exc:
        conn.push({"type": "error", "text": str(exc)})
    except Exception:  # one bad frame must not drop the person's room
        log.exception("room frame failed", room=room, user=conn.actor.name)
        conn.push({"type": "error", "text": "internal error; see the opsroom log"})


async def _sender(conn: _Conn) -> None:
    """Sends what push() could not write at once, in order, waiting on this socket alone."""
    with contextlib.suppress(Exception):
        while True:
            frame = await conn.queue.get()
            conn.sending = True
            await conn.ws.send_text(frame)
            conn.sending = False


USAGE = ('send {"type": "say", "text": "..."}, {"type": "decide", "id": N, "decision": "approve", "token": ...} '
         'or {"type": "cancel", "id": N, "token": ...}')


async def _handle_frame(rt: Runtime, conn: _Conn, room: str, raw: str) -> None:
    try:
        frame = json.loads(raw)
    except ValueError:
        frame = None
    if not isinstance(frame, dict):
        conn.push({"type": "error", "text": f"a frame is a JSON object: {USAGE}"})
        return
    where = lone_surrogate(frame, "frame")
    if where is not None:
        conn.push({"type": "error", "text": f"{where} holds a lone UTF-16 surrogate (\\ud800-\\udfff), "
                                            "which is not text: send valid Unicode"})
        return
    kind = frame.get("type")
    if kind == "say":
        text = frame.get("text")
        if not isinstance(text, str):
            conn.push({"type": "error", "text": "`text` must be a string"})
            return
        decided = decision_in_text(text)
        if decided is not None and decided <= MAX_ID:
            # Typing `approve 12` in the web room decides too: it needs the same token as the button.
            verb = "approve" if text.strip().lstrip("!/").strip().lower().startswith("approve") else "deny"
            await require_decision_token(rt, actor=conn.actor, csrf=conn.csrf, approval_id=decided,
                                         token=frame.get("token"), verb=verb)
        await rooms.say(rt, actor=conn.actor, room=room, text=text)  # checks, then WebAdapter.said
    elif kind == "decide":
        approval_id, decision, reason = frame.get("id"), frame.get("decision"), frame.get("reason")
        if isinstance(approval_id, bool) or not isinstance(approval_id, int) or not 1 <= approval_id <= MAX_ID:
            conn.push({"type": "error", "text": f"`id` must be a request number from 1 to {MAX_ID}"})
        elif decision not in ("approve", "deny"):
            conn.push({"type": "error", "text": '`decision` must be "approve" or "deny"'})
        elif reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS):
            conn.push({"type": "error", "text": f"`reason` must be text of at most {MAX_REASON_CHARS} characters"})
        else:
            await require_decision_token(rt, actor=conn.actor, csrf=conn.csrf, approval_id=approval_id,
                                         token=frame.get("token"), verb=decision)
            await approvals.decide(rt, actor=conn.actor, approval_id=approval_id,
                                   approve=decision == "approve", reason=reason)
    elif kind == "cancel":
        await runs.cancel_frame(rt, actor=conn.actor, csrf=conn.csrf, room=room, frame=frame, push=conn.push)
    else:
        conn.push({"type": "error", "text": USAGE})
