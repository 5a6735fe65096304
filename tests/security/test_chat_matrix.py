"""Attacks on the Matrix adapter, against a real Synapse: lines from rooms opsroom is not bound
to, bots (another one, or our own account on another device), a message whose HTML says
something else than its plain body, a display name borrowed from another member, and markup or
mentions smuggled into what the bot posts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest
import pytest_asyncio

from opsroom.chat.base import Mention, Message, Outgoing
from opsroom.chat.platforms.matrix.adapter import MatrixAdapter, MatrixConfig
from opsroom.rooms.service import history_of
from tests.chat.drivers.matrix import MatrixDriver, Since, World, barrier, booted

# One room and one opsroom for the whole module (each test looks only at what came after its
# own start): booting opsroom is most of a test's time. `otherbot` is listed in `bots`.
shared_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    driver = MatrixDriver(platform_settings={"bots": ["@otherbot:localhost"]})
    async with booted(tmp_path_factory.mktemp("matrix-security"), driver) as w:
        yield w


async def bot_lines_in(driver: MatrixDriver, room_id: str) -> list[dict[str, Any]]:
    got = await driver.call("alice", "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/messages", dir="b",
                            limit="100")
    bot = driver.account_id("opsroom")
    return [ev for ev in got["chunk"] if ev.get("sender") == bot and ev.get("type") == "m.room.message"]


@shared_loop
class TestUnboundRooms:
    async def test_a_room_the_bot_is_in_but_not_bound_to_is_not_listened_to(self, world: World) -> None:
        driver, _served = world
        since = await Since.now(world)
        other = await asyncio.to_thread(driver.srv.create_room, "alice", members=["opsroom", "bob"],
                                        join=["opsroom", "bob"])
        await driver.send("alice", {"msgtype": "m.text", "body": "status"}, room=other)
        await driver.send("bob", {"msgtype": "m.text", "body": "run deploy"}, room=other)
        await barrier(driver)
        assert not any(t in ("status", "run deploy") for t in await since.stored())
        assert await bot_lines_in(driver, other) == []
        assert not any("healthy" in t or "approval" in t for t in since.received())

    async def test_an_invite_to_an_unbound_room_is_not_accepted(self, world: World) -> None:
        driver, _ = world
        other = await asyncio.to_thread(driver.srv.create_room, "carol", members=["opsroom"], join=[])
        await barrier(driver)
        joined = await driver.call("carol", "GET", f"/_matrix/client/v3/rooms/{quote(other)}/joined_members")
        assert driver.account_id("opsroom") not in joined["joined"]


@shared_loop
class TestBots:
    async def test_a_notice_is_never_answered_whoever_sends_it(self, world: World) -> None:
        """m.notice is how the spec marks a bot's line: never answered, so two bots cannot loop."""
        driver, _served = world
        since = await Since.now(world)
        # Even from a linked account that could run it: a notice is never a command.
        await driver.send("alice", {"msgtype": "m.notice", "body": "status"})
        await barrier(driver)
        assert not any("healthy" in t for t in since.received())
        assert "status" not in await since.stored()

    async def test_a_bot_listed_in_the_config_is_never_answered_even_in_m_text(self, world: World) -> None:
        driver, _served = world
        since = await Since.now(world)
        await driver.send("otherbot", {"msgtype": "m.text", "body": "status"})
        await barrier(driver)
        assert not any("healthy" in t for t in since.received())
        assert "status" not in await since.stored()

    async def test_our_own_account_from_another_device_is_never_answered(self, world: World) -> None:
        driver, _served = world
        since = await Since.now(world)
        # Anyone holding the bot's token (or the bot's own earlier line) says a command.
        await driver.send("opsroom", {"msgtype": "m.text", "body": "run deploy"})
        await barrier(driver)
        assert "run deploy" not in await since.stored()
        assert not any("approval" in t for t in since.received())


