"""An in-memory adapter for tests: drive the whole bot with say(), read what it sent.

By default it stands in for the web room (bound to every room, its people already opsroom
users, shown every line). With implicit/trusted/mirrors off and a rate it behaves like a
platform instead: bound by the catalog, people linked by code, rate-limited, able to go down.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

from opsroom.chat.base import (
    AdapterSink,
    Capabilities,
    ChatAdapter,
    Click,
    DeliveryFailed,
    Incoming,
    Outgoing,
    Person,
    PlatformConfig,
)


class FakeConfig(PlatformConfig):
    """A catalog-configured fake behaves as a platform: bound by `bind`, people linked by code."""

    rate_per_s: float | None = None
    burst: int = 3
    queue_size: int = 1000


class FakeAdapter(ChatAdapter):
    platform = "fake"
    Config = FakeConfig

    def __init__(self, *, name: str = "fake", implicit: bool = True, trusted: bool = True, mirrors: bool = True,
                 rate_per_s: float | None = None, burst: int = 3, queue_size: int = 1000,
                 config: FakeConfig | None = None, rt: object = None) -> None:
        if config is not None:
            implicit = trusted = mirrors = False
            rate_per_s, burst, queue_size = config.rate_per_s, config.burst, config.queue_size
        self.name = name
        self.implicit, self.trusted_identity, self.mirrors = implicit, trusted, mirrors
        self.capabilities = Capabilities(buttons=True, rate_per_s=rate_per_s, burst=burst, queue_size=queue_size)
        self.sent: list[Outgoing] = []
        self.streamed: list[Outgoing] = []
        self.people: dict[str, Person] = {}
        self.present: dict[str, set[str]] = defaultdict(set)
        self.channels: list[str] = []
        self.down = False  # deliver() fails as a platform that is away does
        self._sink: AdapterSink | None = None
        self._new = asyncio.Event()

    async def start(self, sink: AdapterSink, channels: list[str]) -> None:
        self._sink, self.channels = sink, list(channels)

    async def stop(self) -> None:
        self._sink = None

    async def deliver(self, out: Outgoing) -> None:
        if self.down:
            raise DeliveryFailed("fake platform is down", transient=True)
        self.sent.append(out)
        self._new.set()

    async def stream_output(self, out: Outgoing) -> None:
        self.streamed.append(out)
        self._new.set()

    async def identify(self, account_id: str) -> Person:
        return self.people.get(account_id, Person(account_id, account_id, None))

    async def presence(self, channel: str) -> list[Person]:
        return [self.people[p] for p in sorted(self.present[channel]) if p in self.people]

    @property
    def sink(self) -> AdapterSink:
        assert self._sink is not None, "start() the adapter first"
        return self._sink

    def add_person(self, user: str, *, bot: bool = False) -> Person:
        person = Person(platform_id=f"fake:{user}", display_name=user,
                        user=user if self.trusted_identity and not bot else None, is_bot=bot)
        self.people[person.platform_id] = person
        return person

    async def join(self, room: str, user: str) -> None:
        person = self.add_person(user)
        self.present[room].add(person.platform_id)
        await self.sink.presence(self, room, person, True)

    async def say(self, room: str, user: str, text: str, *, delivery_id: str | None = None,
                  bot: bool = False) -> None:
        person = self.people.get(f"fake:{user}") or self.add_person(user, bot=bot)
        await self.sink.message(self, Incoming(channel=room, text=text, author=person, delivery_id=delivery_id))

    async def click(self, room: str, user: str, approval_id: int, decision: str = "approve", *,
                    delivery_id: str | None = None) -> None:
        person = self.people.get(f"fake:{user}") or self.add_person(user)
        await self.sink.click(self, Click(channel=room, author=person, approval_id=approval_id,
                                          decision="approve" if decision == "approve" else "deny",
                                          delivery_id=delivery_id))

    async def wait_for(self, predicate: Callable[[Outgoing], bool], timeout: float = 10.0) -> Outgoing:
        async with asyncio.timeout(timeout):
            while True:
                for msg in self.sent:
                    if predicate(msg):
                        return msg
                self._new.clear()
                await self._new.wait()
