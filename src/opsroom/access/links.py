"""Chat accounts linked to opsroom users, and the one-time codes that link them.

A platform account is only a name the platform vouches for; what it may do in opsroom is what
the linked user may do. A person proves that an account is theirs by typing, on the platform,
a code they got where they are already logged in (the web UI) or from an admin (the CLI).
Codes are single use, expire in CODE_TTL_S, and are stored as sha256 only; guessing is
throttled per account and per platform (the same counting as logins, access/throttle.py).

`linked_user` runs for every line said on a platform: answers are cached in the process and
dropped on every link change made here and on every AccessChanged (a user disabled, even by
the CLI, whose event the server relays from the outbox). A change made by another process
that sends no event is seen within CACHE_TTL_S (the CLI's unlink sends one through the outbox).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from opsroom.access.identity import SYSTEM, Actor
from opsroom.access.models import ChatLinkRow, LinkCodeRow, UserRow
from opsroom.access.names import normalise_name
from opsroom.access.secrets import token_hash
from opsroom.access.service import access_changed
from opsroom.access.throttle import LoginThrottle
from opsroom.audit import service as audit
from opsroom.errors import Conflict, Invalid, NotFound, PermissionDenied, TooManyAttempts
from opsroom.events import AccessChanged, Event
from opsroom.runtime import Runtime

CODE_TTL_S = 600.0
# No 0/O, 1/I/L: read off a screen and typed on a phone without asking which one it was.
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LEN = 8  # 31**8 ≈ 8.5e11 codes: with the throttle, guessing a live one is hopeless
CACHE_TTL_S = 5.0
CACHE_MAX = 10_000
MAX_ACCOUNT = 255  # the account_id column
HOW = "get a new code in the web UI (your links page) or from an admin (`opsroom user link NAME`)"


@dataclass(frozen=True)
class LinkInfo:
    platform: str
    account_id: str
    display_name: str
    user: str
    created_at: float


def _now(rt: Runtime) -> float:
    """The wall clock codes expire by; tests set `rt.link_clock` to move it."""
    return rt.link_clock()


def link_throttle(rt: Runtime) -> LoginThrottle:
    """Failed `link CODE` attempts: keyed by account (5 in 5 min, then growing lockouts) and by
    platform (30), so many throwaway accounts (IRC nicks cost nothing) do not multiply the budget."""
    throttle = rt.link_throttle
    if throttle is None:
        throttle = rt.link_throttle = LoginThrottle()
    return throttle


# --- the per-process cache of linked_user ------------------------------------------------

class LinkCache:
    def __init__(self, rt: Runtime) -> None:
        self.entries: dict[tuple[str, str], tuple[str | None, float]] = {}
        rt.bus.subscribe(AccessChanged, self._access_changed)

    async def _access_changed(self, ev: Event) -> None:
        self.entries.clear()  # rare; a user's entries are not indexed, and one miss per account is cheap

    def get(self, key: tuple[str, str]) -> tuple[bool, str | None]:
        found = self.entries.get(key)
        if found is None or found[1] < time.monotonic() - CACHE_TTL_S:
            return False, None
        return True, found[0]

    def put(self, key: tuple[str, str], user: str | None) -> None:
        if len(self.entries) >= CACHE_MAX:
            self.entries.clear()
        self.entries[key] = (user, time.monotonic())


def _cache(rt: Runtime) -> LinkCache:
    cache = rt.link_cache
    if cache is None:
        cache = rt.link_cache = LinkCache(rt)
    return cache


def _forget(rt: Runtime) -> None:
    cache = rt.link_cache
    if cache is not None:
        cache.entries.clear()


# --- what the hub asks ------------------------------------------------------------------

async def linked_user(rt: Runtime, *, platform: str, account_id: str) -> str | None:
    """The opsroom user a platform account acts as; None when it is not linked or the user is disabled."""
    key = (platform, account_id)
    cache = _cache(rt)
    hit, user = cache.get(key)
    if hit:
        return user
    async with rt.read() as s:
        found = (await s.execute(
            select(UserRow.name, UserRow.disabled).join(ChatLinkRow, ChatLinkRow.user_id == UserRow.id)
            .where(ChatLinkRow.platform == platform, ChatLinkRow.account_id == account_id))).first()
    user = found[0] if found is not None and not found[1] else None
    cache.put(key, user)
    return user


async def accounts_of(rt: Runtime, *, platform: str, users: list[str]) -> list[tuple[str, str, str]]:
    """(user, account id, display name) of every account these (enabled) users linked on a platform."""
    if not users:
        return []
    async with rt.read() as s:
        rows = (await s.execute(
            select(UserRow.name, ChatLinkRow.account_id, ChatLinkRow.display_name)
            .join(ChatLinkRow, ChatLinkRow.user_id == UserRow.id)
            .where(ChatLinkRow.platform == platform, UserRow.name.in_(users), UserRow.disabled.is_(False))
            .order_by(UserRow.name, ChatLinkRow.id))).all()
    return [(u, a, d) for u, a, d in rows]


# --- codes ---------------------------------------------------------------------------------

def new_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_LEN))


def _clean_code(code: str) -> str:
    """As typed: case, spaces and dashes (`abcd-efgh`) do not matter."""
    return "".join(code.split()).replace("-", "").upper()


async def _user(s: AsyncSession, name: str) -> UserRow:
    row = (await s.execute(select(UserRow).where(UserRow.name == name))).scalar_one_or_none()
    if row is None:
        raise NotFound(f"no user {name!r}", hint="list users with `opsroom user list`")
    return row


async def issue_link_code(rt: Runtime, *, actor: Actor, user: str | None = None) -> tuple[str, float]:
    """A new one-time code for `user` (default: the actor) and when it expires (epoch seconds).

    The code is returned once and stored as its sha256; the user's older unused codes stop working.
    """
    target = normalise_name(user) if user is not None else actor.name
    if target != actor.name:
        actor.require("user.manage", what=f"issue link codes for {target}")
    code = new_code()
    now = _now(rt)
    expires = now + CODE_TTL_S
    async with rt.write() as s:
        row = await _user(s, target)
        if row.disabled:
            raise Invalid(f"user {target!r} is disabled", hint="enable the user first (`opsroom user enable`)")
        # One live code per user: an older one (in a chat history, on a screenshot) is void now.
        # Codes long expired go too, so the table holds only what can still matter.
        replaced = await s.execute(delete(LinkCodeRow).where(or_(
            and_(LinkCodeRow.user_id == row.id, LinkCodeRow.used_at.is_(None)),
            LinkCodeRow.expires_at < now - 86_400)))
        s.add(LinkCodeRow(code_hash=token_hash(code), user_id=row.id, issued_by=actor.name, created_at=now,
                          expires_at=expires))
        await audit.append(s, actor=actor, action="chat.link_code", target=f"user:{target}",
                           details={"expires_at": round(expires, 3),
                                    "replaced": getattr(replaced, "rowcount", 0) or 0})
    return code, expires


async def _set_link(s: AsyncSession, *, platform: str, account_id: str, display_name: str,
                    user_id: int) -> str | None:
    """Link the account to user_id, replacing its link to anyone else; the previous user's name."""
    old = (await s.execute(
        select(ChatLinkRow, UserRow.name).join(UserRow, UserRow.id == ChatLinkRow.user_id)
        .where(ChatLinkRow.platform == platform, ChatLinkRow.account_id == account_id).with_for_update())).first()
    previous = old[1] if old is not None else None
    if old is not None:
        await s.delete(old[0])
        await s.flush()
    s.add(ChatLinkRow(platform=platform, account_id=account_id, display_name=display_name[:255], user_id=user_id))
    return previous


