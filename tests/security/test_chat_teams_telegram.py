"""The attacker's tests for Teams and Telegram: forged Bot Framework tokens, a webhook without
its secret, tampered button data, oversized bodies, replayed deliveries, the bot's own lines.
A whole opsroom runs in-process against each platform's local fake."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from opsroom.audit.models import AuditRecordRow as AuditRow
from opsroom.chat.platforms.teams.fake_server import FORGERIES
from opsroom.chat.platforms.telegram.api import button_key, callback_data
from tests.chat.driver import Driver
from tests.chat.drivers.teams import CONVERSATION, TeamsDriver
from tests.chat.drivers.telegram import TelegramDriver
from tests.chat.harness import Served, serve
from tests.chat.harness import request_approval as request

TIMEOUT = 20.0
BIG = 300 * 1024  # over the adapters' 256 KiB, under the app's 1 MiB: the adapter refuses it


@asynccontextmanager
async def booted(tmp: Path, driver: Driver) -> AsyncIterator[Served]:
    await driver.start(tmp / "platform")
    try:
        async with serve(tmp, driver) as served:
            await driver.attach(served)  # type: ignore[attr-defined]
            yield served
    finally:
        await driver.stop()


async def refusals(served: Served, platform: str) -> list[dict[str, Any]]:
    async with served.rt.read() as s:
        rows = (await s.execute(select(AuditRow).where(AuditRow.action == "chat.refused",
                                                       AuditRow.target == f"platform:{platform}"))).scalars()
        return [dict(r.details or {}) for r in rows]


async def barrier(driver: Driver) -> None:
    """A later command's reply shows everything sent before it was handled."""
    before = sum("xecutions" in t for t in driver.received())
    await driver.say("alice", "executions")
    await driver.wait_for(lambda _: sum("xecutions" in t for t in driver.received()) > before, TIMEOUT)


class TestTeamsForgedTokens:
    @pytest.mark.parametrize("how", FORGERIES)
    async def test_a_forged_token_is_refused_and_audited(self, tmp_path: Path, how: str) -> None:
        driver = TeamsDriver()
        async with booted(tmp_path, driver) as served:
            fake = driver.fake
            said = fake.activity(conversation=CONVERSATION, user_id=driver.account_id("alice"), name="alice",
                                 text="status", mention_bot=True)
            assert await fake.post(said, how=how) == 401
            approval_id = await request(driver)
            data = {"opsroom": "approval", "approval_id": approval_id, "decision": "approve"}
            click = fake.activity(conversation=CONVERSATION, user_id=driver.account_id("bob"), name="bob", value=data)
            assert await fake.post(click, how=how) == 401
            await barrier(driver)
            assert not any("Sys" in t or "approved by" in t for t in driver.received())
            found = await refusals(served, "teams")
            assert [d["what"] for d in found] == ["activity", "button"], found

    async def test_card_data_that_is_not_ours_is_refused_and_a_click_decides_only_what_it_may(
            self, tmp_path: Path) -> None:
        driver = TeamsDriver()
        async with booted(tmp_path, driver) as served:
            fake = driver.fake
            approval_id = await request(driver)
            for value in ({"opsroom": "approval", "approval_id": str(approval_id), "decision": "approve"},
                          {"opsroom": "approval", "approval_id": approval_id, "decision": "approve-all"},
                          {"approval_id": approval_id, "decision": "approve"}):
                click = fake.activity(conversation=CONVERSATION, user_id=driver.account_id("bob"), name="bob",
                                      value=value)
                assert await fake.post(click) == 200  # authentic, so accepted; then refused as data
            # Authentic clicks by people who may not decide: the requester, an unlinked account.
            await driver.click("alice", approval_id, "approve")
            await driver.click("carol", approval_id, "approve")
            await driver.wait_for(lambda t: "carol" in t and "link" in t, TIMEOUT)
            await barrier(driver)
            assert not any("approved by" in t for t in driver.received())
            assert len(await refusals(served, "teams")) == 3

    async def test_oversized_replayed_and_own_activities(self, tmp_path: Path) -> None:
        driver = TeamsDriver()
        async with booted(tmp_path, driver):
            fake = driver.fake
            big = fake.activity(conversation=CONVERSATION, user_id=driver.account_id("alice"), name="alice",
                                text="status " + "x" * BIG, mention_bot=True)
            assert await fake.post(big, raw=json.dumps(big).encode()) == 413
            own = fake.activity(conversation=CONVERSATION, user_id=f"28:{fake.app_id}", name="opsroom",
                                text="status", mention_bot=True)
            assert await fake.post(own) == 200
            await driver.say("alice", "executions")
            await driver.wait_for(lambda t: "xecutions" in t, TIMEOUT)
            await fake.redeliver()  # the channel's retry of the same Activity id
            await fake.redeliver()
            await barrier(driver)
            assert not any("Sys" in t for t in driver.received())  # neither the big one nor our own
            assert sum("xecutions" in t for t in driver.received()) == 2  # one answer + the barrier's


