"""What the conformance suite needs from a platform, one Driver per adapter.

A driver starts the platform's server (the real one where it runs here: Synapse, ngircd,
prosody; else a local fake that speaks the platform's documented wire format), says which
catalog `platforms:` item and channel opsroom gets, and acts as the people on the platform
through a bare client of its own: never through opsroom's code.

Drivers live in tests/chat/drivers/<name>.py, each exporting `DRIVER` (the class); the
conformance suite finds them there.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Driver(ABC):
    name: str  # the catalog's platform name and adapter name (slack, irc, ...)
    buttons: bool = False  # approval requests carry Approve/Deny the driver can click
    streams: bool = False  # the adapter shows live runbook output
    # People the suite uses; each is an account on the platform: `alice` links to opsroom user
    # `you` (operator), `bob` to `boss` (approver), `carol` stays unlinked.
    people = ("alice", "bob", "carol")

    @abstractmethod
    async def start(self, tmp: Path) -> None:
        """Start the platform server (or fake) and the bare clients of the people."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop everything start() started."""

    async def attach(self, served: Any) -> None:
        """Called once opsroom is up (served.rt, served.base): for drivers that need it."""

    def mentions(self, text: str, person: str) -> bool:
        """Whether a received text mentions the person directly, in the platform's markup."""
        return self.account_id(person) in text

    def streamed(self) -> list[str]:
        """Live output lines the platform showed, for adapters that stream."""
        return []

    @abstractmethod
    def platform_item(self) -> dict[str, Any]:
        """The catalog's `platforms:` item for opsroom's adapter (name == self.name)."""

    @property
    @abstractmethod
    def channel(self) -> str:
        """The channel room `ops` is bound to (what follows `name:` in `bind`)."""

    @abstractmethod
    def account_id(self, person: str) -> str:
        """The platform account id opsroom's adapter reports for this person (for linking)."""

    @abstractmethod
    async def say(self, person: str, text: str) -> None:
        """The person says text in the bound channel."""

    @abstractmethod
    async def bot_says(self, text: str) -> None:
        """Another bot account (not opsroom) says text in the channel."""

    @abstractmethod
    def received(self) -> list[str]:
        """Every text opsroom's bot has posted in the channel so far, in order, as the
        platform shows it (rendered: escaped, mentions in the platform's markup)."""

    async def wait_for(self, predicate: Callable[[str], bool], timeout: float = 15.0) -> str:
        """The first received text the predicate accepts; polls what the clients collected."""
        async with asyncio.timeout(timeout):
            while True:
                for text in self.received():
                    if predicate(text):
                        return text
                await asyncio.sleep(0.02)

    async def click(self, person: str, approval_id: int, decision: str, *, forge: bool = False) -> None:
        """Press Approve/Deny on the request as the person; with forge, send the click with a
        bad signature (or none), as an attacker who knows the endpoint would."""
        raise NotImplementedError(f"{self.name} has no buttons")

    @abstractmethod
    async def server_down(self) -> None:
        """Stop the platform server (or make the fake refuse connections) mid-conversation."""

    @abstractmethod
    async def server_up(self) -> None:
        """Start it again on the same address; the adapter must reconnect by itself."""

    async def redeliver(self) -> None:
        """Deliver the last thing a person said once more, with the same delivery id (Slack
        retries, Telegram update ids). Platforms that never redeliver may skip this."""
        raise NotImplementedError(f"{self.name} does not redeliver")
