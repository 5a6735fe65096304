"""Telegram against the local Bot API fake, in long-polling mode: people's messages and button
presses are updates the adapter fetches with getUpdates; the bot's messages are what the fake's
sendMessage recorded. (Webhook mode is tested in tests/chat/test_telegram.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opsroom.chat.platforms.telegram.fake_server import PEOPLE, TelegramFake
from tests.chat.driver import Driver


class TelegramDriver(Driver):
    name = "telegram"
    buttons = True
    streams = False

    def __init__(self, *, mode: str = "polling") -> None:
        self.fake = TelegramFake()
        self.mode = mode
        self.secret = "s3cret-webhook-token-for-tests"

    async def start(self, tmp: Path) -> None:
        await self.fake.start()

    async def stop(self) -> None:
        await self.fake.close()

    async def attach(self, served: Any) -> None:
        return None  # polling needs nothing; webhook mode learns the URL from setWebhook

    def platform_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {"name": self.name, "type": "telegram", "token": self.fake.token,
                                "api_url": self.fake.api_url, "mode": self.mode, "poll_timeout": 5,
                                # the per-chat limit (a private chat), so the suite runs in seconds
                                "rate_per_s": 1.0, "burst": 3}
        if self.mode == "webhook":
            item["webhook_secret"] = self.secret
        return item

    @property
    def channel(self) -> str:
        return str(self.fake.chat["id"])

    def account_id(self, person: str) -> str:
        return str(PEOPLE[person]["id"])

    async def say(self, person: str, text: str) -> None:
        status = await self.fake.say(person, text)
        assert status in (None, 200), status

    async def bot_says(self, text: str) -> None:
        await self.fake.say("otherbot", text)

    def received(self) -> list[str]:
        return self.fake.texts()

    async def click(self, person: str, approval_id: int, decision: str, *, forge: bool = False) -> None:
        message = self.fake.buttons(approval_id)
        row = message["reply_markup"]["inline_keyboard"][0]
        data = next(b["callback_data"] for b in row if b["text"].lower().startswith(decision[:3]))
        if forge:
            # Polling: the update itself is authentic, so the forgery is in the data (a modified
            # client can send any callback_data). Webhook: the POST lacks the secret token.
            if self.mode == "webhook":
                assert await self.fake.press(person, message, data, header=None) == 401
                return
            data = data.rsplit(":", 1)[0] + ":" + "A" * 16
        status = await self.fake.press(person, message, data)
        assert status in (None, 200), status

    async def server_down(self) -> None:
        await self.fake.stop()

    async def server_up(self) -> None:
        await self.fake.start()

    async def redeliver(self) -> None:
        await self.fake.redeliver()


DRIVER = TelegramDriver
