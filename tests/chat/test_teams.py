"""Teams beyond the conformance suite: the Adaptive Card and mentions as the Bot Connector
receives them, cached signing keys, 429 Retry-After, threads, presence, a refused client
secret. A whole opsroom runs in-process against the local Bot Framework fake."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from opsroom.access import service as access
from opsroom.chat.base import Message
from opsroom.chat.platforms.teams.adapter import TeamsAdapter, TeamsConfig
from tests.chat.drivers.teams import CONVERSATION, TeamsDriver
from tests.chat.harness import Served, serve

TIMEOUT = 20.0


@pytest.fixture
async def teams(tmp_path: Path) -> AsyncIterator[tuple[TeamsDriver, Served]]:
    driver = TeamsDriver()
    await driver.start(tmp_path / "platform")
    try:
        async with serve(tmp_path, driver) as served:
            await driver.attach(served)
            yield driver, served
    finally:
        await driver.stop()


def adapter(served: Served) -> TeamsAdapter:
    assert served.rt.rooms is not None
    found = served.rt.rooms.adapters["teams"]
    assert isinstance(found, TeamsAdapter)
    return found


def test_defaults_are_microsofts_own_urls() -> None:
    config = TeamsConfig.model_validate({"app_id": "abc", "app_password": "pw"})
    assert config.openid_url == "https://login.botframework.com/v1/.well-known/openidconfiguration"
    assert config.token_url == "https://login.microsoftonline.com/botframework.com/oauth2/v2.0/token"
    assert "pw" not in repr(config)  # the client secret never shows in a log line or traceback
    with pytest.raises(ValueError):
        TeamsConfig.model_validate({"app_id": "abc", "app_password": "pw", "bogus": 1})


async def test_an_approval_is_an_adaptive_card_that_mentions_the_approver(teams: tuple[TeamsDriver, Served]) -> None:
    driver, _ = teams
    await driver.say("alice", "run deploy")
    text = await driver.wait_for(lambda t: "needs approval" in t, TIMEOUT)
    approval_id = int(re.search(r"#(\d+)", text).group(1))  # type: ignore[union-attr]
    activity = next(a for a in driver.fake.replies_in(CONVERSATION) if a["text"] == text)
    card = activity["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    actions = card["content"]["actions"]
    assert [(a["type"], a["title"], a["data"]) for a in actions] == [
        ("Action.Submit", "Approve", {"opsroom": "approval", "approval_id": approval_id, "decision": "approve"}),
        ("Action.Submit", "Deny", {"opsroom": "approval", "approval_id": approval_id, "decision": "deny"})]
    # bob (boss, an approver) is linked on Teams: mentioned directly, with the entity Teams needs.
    assert "<at>bob</at>" in text
    assert {"type": "mention", "text": "<at>bob</at>",
            "mentioned": {"id": driver.account_id("bob"), "name": "bob"}} in activity["entities"]
    await driver.click("bob", approval_id, "deny")
    await driver.wait_for(lambda t: "denied" in t.lower() and "boss" in t, TIMEOUT)


async def test_signing_keys_are_fetched_once_and_replies_carry_our_token(teams: tuple[TeamsDriver, Served]) -> None:
    driver, _ = teams
    for _ in range(3):
        await driver.say("alice", "status")
    await driver.wait_for(lambda t: len([x for x in driver.received() if "Sys" in x]) >= 3, TIMEOUT)
    assert driver.fake.metadata_hits == 1, "the OpenID metadata is fetched per activity"
    assert driver.fake.tokens, "no client-credentials token was issued"


async def test_a_429_is_retried_after_retry_after_in_order_once(teams: tuple[TeamsDriver, Served]) -> None:
    driver, served = teams
    driver.fake.rate_limit, driver.fake.retry_after = (1, 1.0), 1
    assert served.rt.rooms is not None
    for i in range(3):
        served.rt.rooms.post_nowait(Message(room="ops", text=f"limited {i}", kind="notice"))
    await driver.wait_for(lambda t: "limited 2" in t, TIMEOUT)
    got = [t for t in driver.received() if "limited" in t]
    assert got == ["limited 0", "limited 1", "limited 2"], got
    assert served.rt.rooms.queues["teams"].stats.retried >= 1  # the fake really said 429


async def test_a_thread_reply_belongs_to_its_channel_and_members_are_announced(
        teams: tuple[TeamsDriver, Served]) -> None:
    driver, _ = teams
    fake = driver.fake
    threaded = fake.activity(conversation=f"{CONVERSATION};messageid=1700000000000", user_id=driver.account_id("alice"),
                             name="alice", text="status", mention_bot=True)
    assert await fake.post(threaded) == 200
    await driver.wait_for(lambda t: "Sys" in t, TIMEOUT)
    update: dict[str, Any] = fake.activity(conversation=CONVERSATION, user_id=driver.account_id("carol"), name="carol")
    update.update(type="conversationUpdate", membersAdded=[{"id": driver.account_id("carol"), "name": "carol"}])
    assert await fake.post(update) == 200
    await driver.wait_for(lambda t: "carol joined the room" in t, TIMEOUT)


class StaleSecretDriver(TeamsDriver):
    def platform_item(self) -> dict[str, Any]:
        return {**super().platform_item(), "app_password": "stale-secret"}


async def test_a_refused_client_secret_holds_sends_until_it_is_accepted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    driver = StaleSecretDriver()
    await driver.start(tmp_path / "platform")
    try:
        async with serve(tmp_path, driver) as served:
            await driver.attach(served)
            assert served.rt.rooms is not None
            served.rt.rooms.post_nowait(Message(room="ops", text="held back", kind="notice"))
            async with asyncio.timeout(TIMEOUT):
                while served.rt.rooms.queues["teams"].stats.retried < 1:
                    await asyncio.sleep(0.05)
            assert not adapter(served).is_connected()
            assert driver.received() == []
            assert not driver.fake.tokens  # the token endpoint refused the stale secret
            driver.fake.app_password = "stale-secret"  # the admin puts the secret back in Azure
            await driver.wait_for(lambda t: t == "held back", TIMEOUT)
            assert driver.received().count("held back") == 1
    finally:
        await driver.stop()
    out = capsys.readouterr()
    logged = caplog.text + out.out + out.err
    assert "Bot Framework unreachable" in logged  # the log was captured...
    assert "stale-secret" not in logged and not any(t in logged for t in driver.fake.tokens)  # ...without secrets


async def test_relayed_markup_shows_as_text(teams: tuple[TeamsDriver, Served]) -> None:
    driver, served = teams
    web = served.rt.rooms.adapters["web"]  # type: ignore[union-attr]
    actor = await access.actor_by_name(served.rt, name="lead", door="web")
    await web.said("ops", actor, '<at>everyone</at> <a href="https://evil.example">click</a> **x**')  # type: ignore[attr-defined]
    text = await driver.wait_for(lambda t: "click" in t, TIMEOUT)
    activity = next(a for a in driver.fake.replies_in(CONVERSATION) if a["text"] == text)
    assert activity["textFormat"] == "xml" and "entities" not in activity  # nobody is mentioned
    assert "<a href" not in text and "<at>" not in text and "&lt;a href" in text


async def test_keys_that_cannot_be_fetched_are_nobodys_forgery(tmp_path: Path) -> None:
    import aiohttp

    from opsroom.chat.platforms.teams.auth import ChannelKeys, KeysUnavailable, verify_activity
    from opsroom.chat.platforms.teams.fake_server import TeamsFake

    fake = TeamsFake()
    await fake.start()
    try:
        activity = fake.activity(conversation=CONVERSATION, user_id="29:1alice", name="alice", text="hi")
        token = fake.token()
        async with aiohttp.ClientSession() as session:
            keys = ChannelKeys(session, fake.openid_url)
            await fake.stop()
            with pytest.raises(KeysUnavailable):
                await verify_activity(keys, authorization=f"Bearer {token}", app_id=fake.app_id, activity=activity)
            await fake.start()
            claims = await verify_activity(keys, authorization=f"Bearer {token}", app_id=fake.app_id,
                                           activity=activity)
            assert claims["aud"] == fake.app_id
    finally:
        await fake.close()
