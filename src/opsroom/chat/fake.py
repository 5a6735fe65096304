"""An in-memory adapter for tests: drive the whole bot with say(), read what it sent."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable

from opsroom.chat.base import ChatAdapter, Message, MessageHandler, Person


class FakeAdapter(ChatAdapter):
    platform = "fake"

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.people: dict[str, Person] = {}
        self.present: dict[str, set[str]] = defaultdict(set)
        self._on_message: MessageHandler | None = None
        self._on_presence: Callable[[str, Person, bool], Awaitable[None]] | None = None
        self._new = asyncio.Event()

    async def start(self, on_message: MessageHandler,
                    on_presence: Callable[[str, Person, bool], Awaitable[None]]) -> None:
        self._on_message, self._on_presence = on_message, on_presence

    async def stop(self) -> None:
        self._on_message = None

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        self._new.set()

    async def identify(self, platform_id: str) -> Person:
        return self.people.get(platform_id, Person(platform_id, platform_id, None))

    async def presence(self, room: str) -> list[Person]:
        return [self.people[p] for p in sorted(self.present[room]) if p in self.people]

    def add_person(self, user: str) -> Person:
        person = Person(platform_id=f"fake:{user}", display_name=user, user=user)
        self.people[person.platform_id] = person
        return person

    async def join(self, room: str, user: str) -> None:
        person = self.add_person(user)
        self.present[room].add(person.platform_id)
        assert self._on_presence is not None, "start() the adapter first"
        await self._on_presence(room, person, True)

    async def say(self, room: str, user: str, text: str) -> None:
        person = self.people.get(f"fake:{user}") or self.add_person(user)
        assert self._on_message is not None, "start() the adapter first"
        await self._on_message(Message(room=room, text=text, author=person))

    async def wait_for(self, predicate: Callable[[Message], bool], timeout: float = 10.0) -> Message:
        async with asyncio.timeout(timeout):
            while True:
                for msg in self.sent:
                    if predicate(msg):
                        return msg
                self._new.clear()
                await self._new.wait()
