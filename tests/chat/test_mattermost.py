"""Mattermost beyond the conformance suite: the socket's challenge and seq numbers, interactive
buttons kept server-side, 429s, system posts. A whole opsroom against the local fake."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from opsroom.chat.base import Message
from opsroom.chat.platforms.mattermost.adapter import MattermostAdapter
from opsroom.chat.platforms.mattermost.fake_server import client_view
from opsroom.rooms.service import history_of
from tests.chat.drivers.mattermost import ACTION_SECRET, MattermostDriver
from tests.chat.harness import Served, serve
from tests.chat.harness import approval_status as status_of
from tests.chat.harness import request_approval as request

TIMEOUT = 20.0


@asynccontextmanager
async def mattermost(tmp: Path, *, fake_rate: float | None = None,
                     **item: Any) -> AsyncIterator[tuple[MattermostDriver, Served]]:
    driver = MattermostDriver()
    driver.fake.rate_per_s = fake_rate
    await driver.start(tmp / "platform")
    try:
        extra: dict[str, Any] = {}
        if item:
            extra["platforms"] = [{**driver.platform_item(), **item}]
        async with serve(tmp, driver, **extra) as served:
            if "token" not in item:
                await driver.attach(served)
            yield driver, served
    finally:
        await driver.stop()


def adapter(served: Served) -> MattermostAdapter:
    assert served.rt.rooms is not None
    found = served.rt.rooms.adapters["mattermost"]
    assert isinstance(found, MattermostAdapter)
    return found


async def test_the_socket_is_authenticated_and_seq_numbers_are_followed(tmp_path: Path) -> None:
    async with mattermost(tmp_path) as (driver, served):
        await driver.say("alice", "status")
        await driver.wait_for(lambda t: "Sys" in t, TIMEOUT)
        mm = adapter(served)
        assert mm.bot_user_id == driver.fake.bot.id
        assert mm.last_seq >= 2  # hello is 0, then alice's post and the bot's own reply
        assert "websocket" not in driver.fake.refusals


async def test_a_wrong_token_never_connects_and_the_web_room_still_runs(tmp_path: Path) -> None:
    async with mattermost(tmp_path, token="not-the-bot-token") as (driver, served):
        await driver.fake.wait(lambda: "users" in driver.fake.refusals, TIMEOUT)
        assert not adapter(served).is_connected()
        assert not any(u.id == driver.fake.bot.id for _, u in driver.fake.sockets)
        assert served.rt.rooms is not None
        stored = await served.rt.rooms.post(Message(room="ops", text="web still fine", kind="notice"))
        assert stored.id is not None


async def test_buttons_carry_a_signed_context_that_clients_never_see(tmp_path: Path) -> None:
    async with mattermost(tmp_path) as (driver, served):
        approval_id = await request(driver)
        post, action = driver.fake.action(approval_id, "approve")
        integration = action["integration"]
        assert integration["url"] == f"{served.rt.settings.web_url}/chat/mattermost/actions"
        context = integration["context"]
        assert context["approval_id"] == approval_id and context["decision"] == "approve"
        assert re.fullmatch(r"[0-9a-f]{64}", context["sig"])
        assert ACTION_SECRET not in json.dumps(context)  # an HMAC keyed with it, not the secret
        assert f"@{'bob'}" in post["message"]  # the linked approver, mentioned directly
        # What the people's clients got over the socket: the buttons, not the integration.
        shown = json.dumps(client_view(post))
        assert context["sig"] not in shown and "Approve" in shown


async def test_a_deny_click_denies(tmp_path: Path) -> None:
    async with mattermost(tmp_path) as (driver, served):
        approval_id = await request(driver)
        await driver.click("bob", approval_id, "deny")
        await driver.wait_for(lambda t: "denied" in t.lower(), TIMEOUT)
        assert await status_of(served, approval_id) == "denied"


async def test_http_429_is_waited_out_and_every_message_arrives_once_in_order(tmp_path: Path) -> None:
    async with mattermost(tmp_path, fake_rate=2.0, rate_per_s=20, burst=5) as (driver, served):
        assert served.rt.rooms is not None
        for i in range(5):
            served.rt.rooms.post_nowait(Message(room="ops", text=f"burst {i}", kind="notice"))
        await driver.wait_for(lambda t: "burst 4" in t, TIMEOUT)
        assert [t for t in driver.received() if t.startswith("burst")] == [f"burst {i}" for i in range(5)]
        assert "ratelimited" in driver.fake.refusals
        assert served.rt.rooms.queues["mattermost"].stats.retried >= 1


async def test_system_posts_and_webhook_posts_are_not_commands(tmp_path: Path) -> None:
    async with mattermost(tmp_path) as (driver, _served):
        alice = driver.fake.user("alice")
        base = {"id": "s" * 26, "user_id": alice.id, "channel_id": driver.channel, "message": "status", "props": {}}
        await driver.fake.broadcast({**base, "type": "system_join_channel"}, sender=alice)
        await driver.fake.broadcast({**base, "id": "w" * 26, "type": "", "props": {"from_webhook": "true"}},
                                    sender=alice)
        await driver.say("alice", "executions")  # barrier
        await driver.wait_for(lambda t: "executions" in t.lower(), TIMEOUT)
        assert not any("Sys" in t for t in driver.received())


async def test_being_added_to_and_removed_from_the_channel_is_told_to_the_room(tmp_path: Path) -> None:
    async with mattermost(tmp_path) as (driver, served):
        await driver.fake.membership("carol", joined=True)
        await driver.fake.membership("carol", joined=False)
        await driver.fake.membership("bob", joined=True, channel="z" * 26)  # not a bound channel
        await driver.say("alice", "executions")  # barrier
        await driver.wait_for(lambda t: "executions" in t.lower(), TIMEOUT)
        notices = [m.text for m in await history_of(served.rt, room="ops") if m.kind == "notice"]
        assert "carol joined the room" in notices and "carol left the room" in notices
        assert not any(n.startswith("bob") for n in notices)


async def test_a_channel_bound_as_team_slash_name_is_resolved_to_its_id(tmp_path: Path) -> None:
    driver = MattermostDriver()
    await driver.start(tmp_path / "platform")
    try:
        async with serve(tmp_path, driver, rooms=[{"name": "ops", "bind": ["mattermost:opsroom/ops"]}]) as served:
            await driver.attach(served)
            await driver.say("alice", "run deploy")
            text = await driver.wait_for(lambda t: "needs approval" in t, TIMEOUT)
            approval_id = int(re.search(r"Request #(\d+)", text).group(1))  # type: ignore[union-attr]
            await driver.click("bob", approval_id, "approve")  # the click names the id; the room the name
            await driver.wait_for(lambda t: "approved by boss" in t, TIMEOUT)
            assert adapter(served)._channel_id("opsroom/ops") == driver.fake.ops
    finally:
        await driver.stop()
