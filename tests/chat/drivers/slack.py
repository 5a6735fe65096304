"""Slack through its local fake: people post with their own tokens over the Web API, opsroom
listens on Socket Mode; clicks come over the socket (or, forged, at the request URL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opsroom.chat.platforms.slack.fake_server import FakeSlack
from tests.chat.driver import Driver


class SlackDriver(Driver):
    name = "slack"
    buttons = True

    def __init__(self) -> None:
        self.fake = FakeSlack()
        self.base = ""  # opsroom's own URL, once attached

    async def start(self, tmp: Path) -> None:
        await self.fake.start()

    async def stop(self) -> None:
        await self.fake.stop()

    async def attach(self, served: Any) -> None:
        self.base = served.base
        # Socket Mode: nothing reaches opsroom before the adapter said hello.
        await self.fake.wait(lambda: self.fake.sockets, timeout=15)

    def platform_item(self) -> dict[str, Any]:
        return {"name": self.name, "type": "slack", "app_token": self.fake.app_token,
                "bot_token": self.fake.bot_token, "signing_secret": self.fake.signing_secret,
                "api_url": self.fake.api_url}

    @property
    def channel(self) -> str:
        return "C0OPS"

    def account_id(self, person: str) -> str:
        return self.fake.user(person).id

    async def say(self, person: str, text: str) -> None:
        await self.fake.say(person, text, self.channel)

    async def bot_says(self, text: str) -> None:
        await self.fake.say("otherbot", text, self.channel)

    def received(self) -> list[str]:
        return [str(p["text"]) for p in self.fake.bot_posts(self.channel)]

    async def click(self, person: str, approval_id: int, decision: str, *, forge: bool = False) -> None:
        if forge:
            # Someone who found the request URL but has no signing secret.
            status = await self.fake.click_http(f"{self.base}/chat/{self.name}/actions", person, approval_id,
                                                decision, forge=True, channel=self.channel)
            assert status == 401, status
            return
        await self.fake.click_socket(person, approval_id, decision, self.channel)

    async def server_down(self) -> None:
        await self.fake.stop()

    async def server_up(self) -> None:
        await self.fake.start()

    async def redeliver(self) -> None:
        await self.fake.redeliver()


DRIVER = SlackDriver
