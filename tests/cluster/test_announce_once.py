"""Announcements are made once, by the log consumer `announcer` (issue 14, acceptance 4).

In-process on SQLite: a logged event is announced once, in order with what follows it in the
room, with its buttons' request and its mentions; one published on the bus alone (never logged)
is still announced here. Across processes on one PostgreSQL: server A freezes after a change's
commit and before its announcement (the event log's test hook) and is killed with SIGKILL; B
announces it, once, in its API and on a web client of B; after A restarts it is still once.
Alone on SQLite, the same freeze and kill: the server announces it once after its restart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx

from opsroom.chat.base import Message
from opsroom.chat.fake import FakeAdapter
from opsroom.eventlog import log as eventlog
from opsroom.events import ApprovalRequested, CheckFlapping
from opsroom.rooms.service import history_of
from opsroom.runtime import Runtime
from tests.e2e.harness import Demo, RoomClient, cli, login, start_server
from tests.factories import small_catalog


def _request(approval_id: int) -> ApprovalRequested:
    return ApprovalRequested(approval_id=approval_id, execution_id=approval_id, runbook="deploy",
                             summary=f"deploy #{approval_id}", environment="prod", protected=True,
                             roles=["approver"], requester="you", approvers=["boss"], expires_at=time.time() + 600,
                             room="ops")


async def _settle(rt: Runtime) -> None:
    assert rt.rooms is not None and rt.rooms.announcer is not None
    await rt.bus.drain()
    await rt.rooms.announcer.consumer.caught_up(timeout=10)
    await rt.rooms.flushed()


async def test_a_logged_event_is_announced_once_with_its_request(running: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = running
    ev = _request(41)
    await eventlog.emit(rt, ev)
    await _settle(rt)
    got = [o for o in fake.sent if "Request #41" in o.text]
    assert len(got) == 1, [o.text for o in fake.sent]
    assert got[0].approval_id == 41 and got[0].message_id is not None
    stored = [m for m in await history_of(rt, room="ops") if "Request #41" in m.text]
    assert [m.id for m in stored] == [got[0].message_id]
    # The next round reads nothing new: the position moved with the message.
    assert rt.rooms is not None and rt.rooms.announcer is not None
    assert await rt.rooms.announcer.consumer.run_once() == 0


async def test_the_room_keeps_the_order_of_what_happened(running: tuple[Runtime, FakeAdapter]) -> None:
    """A line posted right after an event made here follows its announcement, though the
    announcement takes a detour through the log."""
    rt, fake = running
    assert rt.rooms is not None
    await eventlog.emit(rt, CheckFlapping(check="c1", system=None, environment="test", flapping=True,
                                          change_ratio=0.5))
    rt.rooms.post_nowait(Message(room="ops", text="after the flap", kind="notice"))
    await _settle(rt)
    texts = [o.text for o in fake.sent]
    flap = next(i for i, t in enumerate(texts) if "is flapping" in t)
    assert texts.index("after the flap") > flap
    ids = [o.message_id for o in fake.sent if o.message_id is not None]
    assert ids == sorted(ids), "fanned out in another order than stored"


async def test_an_event_never_logged_is_still_announced_here(running: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = running
    rt.bus.publish(_request(42))
    await _settle(rt)
    assert sum("Request #42" in o.text for o in fake.sent) == 1


async def test_an_event_published_before_it_is_logged_is_announced_once(
        running: tuple[Runtime, FakeAdapter]) -> None:
    """The monitor publishes at once (for the rules) and its results writer logs the event a
    moment later with the check's state row: one announcement, by the announcer."""
    rt, fake = running
    ev = _request(43)
    rt.bus.publish(ev)
    await asyncio.sleep(0.4)
    await rt.transact(lambda s: eventlog.append(s, ev, origin=rt.node_id))
    await _settle(rt)
    await asyncio.sleep(0.5)
    assert sum("Request #43" in o.text for o in fake.sent) == 1
    assert sum("Request #43" in m.text for m in await history_of(rt, room="ops")) == 1


