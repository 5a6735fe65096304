"""The contract every chat platform adapter implements (web, slack, irc, ...)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Person:
    """Someone in a room; `user` is the opsroom user name they are mapped to (None: unknown)."""

    platform_id: str
    display_name: str
    user: str | None = None


@dataclass(frozen=True)
class Message:
    room: str
    text: str
    author: Person | None = None  # None: the bot
    id: int | None = None
    kind: str = "person"  # person | bot | notice
    reply_to: int | None = None
    extra: dict[str, object] = field(default_factory=dict, compare=False)


MessageHandler = Callable[[Message], Awaitable[None]]


class ChatAdapter(ABC):
    """One chat platform. The hub calls send(); the adapter calls the handler for what people say."""

    platform: str = "abstract"

    @abstractmethod
    async def start(self, on_message: MessageHandler, on_presence: Callable[[str, Person, bool], Awaitable[None]]
                    ) -> None:
        """Connect and begin delivering messages and joins/leaves."""

    @abstractmethod
    async def stop(self) -> None:
        """Disconnect; pending sends may be dropped."""

    @abstractmethod
    async def send(self, message: Message) -> None:
        """Deliver a bot message (announcement or reply) to its room."""

    @abstractmethod
    async def identify(self, platform_id: str) -> Person:
        """Who is this platform user (display name, mapped opsroom user)?"""

    @abstractmethod
    async def presence(self, room: str) -> list[Person]:
        """Who is in the room now."""
