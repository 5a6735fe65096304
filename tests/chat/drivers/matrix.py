"""The Matrix driver: a real Synapse on loopback (tests/chat/servers/synapse.py), one fresh
room per test, the people as bare HTTP clients of the client-server API with their own tokens.

What the bot posted is read the way a person's client reads it: alice's own /sync long poll,
which keeps polling through a homeserver restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from opsroom.chat.platforms.matrix.adapter import MatrixAdapter
from opsroom.rooms.service import history_of
from tests.chat.driver import Driver
from tests.chat.harness import Served, serve
from tests.chat.servers.synapse import SERVER_NAME, Synapse, shared


class MatrixDriver(Driver):
    name = "matrix"
    buttons = False
    streams = False

    def __init__(self, *, platform_settings: dict[str, Any] | None = None, bot: str = "opsroom",
                 alias: bool = False) -> None:
        self.settings = platform_settings or {}
        self.bot = bot  # the account opsroom logs in as (slowbot: the one with a real rate limit)
        self.alias = f"ops-{uuid.uuid4().hex[:8]}" if alias else None  # bind by #alias instead of !id
        self.server: Synapse | None = None
        self.room_id = ""
        self.events: list[dict[str, Any]] = []  # every m.room.message alice's client saw, in order
        self._session: aiohttp.ClientSession | None = None
        self._watch: asyncio.Task[None] | None = None
        self._last: tuple[str, str] | None = None
        self._synced = asyncio.Event()
        self._served: Served | None = None
        self._rewind: str | None = None  # the adapter's sync token from before the last line said

    # --- lifecycle -----------------------------------------------------------

    async def start(self, tmp: Path) -> None:
        self.server = await asyncio.to_thread(shared)
        self.room_id = await asyncio.to_thread(self.server.create_room, "alice", alias=self.alias,
                                               members=[self.bot, "bob", "carol", "otherbot"])
        self._session = aiohttp.ClientSession()
        self._watch = asyncio.get_running_loop().create_task(self._follow())
        async with asyncio.timeout(15):
            await self._synced.wait()

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._session is not None:
            await self._session.close()
        if self.server is not None and not self.server.running:
            await asyncio.to_thread(self.server.start)  # leave the shared server as we found it

    @property
    def srv(self) -> Synapse:
        assert self.server is not None, "start() the driver first"
        return self.server

    def platform_item(self) -> dict[str, Any]:
        bot = self.srv.accounts[self.bot]
        # The test homeserver lifts the message rate limit (as an admin does for a bot with
        # override_ratelimit), so the adapter is told the same.
        return {"name": self.name, "type": "matrix", "homeserver": self.srv.url, "user_id": bot.user_id,
                "access_token": bot.access_token, "rate_per_s": 20, "burst": 10, **self.settings}

    @property
    def channel(self) -> str:
        return f"#{self.alias}:{SERVER_NAME}" if self.alias else self.room_id

    def account_id(self, person: str) -> str:
        return self.srv.user_id(person)

    # --- people ------------------------------------------------------------

    async def call(self, person: str, method: str, path: str, body: dict[str, Any] | None = None,
                   **params: str) -> dict[str, Any]:
        assert self._session is not None
        token = self.srv.accounts[person].access_token
        async with self._session.request(method, self.srv.url + path, json=body, params=params or None,
                                         headers={"Authorization": f"Bearer {token}"},
                                         timeout=aiohttp.ClientTimeout(total=60)) as resp:
            data: dict[str, Any] = await resp.json()
            if resp.status >= 400:
                raise AssertionError(f"{method} {path}: {resp.status} {data}")
            return data

    async def attach(self, served: Any) -> None:
        self._served = served

    async def send(self, person: str, content: dict[str, Any], *, room: str | None = None) -> str:
        if self._served is not None:
            self._rewind = adapter_of(self._served).since
        txn = uuid.uuid4().hex
        room_id = room or self.room_id
        got = await self.call(person, "PUT", f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.message/{txn}",
                              content)
        event_id: str = got["event_id"]
        self._last = (person, event_id)
        return event_id

    async def say(self, person: str, text: str) -> None:
        await self.send(person, {"msgtype": "m.text", "body": text})

    async def bot_says(self, text: str) -> None:
        # m.notice is how the spec marks an automated client's line; other bots send it.
        await self.send("otherbot", {"msgtype": "m.notice", "body": text})

    async def set_displayname(self, person: str, name: str) -> None:
        """Change a person's display name and wait until this room's member state shows it
        (Synapse updates every room the person is in, one after another, in the background)."""
        await asyncio.to_thread(self.srv.set_displayname, person, name)
        path = f"/_matrix/client/v3/rooms/{quote(self.room_id)}/state/m.room.member/{quote(self.account_id(person))}"
        async with asyncio.timeout(TIMEOUT):
            while (await self.call(person, "GET", path)).get("displayname") != name:
                await asyncio.sleep(0.05)

    def bot_events(self) -> list[dict[str, Any]]:
        bot = self.srv.accounts[self.bot].user_id
        return [ev for ev in self.events if ev.get("sender") == bot]

    def received(self) -> list[str]:
        # What Element shows: the HTML body where there is one.
        out = []
        for ev in self.bot_events():
            content = ev.get("content") or {}
            out.append(str(content.get("formatted_body") or content.get("body", "")))
        return out

    async def redeliver(self) -> None:
        """Matrix never sends an event twice by itself, but a sync that resumes from an older
        token (a response lost on the way, a client restarted from a saved token) hands the
        same events back with the same ids: the adapter's sync restarts from the token it held
        before the last line was said."""
        if self._served is None or self._served.rt.rooms is None:
            raise NotImplementedError("attach() the driver to opsroom first")
        adapter = adapter_of(self._served)
        await adapter.stop()
        adapter.since = self._rewind
        await adapter.start(self._served.rt.rooms, adapter.channels)

    async def server_down(self) -> None:
        await asyncio.to_thread(self.srv.stop)

    async def server_up(self) -> None:
        await asyncio.to_thread(self.srv.start)

    # --- alice's client --------------------------------------------------------

    async def _follow(self) -> None:
        since: str | None = None
        filt = json.dumps({"room": {"rooms": [self.room_id], "timeline": {"types": ["m.room.message"], "limit": 100},
                                    "state": {"not_types": ["*"]}, "ephemeral": {"not_types": ["*"]}},
                           "presence": {"not_types": ["*"]}})
        while True:
            try:
                params = {"filter": filt, "timeout": "0" if since is None else "10000"}
                if since:
                    params["since"] = since
                data = await self.call("alice", "GET", "/_matrix/client/v3/sync", **params)
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.2)  # the homeserver is away (the reconnect test): poll again
                continue
            room = ((data.get("rooms") or {}).get("join") or {}).get(self.room_id) or {}
            self.events.extend((room.get("timeline") or {}).get("events") or ())
            since = data["next_batch"]
            self._synced.set()


DRIVER = MatrixDriver


# --- helpers of the Matrix tests (tests/chat/test_matrix.py, tests/security/test_chat_matrix.py)

TIMEOUT = 20.0


def adapter_of(served: Served) -> MatrixAdapter:
    assert served.rt.rooms is not None
    adapter = served.rt.rooms.adapters["matrix"]
    assert isinstance(adapter, MatrixAdapter)
    return adapter


async def until(check: Any, timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def booted(tmp: Path, driver: MatrixDriver | None = None, *, before: Any = None,
                 **catalog: Any) -> AsyncIterator[tuple[MatrixDriver, Served]]:
    """A fresh room on the session's Synapse and a whole opsroom bound to it, its adapter synced.
    `before(driver)` runs once the room exists and before opsroom starts."""
    driver = driver or MatrixDriver()
    await driver.start(tmp / "platform")
    try:
        if before is not None:
            await before(driver)
        async with serve(tmp, driver, **catalog) as served:
            adapter = adapter_of(served)
            await until(lambda: adapter.is_connected() and adapter.since is not None)
            yield driver, served
    finally:
        await driver.stop()


async def barrier(driver: MatrixDriver) -> None:
    """All said before was handled: alice's `executions` got its answer."""
    seen = sum("executions" in t.lower() for t in driver.received())
    await driver.say("alice", "executions")
    await driver.wait_for(lambda _t: sum("executions" in t.lower() for t in driver.received()) > seen, TIMEOUT)


World = tuple[MatrixDriver, Served]


class Since:
    """What the bot posted and the room stored after this point."""

    @classmethod
    async def now(cls, world: World) -> Since:
        driver, served = world
        rows = await history_of(served.rt, room="ops", limit=1)
        return cls(driver, served, len(driver.received()), rows[-1].id if rows else 0)

    def __init__(self, driver: MatrixDriver, served: Served, seen: int, last_id: int) -> None:
        self.driver, self.served, self.seen, self.last_id = driver, served, seen, last_id

    def received(self) -> list[str]:
        return self.driver.received()[self.seen:]

    def events(self) -> list[dict[str, Any]]:
        return self.driver.bot_events()[self.seen:]

    async def stored(self) -> list[str]:
        return [m.text for m in await history_of(self.served.rt, room="ops", after=self.last_id)]

    async def wait_for(self, predicate: Any) -> str:
        return await self.driver.wait_for(lambda t: t in self.received() and predicate(t), TIMEOUT)
