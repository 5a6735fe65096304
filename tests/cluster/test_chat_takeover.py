"""One server holds a chat platform's connection; another takes it over when it dies (issue 14,
acceptance 2, the chat part, and point 4).

Two real `opsroom serve` processes on one PostgreSQL, their room bound to a channel of the real
ngircd (tests/chat/servers/ngircd.py) that people's IRC clients sit in. While both run, what is
said on the server without the connection reaches IRC once (through the log, sent by the holder)
and what is said on IRC reaches the other server's room once. kill -9 the holder: the other takes
the lease `chat:irc` (its ttl the cluster's dead window, 3 s) as it expires and its bot is back
in the channel within 10 s; what was said and announced while no server held the connection (the takeover gap)
reaches IRC once, after the takeover (chat/handover.py), and what is said after it too.

A holder whose platform is away queues what the room says and stores no position past it: killed
then, its successor sends those lines once the platform is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from tests.chat.drivers.irc import BOT_NICK, IrcDriver
from tests.cluster.test_announce_once import PW, _env, _said, _serve, _sql, _token, _until
from tests.e2e.harness import Demo, RoomClient, login
from tests.factories import small_catalog

TAKEOVER_S = 10.0
DEAD_AFTER_S = 3.0  # the default cluster_dead_after: a chat lease lasts no longer
# After the dead holder's lease expired: taken at the expiry itself (bench/failover.py: 0.06 s), but
# under a loaded `make test` a woken task can be a second late, so this bounds it by a ttl only.
TAKEN_WITHIN_S = DEAD_AFTER_S


def irc_catalog(tmp: Path, driver: IrcDriver) -> Path:
    return small_catalog(tmp, platforms=[driver.platform_item()],
                         rooms=[{"name": "ops", "bind": [f"irc:{driver.channel}"]}],
                         users=[{"name": "you", "roles": ["operator"], "password_env": "OPSROOM_TEST_PW_YOU"},
                                {"name": "boss", "roles": ["approver"], "password_env": "OPSROOM_TEST_PW_BOSS"}])


def holder_pid(url: str) -> int | None:
    rows = _sql(url, "SELECT holder FROM cluster_leases WHERE name = 'chat:irc' AND holder IS NOT NULL "
                     "AND expires_at >= extract(epoch from clock_timestamp())")
    return int(rows[0][0].split(":")[1]) if rows else None


def lease_left(url: str) -> float:
    """Seconds the chat:irc lease has left by the store's clock (right after a renewal: its ttl)."""
    rows = _sql(url, "SELECT expires_at - extract(epoch from clock_timestamp()) FROM cluster_leases "
                     "WHERE name = 'chat:irc'")
    return float(rows[0][0])


def ask_deploy(server: Demo, token: str) -> None:
    """A run of the protected `deploy`: its approval request is announced in the room."""
    got = httpx.post(f"{server.base}/api/v1/runbooks/deploy/run", json={"params": {}, "room": "ops"}, timeout=10,
                     headers={"Authorization": f"Bearer {token}"})
    assert got.status_code in (200, 201, 202), got.text


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


@contextlib.asynccontextmanager
async def holder_and_other(tmp_path: Path, url: str) -> AsyncIterator[tuple[IrcDriver, Demo, Demo, str]]:
    """ngircd's channel bound to room `ops`; server A (holding chat:irc), then B; a token of `you`."""
    driver = IrcDriver()
    await driver.start(tmp_path / "platform")
    servers: list[Demo] = []
    try:
        catalog = irc_catalog(tmp_path, driver)
        for name in ("a", "b"):
            servers.append(_serve(tmp_path, name, catalog, _env(url)))
            if name == "a":
                await driver.wait_bot_joined()
        assert holder_pid(url) == servers[0].proc.pid
        yield driver, servers[0], servers[1], _token(servers[0], catalog, "you")
    finally:
        for server in servers:
            server.stop()
        await driver.stop()


async def test_the_holders_death_hands_the_connection_over(tmp_path: Path, pg_own_url: str) -> None:
    async with holder_and_other(tmp_path, pg_own_url) as (driver, a, b, you):
        web_b = await RoomClient.open(b.base, await login(b.base, "boss", PW["boss"]), "boss")
        try:
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

            assert lease_left(pg_own_url) <= DEAD_AFTER_S + 0.1
            a.stop(signal.SIGKILL)
            killed = time.monotonic()
            (expires_at,) = _sql(pg_own_url, "SELECT expires_at FROM cluster_leases WHERE name = 'chat:irc'")[0]
            # The gap: nobody holds the connection (A is dead, its lease not yet expired). A line said
            # and a request announced now (by the announcer, on A, then on B) reach IRC after all.
            say(b, you, "from-b-in-the-gap")
            ask_deploy(b, you)
            assert holder_pid(pg_own_url) != b.proc.pid, "B took the connection before the gap line: no gap"
            async with asyncio.timeout(TAKEOVER_S):
                while bot_joins(driver) < 2:
                    await asyncio.sleep(0.05)
            took = time.monotonic() - killed
            assert holder_pid(pg_own_url) == b.proc.pid
            # B took it once it expired (how soon: the failover bench).
            (taken_at,) = _sql(pg_own_url, "SELECT taken_at FROM cluster_leases WHERE name = 'chat:irc'")[0]
            assert 0 <= taken_at - expires_at < TAKEN_WITHIN_S, taken_at - expires_at
            print(f"B's bot in the channel {took:.1f} s after A was killed")

            await heard_once(driver, "you (web): from-b-in-the-gap")
            requested = await _until("the request logged", lambda: _sql(
                pg_own_url, "SELECT payload->>'approval_id' FROM event_log WHERE type = 'approval.requested'"), 10)
            await heard_once(driver, f"Request #{requested[0][0]}.")
            say(b, you, "from-b-after")
            await heard_once(driver, "you (web): from-b-after")
            # A command said on IRC now is answered once, by B (alice is not linked: it says so).
            mark = len(driver.received())
            await driver.say("alice", "status")
            await driver.wait_for(lambda t: "who you are" in t, 15)
            await asyncio.sleep(1.5)
            assert len(driver.received()[mark:]) == 1, driver.received()[mark:]
        finally:
            await web_b.close()


async def test_what_the_holder_could_not_send_its_successor_sends(tmp_path: Path, pg_own_url: str) -> None:
    async with holder_and_other(tmp_path, pg_own_url) as (driver, a, b, you):
        say(b, you, "sent-before")
        await heard_once(driver, "you (web): sent-before")

        # The platform is away for A (its connection cut, reconnects refused): what B's room says
        # waits in A's send queue, and A stores no position past it.
        assert driver.gate is not None
        await driver.gate.close()
        await _until("A's bot gone", lambda: any(cmd == "QUIT" and nick.startswith(BOT_NICK)
                                                 for nick, cmd, _ in driver.clients["alice"].lines), 15)
        say(b, you, "said-while-away")
        await _until("A queued it", lambda: _said(a.base, you, "said-while-away"), 10)
        await asyncio.sleep(1.0)  # A's position passes would have moved by now
        a.stop(signal.SIGKILL)
        await driver.gate.open()
        await driver.wait_for(lambda t: "said-while-away" in t, 20)
        await asyncio.sleep(1.5)
        assert len(heard(driver, "you (web): said-while-away")) == 1, driver.received()
        assert len(heard(driver, "you (web): sent-before")) == 1, "B sent again what A had sent"
        assert holder_pid(pg_own_url) == b.proc.pid