def _check_account(platform: str, account_id: str) -> None:
    if not platform or not account_id or len(account_id) > MAX_ACCOUNT or len(platform) > 64:
        raise Invalid("that chat account cannot be linked", hint="the platform or account id is empty or too long")


async def redeem_link_code(rt: Runtime, *, platform: str, account_id: str, display_name: str, code: str) -> str:
    """Link this platform account to the user the code was issued for; that user's name.

    Refused (and audited): unknown, used or expired codes, a disabled user, and an account
    that guessed too often. The code itself is never logged, audited or stored.
    """
    _check_account(platform, account_id)
    throttle = link_throttle(rt)
    who = Actor(f"{platform}:{account_id}"[:128], "chat")
    key = f"{platform}\x00{account_id}"
    refused = throttle.begin(key, f"platform:{platform}")
    if refused is not None:
        wait = max(1, round(refused.retry_after))
        if refused.audit:
            await audit.append_alone(rt, actor=who, action="chat.link", target=f"platform:{platform}",
                                     outcome="throttled",
                                     details={"account": account_id, "retry_after_s": wait,
                                              "not_audited_since": refused.suppressed})
        raise TooManyAttempts("too many wrong link codes", retry_after=wait,
                              hint=f"try again in {wait} s, with a code you just got ({HOW})")
    now = _now(rt)
    cleaned = _clean_code(code)
    failure: Exception | None = None
    user = ""
    async with rt.write() as s:
        found = (await s.execute(
            select(LinkCodeRow, UserRow).join(UserRow, UserRow.id == LinkCodeRow.user_id)
            .where(LinkCodeRow.code_hash == token_hash(cleaned)).with_for_update())).first()
        if found is None:
            failure = NotFound("that link code is not valid",
                               hint=f"check it (letters and digits, e.g. `link K7MW3QXA`), or {HOW}; "
                                    "a newer code replaces older ones")
        elif found[0].used_at is not None:
            failure = Conflict("that link code was already used", hint=f"codes work once; {HOW}")
        elif found[0].expires_at <= now:
            failure = Invalid("that link code expired", hint=f"codes last {round(CODE_TTL_S / 60)} minutes; {HOW}")
        elif found[1].disabled:
            failure = PermissionDenied(f"user {found[1].name!r} is disabled", hint="ask an admin")
        else:
            link_code, row = found
            link_code.used_at = now
            previous = await _set_link(s, platform=platform, account_id=account_id, display_name=display_name,
                                       user_id=row.id)
            await audit.append(s, actor=Actor(row.name, "chat"), action="chat.link", target=f"user:{row.name}",
                               details={"platform": platform, "account": account_id, "display_name": display_name,
                                        "issued_by": link_code.issued_by, "replaced": previous})
            user = row.name
    if failure is not None:
        await audit.append_alone(rt, actor=who, action="chat.link", target=f"platform:{platform}",
                                 outcome="denied", details={"account": account_id, "reason": str(failure.args[0])})
        raise failure
    throttle.succeeded(key, f"platform:{platform}")
    _forget(rt)
    return user


