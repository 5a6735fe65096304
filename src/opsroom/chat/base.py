"""The contract every chat platform adapter implements: the web room, the fake and the seven
platforms all come in and go out through this ABC and nothing else.

An adapter knows its platform's wire (sockets, signatures, formatting); the hub knows rooms.
The adapter hands the hub what people said and clicked (`AdapterSink`), already checked for
the platform's signature; the hub hands the adapter one `Outgoing` at a time through that
adapter's own send queue (chat/sendqueue.py), so a slow platform only ever waits for itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict

Formatting = Literal["plain", "markdown", "mrkdwn", "html", "irc"]


@dataclass(frozen=True)
class Capabilities:
    """What a platform can show and how fast it may be written to."""

    buttons: bool = False  # Approve/Deny on approval requests
    threads: bool = False
    edits: bool = False
    direct_messages: bool = False
    formatting: Formatting = "plain"
    max_chars: int = 4000  # longer text is cut, with a link to the web UI
    # Sustained messages per second the platform accepts, and the burst above it. None: the
    # adapter's deliver() never blocks (the web room, the fake), so it is called in line.
    rate_per_s: float | None = 1.0
    burst: int = 3
    queue_size: int = 1000  # sends held while the platform is slow or away; the rest are counted


@dataclass(frozen=True)
class Binding:
    """One channel on one platform that a room is bound to: `slack:#ops`, `irc:#ops`,
    `matrix:!abc:example.org` (everything after the first colon is the channel)."""

    platform: str
    channel: str

    @classmethod
    def parse(cls, text: str) -> Binding:
        platform, sep, channel = text.partition(":")
        if not sep or not platform or not channel.strip():
            raise ValueError(f"{text!r} is not PLATFORM:CHANNEL")
        return cls(platform.strip(), channel.strip())

    def __str__(self) -> str:
        return f"{self.platform}:{self.channel}"


@dataclass(frozen=True)
class Person:
    """A platform account. `user` is the opsroom user it acts as: set by the hub from the
    account links, or by an adapter whose own login is an opsroom login (web, fake)."""

    platform_id: str  # stable account id on the platform (Slack U123, @bot:example.org, nick!user@host)
    display_name: str
    user: str | None = None
    is_bot: bool = False


@dataclass(frozen=True)
class Message:
    """A line in a room as the hub keeps it."""

    room: str
    text: str
    author: Person | None = None  # None: the bot
    id: int | None = None
    kind: str = "person"  # person | bot | notice | output
    reply_to: int | None = None
    extra: dict[str, object] = field(default_factory=dict, compare=False)
    origin: Binding | None = None  # where a person's line was said; never sent back there


@dataclass(frozen=True)
class Incoming:
    """What a person said on a platform, as the adapter hands it to the hub."""

    channel: str
    text: str
    author: Person
    # The platform's own id for this delivery (Slack event_id, Telegram update_id, Matrix
    # event_id): a platform that delivers twice is answered once.
    delivery_id: str | None = None


@dataclass(frozen=True)
class Click:
    """An Approve/Deny button pressed on a platform, its signature already verified."""

    channel: str
    author: Person
    approval_id: int
    decision: Literal["approve", "deny"]
    delivery_id: str | None = None


@dataclass(frozen=True)
class Mention:
    """Someone to mention directly (an approver asked by a request): never @channel."""

    account_id: str
    display_name: str


@dataclass(frozen=True)
class Outgoing:
    """One message for one bound channel. `text` is masked but raw: the adapter renders it for
    its platform with chat/safe.py (neutralised, escaped, cut) and adds what it alone may add
    (mentions, buttons)."""

    room: str
    channel: str
    text: str
    kind: str = "bot"  # bot | notice | person (relayed from another binding) | output
    author: str | None = None  # for a relayed line: who said it; None for the bot
    via: str | None = None  # for a relayed line: the platform it was said on
    message_id: int | None = None
    at: float | None = None
    reply_to: int | None = None
    approval_id: int | None = None  # an approval request: platforms with buttons draw Approve/Deny
    mentions: tuple[Mention, ...] = ()
    link: str | None = None  # the web UI page with the whole text, for a cut message
    execution_id: int | None = None  # kind output: which execution's stream


class AdapterSink(Protocol):
    """The hub, as an adapter sees it."""

    async def message(self, adapter: ChatAdapter, incoming: Incoming) -> None: ...

    async def presence(self, adapter: ChatAdapter, channel: str, person: Person, joined: bool) -> None: ...

    async def click(self, adapter: ChatAdapter, click: Click) -> None: ...

    async def refused(self, adapter: ChatAdapter, *, what: str, detail: str) -> None:
        """A request whose platform signature failed (a forged button click): audited, not acted on."""
        ...


class DeliveryFailed(Exception):
    """deliver() could not send. transient: the send queue retries with backoff (the server
    away, a 5xx); not transient: the message is dropped and logged (a channel that is gone)."""

    def __init__(self, message: str, *, transient: bool = True, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.retry_after = retry_after  # the platform said when (HTTP 429 Retry-After)


class PlatformConfig(BaseModel):
    """An adapter's settings from the catalog's `platforms:` item; each adapter subclasses it."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ChatAdapter(ABC):
    """One chat platform. Subclasses set `platform` and `capabilities` and implement the rest.

    The hub calls listen() on every server (what the platform POSTs), start() where this server
    holds the connection, deliver() from the adapter's own send queue (one at a time, in order,
    retried on DeliveryFailed), stream_output() for live runbook output, stop() when the
    connection is lost or the server stops, and close() when it stops.
    The adapter calls the sink for what people say, join and click, and never for its own
    messages or another bot's.
    """

    platform: ClassVar[str] = "abstract"
    capabilities: Capabilities = Capabilities()
    Config: ClassVar[type[PlatformConfig]] = PlatformConfig
    # Bound to every room, channel = room name, and trusted to say which opsroom user a person
    # is (its login is opsroom's own): the web room, and the fake in tests.
    implicit: bool = False
    trusted_identity: bool = False
    # Shows the whole room, people's own lines included, to many viewers (the web room): a
    # line said there is still sent there. Every other platform already shows what was said.
    mirrors: bool = False

    name: str = ""  # the catalog's platform name, which bindings use (defaults to `platform`)

    @abstractmethod
    async def start(self, sink: AdapterSink, channels: list[str]) -> None:
        """Connect, join the bound channels and begin handing the sink what people do.
        Returns once connecting has begun; reconnecting with backoff is the adapter's job."""

    @abstractmethod
    async def stop(self) -> None:
        """Disconnect; sends not yet delivered may be dropped. An adapter with an inbound side
        (listen) keeps it: this server may still be sent what the platform POSTs."""

    async def listen(self, sink: AdapterSink, channels: list[str]) -> None:  # noqa: B027 - optional
        """The inbound side alone: take what the platform POSTs to routes() (verify it, parse
        it, hand it to the sink), without connecting or sending. In a cluster every server
        listens, whichever holds the connection: a load balancer sends the platform's requests to
        any of them. start() begins with it; close() ends it. Idempotent. The default (no routes,
        nothing to take): nothing."""

    async def close(self) -> None:  # noqa: B027 - optional
        """End the inbound side (the server stops); after stop()."""

    @abstractmethod
    async def deliver(self, out: Outgoing) -> None:
        """Send one message to the platform, rendered for it. Raise DeliveryFailed to retry or drop."""

    async def stream_output(self, out: Outgoing) -> None:  # noqa: B027 - optional capability
        """Live runbook output (kind output). Platforms without a live view show the final
        message instead, so the default sends nothing."""

    @abstractmethod
    async def identify(self, account_id: str) -> Person:
        """Who is this platform account (display name, whether it is a bot)?"""

    @abstractmethod
    async def presence(self, channel: str) -> list[Person]:
        """Who is in the channel now, as far as the platform says."""

    @property
    def streams(self) -> bool:
        """Whether this adapter shows live output (it overrides stream_output)."""
        return type(self).stream_output is not ChatAdapter.stream_output

    def routes(self) -> list[Any]:
        """Starlette routes for what the platform POSTs to opsroom (button clicks, webhooks),
        mounted by the web app at /chat/NAME/. Each handler verifies the platform's signature.
        They answer once listen() ran, on every server, not only the connection's holder."""
        return []

    def is_connected(self) -> bool:
        """Whether the platform is reachable now (for /metrics and the conformance suite)."""
        return True

    def status(self) -> dict[str, Any]:
        """Figures for /metrics beside the send queue's own."""
        return {}


async def ended(*tasks: asyncio.Task[Any] | None, session: Any = None) -> None:
    """Cancel an adapter's tasks and wait for them, then close its HTTP session (stop, close)."""
    for task in tasks:
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if session is not None:
        await session.close()
