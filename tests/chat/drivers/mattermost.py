"""Mattermost through its local fake: people post over REST with their own tokens, opsroom
listens on the WebSocket API; a click is the server's POST to the button's integration URL."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from opsroom.chat.platforms.mattermost.fake_server import FakeMattermost
from tests.chat.driver import Driver

ACTION_SECRET = "mattermost-action-secret-for-tests"


class MattermostDriver(Driver):
    name = "mattermost"
    buttons = True

    def __init__(self) -> None:
        self.fake = FakeMattermost()

    async def start(self, tmp: Path) -> None:
        await self.fake.start()

    async def stop(self) -> None:
        await self.fake.stop()

    async def attach(self, served: Any) -> None:
        await self.fake.wait(lambda: any(u.id == self.fake.bot.id for _, u in self.fake.sockets), timeout=15)

    def platform_item(self) -> dict[str, Any]:
        return {"name": self.name, "type": "mattermost", "url": self.fake.url, "token": self.fake.bot_token,
                "action_secret": ACTION_SECRET}

    @property
    def channel(self) -> str:
        return self.fake.ops

    def account_id(self, person: str) -> str:
        return self.fake.user(person).id

    def mentions(self, text: str, person: str) -> bool:
        # Mattermost mentions by username, not by id.
        return re.search(rf"(?<![\w.-])@{re.escape(self.fake.user(person).username)}(?![\w-])", text) is not None

    async def say(self, person: str, text: str) -> None:
        await self.fake.say(person, text, self.channel)

    async def bot_says(self, text: str) -> None:
        await self.fake.say("otherbot", text, self.channel)

    def received(self) -> list[str]:
        return [str(p["message"]) for p in self.fake.bot_posts(self.channel)]

    async def click(self, person: str, approval_id: int, decision: str, *, forge: bool = False) -> None:
        if forge:
            # An attacker who knows the URL and the request number, not the action secret.
            _, action = self.fake.action(approval_id, decision)
            context = {**action["integration"]["context"], "sig": "0" * 64}
            status = await self.fake.click(person, approval_id, decision, context=context)
            assert status == 403, status
            return
        status = await self.fake.click(person, approval_id, decision)
        assert status == 200, status

    async def server_down(self) -> None:
        await self.fake.stop()

    async def server_up(self) -> None:
        await self.fake.start()

    async def redeliver(self) -> None:
        await self.fake.redeliver()


DRIVER = MattermostDriver
