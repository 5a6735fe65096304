"""Issue 10, point 6: the web room on a poor link. A socket that comes back with `?after=ID` gets
every stored message after that id, in order, once, before live ones; a blink within the grace
period announces no presence change, a real leave is announced after it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from opsroom.chat.base import Message
from opsroom.config import Settings
from opsroom.rooms import service as rooms
from opsroom.runtime import Runtime
from opsroom.web.app import create_app
from opsroom.web.room import WebAdapter, _Conn, _replay
from tests.e2e.harness import login
from tests.factories import PASSWORDS, small_catalog


@dataclass
class Server:
    base: str
    rt: Runtime
    web: WebAdapter


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """The whole web app in this process on a loopback port, so the test can see its adapter."""
    app = create_app(Settings(data=tmp_path / "data", catalog=small_catalog(tmp_path)), passwords=PASSWORDS,
                     schedule=False)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    task = asyncio.get_running_loop().create_task(srv.serve())
    while not srv.started:
        assert not task.done(), "the in-process server did not start"
        await asyncio.sleep(0.02)
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield Server(f"http://127.0.0.1:{port}", app.state.rt, app.state.web_adapter)
    finally:
        srv.should_exit = True
        await task


async def _say(rt: Runtime, text: str) -> int:
    assert rt.rooms is not None
    stored = await rt.rooms.post(Message(room="ops", text=text, kind="bot"))
    assert stored.id is not None
    return stored.id


def _cookie(http: httpx.AsyncClient) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in http.cookies.items())}


async def _messages_until(ws: ClientConnection, last_text: str) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while not got or got[-1]["text"] != last_text:
            frame = json.loads(await ws.recv())
            if frame["type"] == "message":
                got.append(frame)
    return got


async def test_a_reconnect_gets_what_it_missed_in_order_once_then_live(server: Server) -> None:
    http = await login(server.base, "boss", PASSWORDS["boss"])
    first = await _say(server.rt, "before the blink")
    missed = [await _say(server.rt, f"missed {i}") for i in range(5)]
    url = server.base.replace("http", "ws") + f"/rooms/ops/ws?after={first}"
    async with connect(url, additional_headers=_cookie(http)) as ws:
        # Replayed, then a live one: nothing twice, nothing skipped, in id order.
        replayed = await _messages_until(ws, "missed 4")
        live = await _say(server.rt, "said after the reconnect")
        later = await _messages_until(ws, "said after the reconnect")
    ids = [m["id"] for m in replayed + later]
    # boss's own "joined the room" notice was stored after `first` too: it is replayed like any other.
    stored = [m.id for m in await rooms.history_of(server.rt, room="ops", after=first, limit=100)]
    assert ids == stored and ids == sorted(set(ids))
    assert set(missed) | {live} <= set(ids)
    await http.aclose()


async def test_no_after_replays_nothing_and_nonsense_is_ignored(server: Server) -> None:
    http = await login(server.base, "boss", PASSWORDS["boss"])
    await _say(server.rt, "old news")
    for query in ("", "?after=x", "?after=-1", "?after=1e3", "?after=%D9%A3"):  # the last: Arabic-Indic 3
        async with connect(server.base.replace("http", "ws") + f"/rooms/ops/ws{query}",
                           additional_headers=_cookie(http)) as ws:
            await _say(server.rt, f"live {query}")
            got = await _messages_until(ws, f"live {query}")
            assert all(m["text"] != "old news" for m in got)
    await http.aclose()


async def test_the_replay_boundary_has_no_duplicate_and_no_gap(server: Server) -> None:
    """Live messages that arrive while the replay is read are held, then sent after it without the
    ones the replay already holds; one stored after the replay's read is sent too."""
    from opsroom.access import service as access

    rt, web = server.rt, server.web
    boss = await access.actor_by_name(rt, name="boss", door="web")
    after = await _say(rt, "seen by the page")
    conn = _Conn(_NoSocket(), boss, "csrf", "token")  # type: ignore[arg-type]
    conn.held = []
    await web.connected("ops", conn)  # in the live set before the replay reads the store
    both = await _say(rt, "stored and pushed before the replay read")  # in the replay and held
    await _replay(rt, conn, "ops", after)
    assert conn.held is None
    tail = await _say(rt, "live after the replay")
    frames = [json.loads(conn.queue.get_nowait()) for _ in range(conn.queue.qsize())]
    ids = [f["id"] for f in frames if f["type"] == "message"]
    assert ids.count(both) == 1 and ids[-1] == tail and ids == sorted(ids)

    # A message stored after the replay's read but pushed while still held is kept, after it.
    conn.held = [(tail + 1, json.dumps({"type": "message", "id": tail + 1})), (None, '{"type": "output"}'),
                 (tail, json.dumps({"type": "message", "id": tail}))]
    conn.release(tail)
    rest = [json.loads(conn.queue.get_nowait()) for _ in range(conn.queue.qsize())]
    assert rest == [{"type": "message", "id": tail + 1}, {"type": "output"}]
    await web.disconnected("ops", conn)


async def test_more_missed_than_the_replay_holds_says_so(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rooms, "REPLAY_MAX", 3)  # a setting of the bound, not of the code under test
    http = await login(server.base, "boss", PASSWORDS["boss"])
    after = await _say(server.rt, "seen")
    for i in range(6):
        await _say(server.rt, f"missed {i}")
    async with connect(server.base.replace("http", "ws") + f"/rooms/ops/ws?after={after}",
                       additional_headers=_cookie(http)) as ws:
        gap = json.loads(await ws.recv())
        assert gap["type"] == "gap" and "reload" in gap["text"]
        # boss's own "joined the room" was stored on connecting, before the replay read: the newest.
        got = await _messages_until(ws, "boss joined the room")
    assert [m["text"] for m in got] == ["missed 4", "missed 5", "boss joined the room"]  # the newest, in order
    await http.aclose()


def _record_presence(rt: Runtime) -> list[str]:
    from opsroom.events import RoomMessagePosted

    seen: list[str] = []

    async def keep(ev: Any) -> None:
        assert isinstance(ev, RoomMessagePosted)
        if ev.text.endswith(("joined the room", "left the room")):
            seen.append(ev.text)

    rt.bus.subscribe(RoomMessagePosted, keep)
    return seen


async def test_a_blink_announces_nothing_and_a_real_leave_is_announced_after_the_grace(server: Server) -> None:
    presence = _record_presence(server.rt)
    http = await login(server.base, "boss", PASSWORDS["boss"])
    url = server.base.replace("http", "ws") + "/rooms/ops/ws"
    async with connect(url, additional_headers=_cookie(http)) as ws:
        await _messages_until(ws, "boss joined the room")
    # Back within the grace period (30 s, the leave still pending): no "left", no second "joined".
    async with asyncio.timeout(10):
        while ("ops", "boss") not in server.web._leaving:  # the server has seen the socket go
            await asyncio.sleep(0.02)
    async with connect(url, additional_headers=_cookie(http)) as ws:
        assert ("ops", "boss") not in server.web._leaving
        await _say(server.rt, "while back")
        await _messages_until(ws, "while back")
        server.web.presence_grace_s = 0.05  # the next leave is meant: no need to wait 30 s for it
    assert presence == ["boss joined the room"]
    # Gone for good: the leave is announced once the grace period has passed.
    async with asyncio.timeout(10):
        while presence != ["boss joined the room", "boss left the room"]:
            await asyncio.sleep(0.05)
    await http.aclose()


class _NoSocket:
    async def close(self, code: int, reason: str = "") -> None:
        return None
