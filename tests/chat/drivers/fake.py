"""The fake adapter as a platform: catalog-configured, people linked by code, rate-limited."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opsroom.chat.fake import FakeAdapter
from opsroom.chat.safe import render
from tests.chat.driver import Driver


class FakeDriver(Driver):
    name = "fake"
    buttons = True
    streams = True

    def __init__(self) -> None:
        self._adapter: FakeAdapter | None = None
        self._last: tuple[str, str, str] | None = None

    async def start(self, tmp: Path) -> None:
        return None  # in memory: the adapter is its own platform

    async def stop(self) -> None:
        return None

    async def attach(self, served: Any) -> None:
        adapter = served.rt.rooms.adapters[self.name]
        assert isinstance(adapter, FakeAdapter)
        self._adapter = adapter

    @property
    def adapter(self) -> FakeAdapter:
        assert self._adapter is not None, "attach() first"
        return self._adapter

    def platform_item(self) -> dict[str, Any]:
        return {"name": self.name, "type": "fake", "rate_per_s": 20, "burst": 3}

    @property
    def channel(self) -> str:
        return "C-ops"

    def account_id(self, person: str) -> str:
        return f"fake:{person}"

    async def say(self, person: str, text: str) -> None:
        self._last = (person, text, f"d{len(self.adapter.sent)}-{person}-{hash(text)}")
        await self.adapter.say(self.channel, person, text, delivery_id=self._last[2])

    async def bot_says(self, text: str) -> None:
        await self.adapter.say(self.channel, "otherbot", text, bot=True)

    def received(self) -> list[str]:
        return [render(o, self.adapter.capabilities, mention=lambda m: f"<@{m.account_id}>")
                for o in self.adapter.sent if o.channel == self.channel]

    def streamed(self) -> list[str]:
        return [o.text for o in self.adapter.streamed if o.channel == self.channel]

    async def click(self, person: str, approval_id: int, decision: str, *, forge: bool = False) -> None:
        if forge:
            # The fake has no signature to get wrong: a forged click is one the adapter refuses.
            await self.adapter.sink.refused(self.adapter, what="button", detail="forged by the test")
            return
        await self.adapter.click(self.channel, person, approval_id, decision)

    async def server_down(self) -> None:
        self.adapter.down = True

    async def server_up(self) -> None:
        self.adapter.down = False

    async def redeliver(self) -> None:
        assert self._last is not None
        person, text, delivery = self._last
        await self.adapter.say(self.channel, person, text, delivery_id=delivery)


DRIVER = FakeDriver
