"""Commands about one's own chat account: `whoami`, `link CODE`, and `help` before linking.

An account that is not linked to an opsroom user has these three and nothing else: it may
find out who it is and become someone, never act. The line `link CODE` is stored and relayed
with the code masked (redact), so the room's history never holds a working code.
"""

from __future__ import annotations

import re

from opsroom.access import links
from opsroom.access import service as access
from opsroom.chat.base import Person
from opsroom.errors import OpsroomError
from opsroom.runtime import Runtime

MASK = "****"
# As the command grammar reads a line: an optional leading `!` or `/`, any case and spacing.
_PREFIX = r"^\s*(?:[!/]\s*)?"
_LINK = re.compile(_PREFIX + r"(link)\b(.*)$", re.IGNORECASE | re.DOTALL)
_WORDS = re.compile(r"[?!.\s]+$")
UNLINKED_HELP = ("you can use these until your account is linked:\n"
                 "`help` this list\n"
                 "`whoami` which opsroom user this account acts as\n"
                 "`link CODE` link this account to your opsroom user with a one-time code "
                 "(get one in the web UI, or from an admin: `opsroom user link NAME`)")


def _words(text: str) -> list[str]:
    raw = text.strip()
    if raw.startswith(("!", "/")):
        raw = raw[1:]
    return _WORDS.sub("", raw).split()


def _trusted(rt: Runtime, platform: str) -> bool:
    """Whether the platform's own login is an opsroom login (the web room): nothing to link there."""
    known = rt.live_rooms.platforms.get(platform)
    return known is not None and known.trusted_identity


async def handle(rt: Runtime, *, platform: str, person: Person, text: str) -> str | None:
    """Answer `whoami` and `link CODE` (and `help` for an unlinked person); None for every other command."""
    words = _words(text)
    if not words:
        return None
    first = words[0].lower()
    if first == "whoami" and len(words) == 1:
        return await _whoami(rt, platform, person)
    if first == "link" and _LINK.match(text):
        return await _link(rt, platform, person, words[1:])
    if first == "help" and person.user is None:
        return UNLINKED_HELP
    return None


async def _whoami(rt: Runtime, platform: str, person: Person) -> str:
    account = f"your {platform} account {person.display_name} ({person.platform_id})"
    if person.user is None:
        return f"{account} is not linked to an opsroom user; " + _how(platform)
    try:
        actor = await access.actor_by_name(rt, name=person.user, door="chat")
    except OpsroomError as exc:
        return f"{account}: {exc.message}"
    roles = ", ".join(sorted(actor.roles)) or "no roles"
    return f"{account} acts as opsroom user {actor.name} ({roles})"


async def _link(rt: Runtime, platform: str, person: Person, words: list[str]) -> str:
    if _trusted(rt, platform):
        return f"your {platform} login is your opsroom user ({person.user}): there is nothing to link here"
    if not words:
        return "missing the code: write `link CODE`; " + _how(platform)
    try:
        user = await links.redeem_link_code(rt, platform=platform, account_id=person.platform_id,
                                            display_name=person.display_name, code="".join(words))
    except OpsroomError as exc:
        return f"{person.display_name}: {exc.message}" + (f" — {exc.hint}" if exc.hint else "")
    return (f"{person.display_name}: linked; your {platform} account now acts as opsroom user {user} "
            "(`whoami` to check; remove the link on your links page in the web UI)")


def _how(platform: str) -> str:
    return ("get a code in the web UI (your links page) or from an admin (`opsroom user link NAME`) "
            f"and type `link CODE` here on {platform}")


def redact(text: str) -> str:
    """Hide a one-time link code in the stored line: `link K7MW3QXA` is kept as `link ****`."""
    m = _LINK.match(text)
    if m is None or not m.group(2).strip():
        return text
    return text[:m.end(1)] + " " + MASK


def unlinked_reply(platform: str) -> str:
    return (f"I don't know who you are on {platform}; get a code in the web UI (or from an admin: "
            "`opsroom user link NAME`) and type `link CODE` here")
