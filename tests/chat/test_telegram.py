"""Telegram beyond the conformance suite: webhook mode end to end (setWebhook with our secret,
updates POSTed by the fake), inline keyboards and answerCallbackQuery, HTML escaping, bot
commands, 429 retry_after, the offset confirming what was read, a token kept out of the logs.
A whole opsroom runs in-process against the local Bot API fake."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from opsroom.access import service as access
from opsroom.chat.base import Message
from opsroom.chat.platforms.telegram.adapter import TelegramAdapter, TelegramConfig
from tests.chat.drivers.telegram import TelegramDriver
from tests.chat.harness import Served, serve

TIMEOUT = 20.0


@asynccontextmanager
async def telegram(tmp: Path, driver: TelegramDriver | None = None) -> AsyncIterator[tuple[TelegramDriver, Served]]:
    driver = driver or TelegramDriver()
    await driver.start(tmp / "platform")
    try:
        async with serve(tmp, driver) as served:
            await driver.attach(served)
            yield driver, served
    finally:
        await driver.stop()


def adapter(served: Served) -> TelegramAdapter:
    assert served.rt.rooms is not None
    found = served.rt.rooms.adapters["telegram"]
    assert isinstance(found, TelegramAdapter)
    return found


async def until(predicate: Any, timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def test_config_defaults_and_webhook_needs_a_secret() -> None:
    config = TelegramConfig.model_validate({"token": "1:abc"})
    assert (config.api_url, config.mode) == ("https://api.telegram.org", "polling")
    assert config.rate_per_s == pytest.approx(20 / 60)  # a group's 20 messages a minute
    assert "1:abc" not in repr(config)
    with pytest.raises(ValueError, match="webhook_secret"):
        TelegramConfig.model_validate({"token": "1:abc", "mode": "webhook"})
    with pytest.raises(ValueError, match="webhook_secret"):
        TelegramConfig.model_validate({"token": "1:abc", "mode": "webhook", "webhook_secret": "short"})


async def test_webhook_mode_end_to_end(tmp_path: Path) -> None:
    async with telegram(tmp_path, TelegramDriver(mode="webhook")) as (driver, served):
        fake = driver.fake
        await until(lambda: fake.webhook is not None)
        assert fake.webhook == {"url": f"{served.base}/chat/telegram/webhook", "secret_token": driver.secret,
                                "allowed_updates": ["message", "callback_query"]}
        await driver.say("alice", "/status@opsroom_bot")  # a bot command, as a group sends it
        await driver.wait_for(lambda t: "Sys" in t, TIMEOUT)
        await driver.say("alice", "run deploy")
        text = await driver.wait_for(lambda t: "needs approval" in t, TIMEOUT)
        approval_id = int(re.search(r"#(\d+)", text).group(1))  # type: ignore[union-attr]
        await driver.click("bob", approval_id, "approve")
        await driver.wait_for(lambda t: "approved by boss" in t, TIMEOUT)
        assert fake.answered and fake.answered[-1]["text"] == "Sent to opsroom"  # the spinner stops
        assert "getUpdates" not in fake.calls


async def test_the_keyboard_markup_and_mentions(tmp_path: Path) -> None:
    async with telegram(tmp_path) as (driver, _):
        await driver.say("alice", "run deploy")
        text = await driver.wait_for(lambda t: "needs approval" in t, TIMEOUT)
        approval_id = int(re.search(r"#(\d+)", text).group(1))  # type: ignore[union-attr]
        message = driver.fake.buttons(approval_id)
        assert message["parse_mode"] == "HTML"
        row = message["reply_markup"]["inline_keyboard"][0]
        assert [b["text"] for b in row] == ["Approve", "Deny"]
        assert all(len(b["callback_data"].encode()) <= 64 for b in row)
        # bob is an approver linked on Telegram: a direct mention, never @all.
        assert '<a href="tg://user?id=1002">bob</a>' in text


async def test_relayed_markup_shows_as_text(tmp_path: Path) -> None:
    async with telegram(tmp_path) as (driver, served):
        web = served.rt.rooms.adapters["web"]  # type: ignore[union-attr]
        actor = await access.actor_by_name(served.rt, name="lead", door="web")
        await web.said("ops", actor, '<a href="https://evil.example">click</a> <b>x</b> @all')  # type: ignore[attr-defined]
        text = await driver.wait_for(lambda t: "click" in t, TIMEOUT)
        assert "<a href" not in text and "<b>" not in text and "&lt;b&gt;" in text


async def test_a_429_is_retried_after_retry_after_in_order_once(tmp_path: Path) -> None:
    async with telegram(tmp_path) as (driver, served):
        driver.fake.rate_limit, driver.fake.retry_after = (1, 1.0), 1
        assert served.rt.rooms is not None
        for i in range(3):
            served.rt.rooms.post_nowait(Message(room="ops", text=f"limited {i}", kind="notice"))
        await driver.wait_for(lambda t: "limited 2" in t, TIMEOUT)
        assert [t for t in driver.received() if "limited" in t] == ["limited 0", "limited 1", "limited 2"]
        assert served.rt.rooms.queues["telegram"].stats.retried >= 1


async def test_the_offset_confirms_what_was_read(tmp_path: Path) -> None:
    async with telegram(tmp_path) as (driver, served):
        await driver.say("alice", "status")
        await driver.wait_for(lambda t: "Sys" in t, TIMEOUT)
        await driver.say("alice", "executions")  # the next poll carries the offset past "status"
        await driver.wait_for(lambda t: "xecutions" in t, TIMEOUT)
        await until(lambda: all(u["update_id"] >= adapter(served)._offset for u in driver.fake.updates))
        assert adapter(served).is_connected()


class WrongTokenDriver(TelegramDriver):
    def platform_item(self) -> dict[str, Any]:
        return {**super().platform_item(), "token": "5550001234:AAWrongTokenThatMustNeverBeLogged"}


async def test_a_wrong_token_is_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    async with telegram(tmp_path, WrongTokenDriver()) as (driver, served):
        await until(lambda: driver.fake.unauthorized >= 1)
        assert not adapter(served).is_connected()
        served.rt.rooms.post_nowait(Message(room="ops", text="never sent", kind="notice"))  # type: ignore[union-attr]
        await served.settle()
    out = capsys.readouterr()
    logged = caplog.text + out.out + out.err
    assert "Bot API refused" in logged and "telegram refused the message" in logged  # the log was captured
    assert "AAWrongTokenThatMustNeverBeLogged" not in logged


async def test_webhook_mode_delivers_what_was_queued_after_the_api_returns(tmp_path: Path) -> None:
    async with telegram(tmp_path, TelegramDriver(mode="webhook")) as (driver, served):
        await until(lambda: driver.fake.webhook is not None)
        assert served.rt.rooms is not None
        await driver.server_down()
        for i in range(3):
            served.rt.rooms.post_nowait(Message(room="ops", text=f"while away {i}", kind="notice"))
        await until(lambda: not adapter(served).is_connected())
        await driver.server_up()
        await driver.wait_for(lambda t: "while away 2" in t, 60)
        assert [t for t in driver.received() if "while away" in t] == [f"while away {i}" for i in range(3)]
        await until(adapter(served).is_connected)
        await driver.say("alice", "status")  # the webhook still works
        await driver.wait_for(lambda t: "Sys" in t, TIMEOUT)
