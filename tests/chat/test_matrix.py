"""The Matrix adapter against a real Synapse on loopback, beyond the conformance suite: history
is not replayed, binding by alias, password login, the homeserver's own 429s, a sync that hands
an event back, mentions of approvers, presence, and what the events look like on the wire."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from pydantic import ValidationError

from opsroom.chat.base import Message
from opsroom.chat.platforms.matrix.adapter import MatrixConfig
from opsroom.rooms.service import history_of
from tests.chat.drivers.matrix import MatrixDriver, Since, World, adapter_of, barrier, booted, until
from tests.chat.harness import serve

TIMEOUT = 20.0


async def test_the_first_start_does_not_run_what_was_said_before_it(tmp_path: Path) -> None:
    async def said_before(driver: MatrixDriver) -> None:
        # The bot is in the room already (a restart), so the line is what its first sync returns.
        await asyncio.to_thread(driver.srv.join, "opsroom", driver.room_id)
        await driver.say("alice", "status")

    async with booted(tmp_path, before=said_before) as (driver, served):
        await barrier(driver)
        assert not any("healthy" in t for t in driver.received()), driver.received()
        assert not any(m.text == "status" for m in await history_of(served.rt, room="ops"))


async def test_a_room_bound_by_alias(tmp_path: Path) -> None:
    async with booted(tmp_path, MatrixDriver(alias=True)) as (driver, served):
        assert driver.channel.startswith("#ops-")
        await driver.say("alice", "status")
        await driver.wait_for(lambda t: "Sys" in t and "healthy" in t, TIMEOUT)
        assert adapter_of(served).room_of[driver.channel] == driver.room_id


async def test_password_login_with_a_fixed_device(tmp_path: Path) -> None:
    driver = MatrixDriver()
    await driver.start(tmp_path / "platform")
    bot = driver.srv.accounts["opsroom"]
    driver.settings = {"access_token": None, "password": bot.password, "device_id": "OPSROOMTEST"}
    try:
        async with serve(tmp_path, driver) as served:
            adapter = adapter_of(served)
            await until(adapter.is_connected)
            assert adapter.client.access_token not in (None, bot.access_token)
            await driver.say("alice", "status")
            await driver.wait_for(lambda t: "healthy" in t, TIMEOUT)
            devices = await driver.call("opsroom", "GET", "/_matrix/client/v3/devices")
            assert "OPSROOMTEST" in {d["device_id"] for d in devices["devices"]}
    finally:
        await driver.stop()


async def test_the_homeservers_429_is_waited_out_and_nothing_is_lost_or_doubled(tmp_path: Path) -> None:
    """`slowbot` keeps a real message limit on the homeserver (1/s, bursts of 1) while the
    adapter is told it may send 50/s: Synapse answers M_LIMIT_EXCEEDED with retry_after_ms,
    and the send queue waits that long instead of guessing."""
    srv_driver = MatrixDriver(bot="slowbot", platform_settings={"rate_per_s": 50, "burst": 50})
    await srv_driver.start(tmp_path / "platform")
    await asyncio.to_thread(srv_driver.srv.rate_limit, "slowbot", per_second=1, burst=1)
    try:
        async with serve(tmp_path, srv_driver) as served:
            assert served.rt.rooms is not None
            adapter = adapter_of(served)
            await until(adapter.is_connected)
            for i in range(4):
                served.rt.rooms.post_nowait(Message(room="ops", text=f"limited {i}", kind="notice"))
            await srv_driver.wait_for(lambda t: "limited 3" in t, 30)
            got = [int(m.group(1)) for t in srv_driver.received() if (m := re.search(r"limited (\d)", t))]
            assert got == [0, 1, 2, 3]
            assert served.rt.rooms.queues["matrix"].stats.retried >= 1  # the homeserver did say 429
    finally:
        await srv_driver.stop()


async def test_a_kicked_bot_rejoins_when_invited_and_drops_what_it_cannot_send(tmp_path: Path) -> None:
    async with booted(tmp_path) as (driver, served):
        assert served.rt.rooms is not None
        queue = served.rt.rooms.queues["matrix"]
        room = f"/_matrix/client/v3/rooms/{driver.room_id}"
        await driver.call("alice", "POST", f"{room}/kick", {"user_id": driver.account_id("opsroom")})
        served.rt.rooms.post_nowait(Message(room="ops", text="while kicked", kind="notice"))
        await until(lambda: queue.stats.failed == 1)  # not in the room, and cannot join: refused for good
        await driver.call("alice", "POST", f"{room}/invite", {"user_id": driver.account_id("opsroom")})
        served.rt.rooms.post_nowait(Message(room="ops", text="invited again", kind="notice"))
        await driver.wait_for(lambda t: "invited again" in t, TIMEOUT)  # M_FORBIDDEN: joined, sent again
        await driver.say("alice", "status")
        await driver.wait_for(lambda t: "healthy" in t, TIMEOUT)  # and it listens there again
        assert not any("while kicked" in t for t in driver.received())


# Five tests in one room with one opsroom (booting opsroom is most of a test's time); each looks
# only at what came after its own start.
shared_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with booted(tmp_path_factory.mktemp("matrix")) as w:
        yield w


@shared_loop
class TestInOneRoom:
    async def test_an_event_the_sync_hands_back_again_is_answered_once(self, world: World) -> None:
        """Matrix has no redelivery of its own, but a sync resumed from an older token (a lost
        response, a homeserver's stream reset) hands the same events back: answered once."""
        driver, served = world
        since = await Since.now(world)
        await driver.attach(served)
        await driver.say("alice", "status")
        await since.wait_for(lambda t: "healthy" in t)
        await driver.redeliver()  # the sync starts again from before alice's line
        await barrier(driver)
        assert sum("healthy" in t for t in since.received()) == 1, since.received()

    async def test_an_approval_request_mentions_the_approvers_as_matrix_mentions(self, world: World) -> None:
        driver, _served = world
        since = await Since.now(world)
        bob = driver.account_id("bob")
        await driver.say("alice", "run deploy")
        await since.wait_for(lambda t: "needs approval" in t)
        request = next(ev for ev in since.events() if "needs approval" in ev["content"]["body"])
        content = request["content"]
        assert content["m.mentions"] == {"user_ids": [bob]}
        assert f'<a href="https://matrix.to/#/{bob}">bob</a>' in content["formatted_body"]
        assert content["format"] == "org.matrix.custom.html"
        # m.text: the default push rules silence every m.notice, mentions included.
        assert content["msgtype"] == "m.text"
        await barrier(driver)
        others = [ev["content"] for ev in since.events() if ev is not request]
        assert others and all(c["msgtype"] == "m.notice" and c["m.mentions"] == {"user_ids": []} for c in others)

    async def test_the_plain_body_and_the_html_say_the_same(self, world: World) -> None:
        _driver, served = world
        since = await Since.now(world)
        assert served.rt.rooms is not None
        served.rt.rooms.post_nowait(Message(room="ops", text="line one\nline <two> & three", kind="notice"))
        await since.wait_for(lambda t: "line one" in t)
        content = next(ev["content"] for ev in since.events() if "line one" in ev["content"]["body"])
        assert content["body"] == "line one\nline <two> & three"
        assert content["formatted_body"] == "line one<br>line &lt;two&gt; &amp; three"

    async def test_people_leaving_and_joining_are_announced(self, world: World) -> None:
        driver, _served = world
        since = await Since.now(world)
        await driver.call("carol", "POST", f"/_matrix/client/v3/rooms/{driver.room_id}/leave", {})
        await since.wait_for(lambda t: "carol left the room" in t)
        await driver.call("alice", "POST", f"/_matrix/client/v3/rooms/{driver.room_id}/invite",
                          {"user_id": driver.account_id("carol")})
        await driver.call("carol", "POST", f"/_matrix/client/v3/join/{driver.room_id}", {})
        await since.wait_for(lambda t: "carol joined the room" in t)
        # A display name change is no arrival.
        try:
            await driver.set_displayname("carol", "carol c")
            await barrier(driver)
        finally:
            await driver.set_displayname("carol", "carol")
        assert sum("joined the room" in t for t in since.received()) == 1, since.received()

    async def test_identify_and_presence_ask_the_homeserver(self, world: World) -> None:
        driver, served = world
        adapter = adapter_of(served)
        bob = await adapter.identify(driver.account_id("bob"))
        assert (bob.display_name, bob.is_bot) == ("bob", False)
        assert (await adapter.identify(adapter.me)).is_bot
        present = {p.platform_id for p in await adapter.presence(driver.channel)}
        assert {driver.account_id(p) for p in ("alice", "bob", "carol", "opsroom")} <= present


def test_config_needs_one_way_to_log_in_and_full_ids() -> None:
    ok = {"homeserver": "https://matrix.example.org/", "user_id": "@opsroom:example.org"}
    assert MatrixConfig.model_validate({**ok, "access_token": "t"}).homeserver == "https://matrix.example.org"
    for bad in ({**ok}, {**ok, "access_token": "t", "password": "p"}, {**ok, "user_id": "opsroom", "password": "p"},
                {**ok, "homeserver": "matrix.example.org", "password": "p"},
                {**ok, "password": "p", "rate_per_s": 0}, {**ok, "password": "p", "colour": "red"}):
        with pytest.raises(ValidationError):
            MatrixConfig.model_validate(bad)
    # The token never shows in a repr (logs, tracebacks).
    assert "s3cret" not in repr(MatrixConfig.model_validate({**ok, "access_token": "s3cret"}))