class TestTelegramWebhookSecret:
    async def test_an_update_without_the_secret_is_refused_and_audited(self, tmp_path: Path) -> None:
        driver = TelegramDriver(mode="webhook")
        async with booted(tmp_path, driver) as served:
            fake = driver.fake
            await _until_webhook(driver)
            assert await fake.say("alice", "status", header=None) == 401
            assert await fake.say("alice", "status", header="wrong-" + driver.secret) == 401
            assert await fake.say("alice", "status", header=driver.secret[:-1]) == 401
            approval_id = await request(driver)
            message = fake.buttons(approval_id)
            data = message["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
            assert await fake.press("bob", message, data, header=None) == 401
            await barrier(driver)
            assert not any("Sys" in t or "approved by" in t for t in driver.received())
            found = await refusals(served, "telegram")
            assert [d["what"] for d in found] == ["webhook"] * 3 + ["button"], found
            assert all(driver.secret not in json.dumps(d) for d in found)

    async def test_oversized_garbage_and_replayed_updates(self, tmp_path: Path) -> None:
        driver = TelegramDriver(mode="webhook")
        async with booted(tmp_path, driver) as served:
            fake = driver.fake
            await _until_webhook(driver)
            assert await fake.say("alice", "status " + "x" * BIG) == 413
            headers = {"X-Telegram-Bot-Api-Secret-Token": driver.secret, "Content-Type": "application/json"}
            async with aiohttp.ClientSession() as http:
                for body in (b"not json", b"[]", b'{"message": {}}'):
                    async with http.post(f"{served.base}/chat/telegram/webhook", data=body, headers=headers) as r:
                        assert r.status == 400
            await driver.say("alice", "executions")
            await driver.wait_for(lambda t: "xecutions" in t, TIMEOUT)
            assert await fake.redeliver() == 200  # Telegram retries the same update_id
            assert await fake.redeliver() == 200
            own = fake.message_update("alice", "status")
            own["message"]["from"] = fake.me  # our own line, as a group shows it
            assert await fake.push(own) == 200
            await barrier(driver)
            assert not any("Sys" in t for t in driver.received())
            assert sum("xecutions" in t for t in driver.received()) == 2


async def _until_webhook(driver: TelegramDriver) -> None:
    async with asyncio.timeout(TIMEOUT):
        while driver.fake.webhook is None:
            await asyncio.sleep(0.02)


class TestTelegramCallbackTampering:
    async def test_tampered_or_foreign_data_is_refused_and_clicks_decide_only_what_they_may(
            self, tmp_path: Path) -> None:
        driver = TelegramDriver()  # long polling: the update is authentic, the data may not be
        async with booted(tmp_path, driver) as served:
            fake = driver.fake
            approval_id = await request(driver)
            message = fake.buttons(approval_id)
            real = message["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
            key = button_key(fake.token)
            tampered = [
                real.rsplit(":", 1)[0] + ":" + "A" * 16,  # the MAC changed
                real.replace(f":{approval_id}:", f":{approval_id + 1}:"),  # another request, old MAC
                callback_data(key, "approve", approval_id, "-1009999999999"),  # a button from another chat
                f"approve:{approval_id}",  # not our format at all
                "x" * 64,
            ]
            for data in tampered:
                await fake.press("bob", message, data)
            # Authentic buttons pressed by people who may not decide.
            await fake.press("alice", message, real)
            await fake.press("carol", message, real)
            await driver.wait_for(lambda t: "carol" in t and "link" in t, TIMEOUT)
            await barrier(driver)
            assert not any("approved by" in t for t in driver.received())
            assert len(await refusals(served, "telegram")) == len(tampered)
            assert len(fake.answered) == len(tampered) + 2  # every press is answered