async def link_account(rt: Runtime, *, platform: str, account_id: str, display_name: str, user: str,
                       actor: Actor = SYSTEM) -> None:
    """Link an account directly, without a code (tests, factories, an admin's own tools)."""
    actor.require("user.manage", what="link chat accounts directly")
    _check_account(platform, account_id)
    name = normalise_name(user)
    async with rt.write() as s:
        row = await _user(s, name)
        previous = await _set_link(s, platform=platform, account_id=account_id, display_name=display_name,
                                   user_id=row.id)
        await audit.append(s, actor=actor, action="chat.link", target=f"user:{name}",
                           details={"platform": platform, "account": account_id, "display_name": display_name,
                                    "replaced": previous, "direct": True})
    _forget(rt)


async def unlink(rt: Runtime, *, actor: Actor, platform: str, account_id: str, user: str | None = None) -> None:
    """Remove a link: one's own, or anyone's with `user.manage`. It stops acting at once.

    `user`, when given, must be the linked user (the CLI names whose link it removes)."""
    async with rt.write() as s:
        found = (await s.execute(
            select(ChatLinkRow, UserRow.name).join(UserRow, UserRow.id == ChatLinkRow.user_id)
            .where(ChatLinkRow.platform == platform, ChatLinkRow.account_id == account_id))).first()
        owner = found[1] if found is not None else None
        if found is None or (user is not None and owner != normalise_name(user)):
            raise NotFound(f"no link of {platform} account {account_id!r}" + (f" to {user}" if user else ""),
                           hint="list links with `opsroom user links NAME` or on your links page")
        if owner != actor.name:
            actor.require("user.manage", what=f"unlink chat accounts of {owner}")
        await s.delete(found[0])
        await audit.append(s, actor=actor, action="chat.unlink", target=f"user:{owner}",
                           details={"platform": platform, "account": account_id})
        # Through the event log: a server drops its cached link at once when the CLI removed it.
        event = access_changed(rt, s, user_id=found[0].user_id, user=str(owner), reason="chat_unlinked")
    _forget(rt)
    rt.bus.publish(event)


async def list_links(rt: Runtime, *, actor: Actor, user: str | None = None) -> list[LinkInfo]:
    """Linked accounts: one's own; `user.manage` sees anyone's (all of them with no user named)."""
    if user is not None:
        user = normalise_name(user)
        if user != actor.name:
            actor.require("user.manage", what=f"list the chat links of {user}")
    elif not actor.can("user.manage"):
        user = actor.name
    query = (select(ChatLinkRow, UserRow.name).join(UserRow, UserRow.id == ChatLinkRow.user_id)
             .order_by(UserRow.name, ChatLinkRow.platform, ChatLinkRow.account_id))
    if user is not None:
        query = query.where(UserRow.name == user)
    async with rt.read() as s:
        rows = (await s.execute(query)).all()
    return [LinkInfo(link.platform, link.account_id, link.display_name, name, link.created_at) for link, name in rows]
