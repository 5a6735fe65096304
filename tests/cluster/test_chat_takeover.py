"""One server holds a chat platform's connection; another takes it over when it dies (issue 14,
acceptance 2, the chat part, and point 4).

Two real `opsroom serve` processes on one PostgreSQL, their room bound to a channel of the real
ngircd (tests/chat/servers/ngircd.py) that people's IRC clients sit in. While both run, what is
said on the server without the connection reaches IRC once (through the log, sent by the holder)
and what is said on IRC reaches the other server's room once. kill -9 the holder: the other takes
the lease `chat:irc` and its bot is back in the channel within 10 s; what is said after that
reaches IRC once.
"""

from __future__ import annotations

import asyncio
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from tests.chat.drivers.irc import BOT_NICK, IrcDriver
from tests.cluster.test_announce_once import PW, _env, _said, _serve, _sql, _token, _until
from tests.e2e.harness import Demo, RoomClient, login
from tests.factories import small_catalog

TAKEOVER_S = 10.0


def irc_catalog(tmp: Path, driver: IrcDriver) -> Path:
    return small_catalog(tmp, platforms=[driver.platform_item()],
                         rooms=[{"name": "ops", "bind": [f"irc:{driver.channel}"]}],
                         users=[{"name": "you", "roles": ["operator"], "password_env": "OPSROOM_TEST_PW_YOU"},
                                {"name": "boss", "roles": ["approver"], "password_env": "OPSROOM_TEST_PW_BOSS"}])


def holder_pid(url: str) -> int | None:
    rows = _sql(url, "SELECT holder FROM cluster_leases WHERE name = 'chat:irc' AND holder IS NOT NULL "
                     "AND expires_at >= extract(epoch from clock_timestamp())")
    return int(rows[0][0].split(":")[1]) if rows else None


def say(server: Demo, token: str, text: str) -> None:
    got = httpx.post(f"{server.base}/api/v1/rooms/ops/messages", json={"text": text}, timeout=10,
                     headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 201, got.text


def bot_joins(driver: IrcDriver) -> int:
    return sum(1 for nick, cmd, _ in driver.clients["alice"].lines if cmd == "JOIN" and nick.startswith(BOT_NICK))


def _is_message(text: str, frame: dict[str, Any]) -> bool:
    return bool(frame["type"] == "message" and frame["text"] == text)


def heard(driver: IrcDriver, needle: str) -> list[str]:
    return [t for t in driver.received() if needle in t]


async def heard_once(driver: IrcDriver, needle: str, timeout: float = 15.0) -> None:
    await driver.wait_for(lambda t: needle in t, timeout)
    await asyncio.sleep(1.5)  # a second copy, from another server, would be here by now
    assert len(heard(driver, needle)) == 1, heard(driver, needle)


async def test_the_holders_death_hands_the_connection_over(tmp_path: Path, pg_own_url: str) -> None:
    driver = IrcDriver()
    await driver.start(tmp_path / "platform")
    servers: list[Demo] = []
    clients: list[RoomClient] = []
    try:
        catalog = irc_catalog(tmp_path, driver)
        env = _env(pg_own_url)
        a = _serve(tmp_path, "a", catalog, env)
        servers.append(a)
        await driver.wait_bot_joined()
        b = _serve(tmp_path, "b", catalog, env)
        servers.append(b)
        assert holder_pid(pg_own_url) == a.proc.pid
        you = _token(a, catalog, "you")
        web_b = await RoomClient.open(b.base, await login(b.base, "boss", PW["boss"]), "boss")
        clients.append(web_b)
        await web_b.wait_for(lambda f: f["type"] == "approvals", 10)  # the socket is live

        # Both up: a line said on B reaches IRC once (A sends it, from the log) ...
        say(b, you, "from-b-before")
        await heard_once(driver, "you (web): from-b-before")  # (its "I don't understand" too)
        # ... and a line said on IRC (heard by A) is in B's room once.
        await driver.say("alice", "from-irc-before")
        await _until("the IRC line in B's room", lambda: _said(b.base, you, "from-irc-before"), 10)
        assert len(_said(b.base, you, "from-irc-before")) == 1
        # A web client of B got both once: B's own line as B stored it, A's from the log.
        for needle in ("from-b-before", "from-irc-before"):
            await web_b.wait_for(partial(_is_message, needle), 10)
        await asyncio.sleep(1)
        assert [f["text"] for f in web_b.messages if f["text"] in ("from-b-before", "from-irc-before")] == \
            ["from-b-before", "from-irc-before"], web_b.messages
        assert bot_joins(driver) == 1, "B connected while A held the connection"

        a.stop(signal.SIGKILL)
        killed = time.monotonic()
        async with asyncio.timeout(TAKEOVER_S):
            while bot_joins(driver) < 2:
                await asyncio.sleep(0.05)
        took = time.monotonic() - killed
        assert holder_pid(pg_own_url) == b.proc.pid
        print(f"B's bot in the channel {took:.1f} s after A was killed")

        say(b, you, "from-b-after")
        await heard_once(driver, "you (web): from-b-after")
        # A command said on IRC now is answered once, by B (alice is not linked: it says so).
        mark = len(driver.received())
        await driver.say("alice", "status")
        await driver.wait_for(lambda t: "who you are" in t, 15)
        await asyncio.sleep(1.5)
        assert len(driver.received()[mark:]) == 1, driver.received()[mark:]
    finally:
        for client in clients:
            await client.close()
        for server in servers:
            server.stop()
        await driver.stop()