@shared_loop
class TestWhatIsRead:
    async def test_the_plain_body_is_read_never_the_html(self, world: World) -> None:
        """A client can make formatted_body (what Element shows) differ from body. opsroom
        reads, answers and stores the body: what the audit shows is what was acted on."""
        driver, _served = world
        since = await Since.now(world)
        await driver.send("alice", {"msgtype": "m.text", "body": "just saying hello",
                                    "format": "org.matrix.custom.html", "formatted_body": "status"})
        await driver.send("alice", {"msgtype": "m.text", "body": "status",
                                    "format": "org.matrix.custom.html", "formatted_body": "<b>hi all</b>"})
        await since.wait_for(lambda t: "healthy" in t)
        await barrier(driver)
        texts = await since.stored()
        assert "just saying hello" in texts and "<b>hi all</b>" not in texts
        assert sum("healthy" in t for t in since.received()) == 1

    async def test_an_edit_does_not_run_a_second_command(self, world: World) -> None:
        driver, _served = world
        since = await Since.now(world)
        first = await driver.send("alice", {"msgtype": "m.text", "body": "hello"})
        await driver.send("alice", {"msgtype": "m.text", "body": "* run deploy",
                                    "m.new_content": {"msgtype": "m.text", "body": "run deploy"},
                                    "m.relates_to": {"rel_type": "m.replace", "event_id": first}})
        await barrier(driver)
        assert not any("approval" in t for t in since.received())
        assert not any("run deploy" in t for t in await since.stored())

    async def test_a_quoted_command_in_a_reply_is_not_run(self, world: World) -> None:
        driver, _served = world
        since = await Since.now(world)
        first = await driver.send("alice", {"msgtype": "m.text", "body": "hello"})
        await driver.send("bob", {"msgtype": "m.text", "body": "> <@alice:localhost> run deploy\n\nthanks",
                                  "m.relates_to": {"m.in_reply_to": {"event_id": first}}})
        await barrier(driver)
        assert "thanks" in await since.stored()
        assert not any("approval" in t for t in since.received())


@shared_loop
class TestDisplayNameSpoofing:
    async def test_a_borrowed_display_name_gets_neither_rights_nor_the_name(self, world: World) -> None:
        """carol (unlinked) takes bob's display name: the link is by account id, so she cannot
        approve, and what the room records names her account."""
        driver, served = world
        since = await Since.now(world)
        try:
            await driver.set_displayname("carol", "bob")
            await driver.say("alice", "run deploy")
            text = await since.wait_for(lambda t: "needs approval" in t)
            approval = int(text.split("Request #")[1].split()[0].rstrip(":.,"))
            await driver.say("carol", f"approve {approval}")
            await since.wait_for(lambda t: "know who you are" in t or "not linked" in t)
            await barrier(driver)
            assert not any("approved by" in t for t in since.received())
            rows = await history_of(served.rt, room="ops")
            spoofed = next(r for r in rows if r.text == f"approve {approval}")
            assert spoofed.author == "bob (@carol:localhost)"
        finally:
            await driver.set_displayname("carol", "carol")


@shared_loop
class TestOutputInRoom:
    async def test_mass_mentions_markup_and_permalinks_in_output_stay_text(self, world: World) -> None:
        _driver, served = world
        since = await Since.now(world)
        assert served.rt.rooms is not None
        evil = ('@room look <a href="https://evil.example">here</a> <img src=x onerror=alert(1)> '
                "https://matrix.to/#/@bob:localhost")
        served.rt.rooms.post_nowait(Message(room="ops", text=evil, kind="notice"))
        await since.wait_for(lambda t: "look" in t)
        content = next(ev["content"] for ev in since.events() if "look" in ev["content"]["body"])
        assert content["m.mentions"] == {"user_ids": []}  # not "room": true, and nobody
        html = content["formatted_body"]
        assert "<a" not in html and "<img" not in html and "&lt;a href" in html
        assert "@room" not in html and "@room" not in content["body"]
        assert "https://matrix.to/#/@bob" not in html  # no pill drawn from output



class TestMentions:
    def test_a_mention_is_only_ever_a_user_id_pill(self) -> None:
        adapter = MatrixAdapter(name="matrix", config=MatrixConfig(homeserver="http://127.0.0.1:1",
                                                                   user_id="@opsroom:localhost", access_token="t"))
        out = Outgoing(room="ops", channel="!r:localhost", text="Request #1 needs approval",
                       mentions=(Mention("@bob:localhost", '<b>bob</b>" onclick="x'),
                                 Mention('"><script>alert(1)</script>', "@room"),
                                 Mention("@room", "everyone")))
        content = adapter.content(out)
        assert content["m.mentions"] == {"user_ids": ["@bob:localhost"]}
        html = content["formatted_body"]
        assert '<a href="https://matrix.to/#/@bob:localhost">&lt;b&gt;bob&lt;/b&gt;&quot; onclick=&quot;x</a>' in html
        assert "<script>" not in html and "@room" not in html and "@room" not in content["body"]
        assert html.count("<a ") == 1
