"""Microsoft Teams against the local Bot Framework fake: people post signed Activities to
opsroom's messaging endpoint; the bot's replies are what the fake's Bot Connector recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opsroom.chat.platforms.teams.fake_server import TeamsFake
from tests.chat.driver import Driver

CONVERSATION = "19:ops-fake-channel@thread.tacv2"


class TeamsDriver(Driver):
    name = "teams"
    buttons = True
    streams = False

    def __init__(self) -> None:
        self.fake = TeamsFake()

    async def start(self, tmp: Path) -> None:
        await self.fake.start()

    async def stop(self) -> None:
        await self.fake.close()

    async def attach(self, served: Any) -> None:
        self.fake.endpoint = f"{served.base}/chat/{self.name}/messages"

    def platform_item(self) -> dict[str, Any]:
        return {"name": self.name, "type": "teams", "app_id": self.fake.app_id,
                "app_password": self.fake.app_password, "openid_url": self.fake.openid_url,
                "token_url": self.fake.token_url, "service_url": self.fake.service_url}

    @property
    def channel(self) -> str:
        return CONVERSATION

    def account_id(self, person: str) -> str:
        return f"29:1{person}-fake-aad"

    async def say(self, person: str, text: str) -> None:
        activity = self.fake.activity(conversation=CONVERSATION, user_id=self.account_id(person), name=person,
                                      text=text, mention_bot=True)
        status = await self.fake.post(activity)
        assert status == 200, status

    async def bot_says(self, text: str) -> None:
        activity = self.fake.activity(conversation=CONVERSATION, user_id="28:other-bot-app", name="otherbot",
                                      text=text, role="bot", mention_bot=True)
        assert await self.fake.post(activity) == 200

    def received(self) -> list[str]:
        return [str(a.get("text", "")) for a in self.fake.replies_in(CONVERSATION)]

    def mentions(self, text: str, person: str) -> bool:
        """Teams mentions are `<at>name</at>` in the text plus an entity naming the account."""
        for activity in self.fake.replies_in(CONVERSATION):
            if activity.get("text") == text:
                for entity in activity.get("entities") or ():
                    if entity.get("type") == "mention" and entity.get("text") in text \
                            and entity.get("mentioned", {}).get("id") == self.account_id(person):
                        return True
        return False

    async def click(self, person: str, approval_id: int, decision: str, *, forge: bool = False) -> None:
        card = next(a for a in reversed(self.fake.replies_in(CONVERSATION)) if a.get("attachments"))
        actions = card["attachments"][0]["content"]["actions"]
        data = next(a["data"] for a in actions if a["data"]["decision"] == decision)
        assert data["approval_id"] == approval_id, (data, approval_id)
        activity = self.fake.activity(conversation=CONVERSATION, user_id=self.account_id(person), name=person,
                                      value=data)
        status = await self.fake.post(activity, how="wrong_key" if forge else "valid")
        assert status == (401 if forge else 200), status

    async def server_down(self) -> None:
        await self.fake.stop()

    async def server_up(self) -> None:
        await self.fake.start()

    async def redeliver(self) -> None:
        assert await self.fake.redeliver() == 200


DRIVER = TeamsDriver
