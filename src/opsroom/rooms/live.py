"""The rooms as this server runs them, for the service layer and the chat commands to read.

The room hub (chat/hub.py) keeps it up to date; services and commands read it here instead of
reaching into the hub, which calls them (a line said in a room becomes a command, a service
call): so the hub is never met twice on the way down from a door.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from opsroom.access.identity import Actor
from opsroom.chat.base import Person

# A line typed in the web room, by `actor`, into `room`: handed to the hub as every platform's lines are.
Inlet = Callable[[str, Actor, str], Awaitable[None]]


@dataclass(frozen=True)
class Platform:
    """A chat adapter of this server, as the service layer needs to know it."""

    name: str
    implicit: bool  # bound to every room, no channel to join (the web room)
    trusted_identity: bool  # its login is an opsroom login: nothing to link


@dataclass
class LiveRooms:
    platforms: dict[str, Platform] = field(default_factory=dict)
    # room -> (opsroom user or platform id) -> the person present there
    people: defaultdict[str, dict[str, Person]] = field(default_factory=lambda: defaultdict(dict))
    # The web room's way in: None where this process runs no rooms (a CLI process).
    web: Inlet | None = None
