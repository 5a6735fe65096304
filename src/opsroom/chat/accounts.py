"""Commands about one's own chat account (placeholder until linking lands)."""

from __future__ import annotations

from opsroom.chat.base import Person
from opsroom.runtime import Runtime


async def handle(rt: Runtime, *, platform: str, person: Person, text: str) -> str | None:
    """Answer `whoami` and `link CODE`; None for every other command."""
    return None


def redact(text: str) -> str:
    """Hide a one-time link code in the stored line."""
    return text


def unlinked_reply(platform: str) -> str:
    return (f"I don't know who you are on {platform}; get a code in the web UI (or from an admin: "
            "`opsroom user link NAME`) and type `link CODE` here")