async def test_a_burst_is_announced_once_each_in_log_order(running: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = running
    for n in range(100, 130):
        await eventlog.emit(rt, _request(n))
    await _settle(rt)
    asked = [int(o.text.split("Request #")[1].rstrip(".")) for o in fake.sent if "Request #" in o.text]
    assert asked == list(range(100, 130))
    await asyncio.sleep(0.3)  # another round or two of the consumer: nothing again
    assert len([o for o in fake.sent if "Request #" in o.text]) == 30


# --- two servers on one PostgreSQL, real processes ---------------------------------------------

PW = {"you": "you-cluster-pw-1", "boss": "boss-cluster-pw-1"}
HANG_ENV = "OPSROOM_TEST_HANG_BEFORE_PUBLISH"  # the event log's hook (bus.py): freeze after the commit


def _cluster_catalog(tmp: Path) -> Path:
    return small_catalog(tmp, users=[{"name": "you", "roles": ["operator"], "password_env": "OPSROOM_TEST_PW_YOU"},
                                     {"name": "boss", "roles": ["approver"],
                                      "password_env": "OPSROOM_TEST_PW_BOSS"}])


def _env(url: str) -> dict[str, str]:
    return {"OPSROOM_DATABASE_URL": url, "OPSROOM_TEST_PW_YOU": PW["you"], "OPSROOM_TEST_PW_BOSS": PW["boss"]}


def _serve(tmp: Path, name: str, catalog: Path, env: dict[str, str]) -> Demo:
    return start_server(tmp, ["serve", "--catalog", str(catalog)], data=tmp / name, env_extra=env)


def _token(server: Demo, catalog: Path, user: str) -> str:
    made = cli("token", "create", user, "--data", str(server.data), "--catalog", str(catalog), env=server.env)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def _said(base: str, token: str, needle: str) -> list[dict[str, Any]]:
    got = httpx.get(f"{base}/api/v1/rooms/ops/messages", params={"limit": 500}, timeout=10,
                    headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 200, got.text
    return [m for m in got.json() if needle in m["text"]]


def _sql(url: str, query: str) -> list[Any]:
    async def go() -> list[Any]:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            return list(await conn.fetch(query))
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # the caller's loop is running
        return pool.submit(asyncio.run, go()).result()


async def _until(what: str, predicate: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await asyncio.to_thread(predicate)
        if got:
            return got
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


async def test_killed_between_commit_and_announcement_it_is_announced_once(tmp_path: Path,
                                                                          pg_own_url: str) -> None:
    catalog = _cluster_catalog(tmp_path)
    env = _env(pg_own_url)
    # A first: it runs the announcer (its lease), and freezes after committing a request.
    a = _serve(tmp_path, "a", catalog, {**env, HANG_ENV: "approval.requested"})
    b = _serve(tmp_path, "b", catalog, env)
    a2: Demo | None = None
    watcher: RoomClient | None = None
    try:
        you, boss = _token(a, catalog, "you"), _token(a, catalog, "boss")
        holder = _sql(pg_own_url, "SELECT holder FROM cluster_leases WHERE name = 'consumer:announcer'")
        assert holder and f":{a.proc.pid}:" in holder[0][0], holder
        watcher = await RoomClient.open(b.base, await login(b.base, "boss", PW["boss"]), "boss")
        await watcher.wait_for(lambda f: f["type"] == "approvals", 10)  # the socket is live

        def ask() -> None:
            with contextlib.suppress(httpx.HTTPError):  # A freezes before answering
                httpx.post(f"{a.base}/api/v1/runbooks/deploy/run", json={"params": {}, "room": "ops"}, timeout=3,
                           headers={"Authorization": f"Bearer {you}"})

        asking = asyncio.get_running_loop().run_in_executor(None, ask)
        logged = await _until("the request committed on A", lambda: _sql(
            pg_own_url, "SELECT payload->>'approval_id' FROM event_log WHERE type = 'approval.requested'"), 15)
        needle = f"Request #{logged[0][0]}."
        assert "test hook: frozen" in (await _until("A frozen", lambda: "frozen" in a.output() and a.output(), 10))
        a.stop(signal.SIGKILL)
        await asking
        killed_at = time.monotonic()
        frame = await watcher.wait_for(lambda f: f["type"] == "message" and needle in f["text"], 40)
        took = time.monotonic() - killed_at
        assert "needs approval" in frame["text"]
        assert len(_said(b.base, boss, needle)) == 1
        # A comes back (without the hook): still once, in the store and on B's socket.
        a2 = _serve(tmp_path, "a", catalog, env)
        await asyncio.sleep(2)
        assert len(_said(a2.base, boss, needle)) == 1
        # B stops: A takes the announcer over from B's stored position, and says nothing again.
        b.stop()
        await _until("A runs the announcer", lambda: _sql(
            pg_own_url, "SELECT 1 FROM cluster_leases WHERE name = 'consumer:announcer' "
                        f"AND holder LIKE '%:{a2.proc.pid}:%'"), 20)
        await asyncio.sleep(1)
        assert len(_said(a2.base, boss, needle)) == 1
        assert sum(1 for f in watcher.messages if needle in f["text"]) == 1
        print(f"announced by B {took:.1f} s after A was killed")
    finally:
        if watcher is not None:
            await watcher.close()
        for server in (a, b, a2):
            if server is not None:
                server.stop()


async def test_killed_alone_it_announces_once_after_its_restart(tmp_path: Path) -> None:
    """One server on SQLite, frozen after the commit and killed: the announcer resumes from its
    stored position when the server is back, and announces the request once."""
    catalog = _cluster_catalog(tmp_path)
    env = {"OPSROOM_TEST_PW_YOU": PW["you"], "OPSROOM_TEST_PW_BOSS": PW["boss"]}
    a = _serve(tmp_path, "a", catalog, {**env, HANG_ENV: "approval.requested"})
    a2: Demo | None = None
    try:
        you = _token(a, catalog, "you")

        def ask() -> None:
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(f"{a.base}/api/v1/runbooks/deploy/run", json={"params": {}, "room": "ops"}, timeout=3,
                           headers={"Authorization": f"Bearer {you}"})

        asking = asyncio.get_running_loop().run_in_executor(None, ask)
        await _until("A frozen after the commit", lambda: "frozen" in a.output(), 15)
        a.stop(signal.SIGKILL)
        await asking
        with sqlite3.connect(a.data / "opsroom.db") as db:
            (approval,) = db.execute("SELECT json_extract(payload, '$.approval_id') FROM event_log "
                                     "WHERE type = 'approval.requested'").fetchone()
            assert not db.execute("SELECT 1 FROM room_messages WHERE text LIKE '%needs approval%'").fetchall()
        needle = f"Request #{approval}."
        a2 = _serve(tmp_path, "a", catalog, env)
        await _until("announced after the restart", lambda: _said(a2.base, you, needle), 10)
        await asyncio.sleep(1.5)
        assert len(_said(a2.base, you, needle)) == 1
    finally:
        for server in (a, a2):
            if server is not None:
                server.stop()
