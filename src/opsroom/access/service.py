"""Access service: users, passwords, API tokens, web sessions, and who an actor is."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from opsroom import events
from opsroom.access.identity import BUILTIN_ROLES, Actor, Binding, Door, permissions_for
from opsroom.access.models import ApiTokenRow, UserRow, WebSessionRow
from opsroom.access.names import normalise_name
from opsroom.access.secrets import hash_password, new_token, timing_equaliser, token_hash, verify_password
from opsroom.access.throttle import LoginThrottle
from opsroom.audit import service as audit
from opsroom.errors import Conflict, Invalid, NotFound, TooManyAttempts, Unauthenticated
from opsroom.eventlog import log as eventlog
from opsroom.runtime import Runtime

MIN_PASSWORD = 12
LAST_USED_EVERY_S = 60.0  # a token's last_used_at is written at most this often (one write, not one per call)

# argon2 takes tens of milliseconds of CPU and releases the GIL: it runs here, never on the event
# loop, and on threads of its own so a flood of logins cannot starve the loop's default pool
# (DNS lookups, file reads) either. Few threads, and one core left to the loop: each hash
# also holds 64 MiB while it runs, and a flood must not take the loop's CPU.
_argon2: ThreadPoolExecutor | None = None


def _argon2_pool() -> ThreadPoolExecutor:
    global _argon2
    if _argon2 is None:
        _argon2 = ThreadPoolExecutor(max_workers=min(4, max(1, (os.cpu_count() or 1) - 1)),
                                     thread_name_prefix="opsroom-argon2")
        _argon2.submit(timing_equaliser)  # made once, off the loop, before a stranger's login needs it
    return _argon2


async def _hash(password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(_argon2_pool(), hash_password, password)


async def _verify(stored: str | None, password: str) -> bool:
    return await asyncio.get_running_loop().run_in_executor(_argon2_pool(), verify_password, stored, password)


def login_throttle(rt: Runtime) -> LoginThrottle:
    """This server's throttle (in memory: see access/throttle.py for why that is enough)."""
    throttle = rt.login_throttle
    if throttle is None:
        throttle = rt.login_throttle = LoginThrottle()
    return throttle


def actor_for(rt: Runtime, row: UserRow, door: Door) -> Actor:
    cat = rt.catalog
    defined = {n: r.permissions for n, r in cat.roles.items()}
    inherits = {n: r.inherits for n, r in cat.roles.items()}
    perms = permissions_for(row.roles, defined, inherits)
    bindings = tuple(Binding(b["role"], b["environment"], b.get("system"),
                             permissions_for([b["role"]], defined, inherits))
                     for b in row.bindings or [] if b.get("role") and b.get("environment"))
    return Actor(row.name, door, frozenset(row.roles), perms, row.id, bindings=bindings)


def known_roles(rt: Runtime) -> set[str]:
    return set(BUILTIN_ROLES) | set(rt.catalog.roles)


def check_password(rt: Runtime, password: str) -> None:
    if len(password) < MIN_PASSWORD and not rt.settings.demo:
        raise Invalid(f"password is too short ({len(password)} characters)",
                      hint=f"use at least {MIN_PASSWORD} characters, e.g. four random words")


def access_changed(rt: Runtime, s: AsyncSession, *, user_id: int, user: str, reason: str,
                   session_hash: str | None = None) -> events.AccessChanged:
    """The event for open doors, also written to the event log in the change's own transaction: a
    server relays it when the CLI disabled someone, and so do the other servers of a cluster.
    The caller publishes it on its own bus after the commit."""
    event = events.AccessChanged(user_id=user_id, user=user, reason=reason, session_hash=session_hash)
    eventlog.stage(s, event, origin=rt.node_id)
    return event


async def _user(s: AsyncSession, name: str) -> UserRow | None:
    row: UserRow | None = (await s.execute(select(UserRow).where(UserRow.name == name))).scalar_one_or_none()
    return row


async def add_user(rt: Runtime, *, actor: Actor, name: str, roles: list[str], password: str | None = None,
                   display_name: str | None = None) -> UserRow:
    actor.require("user.manage", what="add users")
    typed, name = name, normalise_name(name)
    if display_name is None and typed != name and typed.casefold() == name:
        display_name = typed  # `Boss` is stored as `boss` and still shown as typed
    unknown = set(roles) - known_roles(rt)
    if unknown:
        raise Invalid(f"unknown role(s): {', '.join(sorted(unknown))}",
                      hint=f"known roles: {', '.join(sorted(known_roles(rt)))}")
    if password is not None:
        check_password(rt, password)
    hashed = await _hash(password) if password else None
    async with rt.write() as s:
        if await _user(s, name) is not None:
            raise Conflict(f"user {name!r} already exists" + (f" (as typed: {typed!r})" if typed != name else ""),
                           hint="user names are unique after folding case and lookalike forms; "
                                "use `opsroom user passwd` to change a password")
        row = UserRow(name=name, roles=roles, display_name=display_name, password_hash=hashed, source="local")
        s.add(row)
        await s.flush()
        await audit.append(s, actor=actor, action="user.add", target=f"user:{name}", details={"roles": roles})
    return row


async def set_password(rt: Runtime, *, actor: Actor, name: str, password: str) -> None:
    name = normalise_name(name)
    if actor.name != name:
        actor.require("user.manage", what=f"change the password of {name}")
    check_password(rt, password)
    hashed = await _hash(password)
    async with rt.write() as s:
        row = await _user(s, name)
        if row is None:
            raise NotFound(f"no user {name!r}", hint="list users with `opsroom user list`")
        row.password_hash = hashed
        # A new password ends every open web session of that user.
        await s.execute(delete(WebSessionRow).where(WebSessionRow.user_id == row.id))
        await audit.append(s, actor=actor, action="user.passwd", target=f"user:{name}")
        event = access_changed(rt, s, user_id=row.id, user=row.name, reason="password")
    rt.bus.publish(event)


async def list_users(rt: Runtime, *, actor: Actor) -> list[UserRow]:
    actor.require("status.read", what="list users")
    async with rt.read() as s:
        return list((await s.execute(select(UserRow).order_by(UserRow.name))).scalars())


async def disable_user(rt: Runtime, *, actor: Actor, name: str) -> None:
    """Disable at once: web sessions deleted, tokens refused, open sockets told to close."""
    actor.require("user.manage", what="disable users")
    name = normalise_name(name)
    if name == actor.name:
        raise Invalid("you cannot disable yourself", hint="ask another admin, so that someone can still undo it")
    async with rt.write() as s:
        row = await _user(s, name)
        if row is None:
            raise NotFound(f"no user {name!r}", hint="list users with `opsroom user list`")
        was = row.disabled
        row.disabled, row.disabled_by = True, "admin"
        ended = await s.execute(delete(WebSessionRow).where(WebSessionRow.user_id == row.id))
        sessions = getattr(ended, "rowcount", 0)  # a DELETE's result is a CursorResult
        await audit.append(s, actor=actor, action="user.disable", target=f"user:{name}",
                           details={"was_disabled": was, "sessions_ended": sessions or 0})
        event = access_changed(rt, s, user_id=row.id, user=row.name, reason="disabled")
    rt.bus.publish(event)


async def enable_user(rt: Runtime, *, actor: Actor, name: str) -> None:
    actor.require("user.manage", what="enable users")
    name = normalise_name(name)
    async with rt.write() as s:
        row = await _user(s, name)
        if row is None:
            raise NotFound(f"no user {name!r}", hint="list users with `opsroom user list`")
        # Only a process that loaded the catalog can tell (a CLI run without one would call every
        # catalog user removed); without it the next start's reconcile disables a removed user again.
        if row.source == "catalog" and rt.catalog.root and name not in rt.catalog.users:
            raise Conflict(f"user {name!r} was removed from the catalog",
                           hint="add it back to the catalog's users and restart: the catalog decides")
        was = row.disabled
        row.disabled, row.disabled_by = False, None
        await audit.append(s, actor=actor, action="user.enable", target=f"user:{name}",
                           details={"was_disabled": was})


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    user: str
    created_at: float
    last_used_at: float | None
    revoked: bool


async def list_tokens(rt: Runtime, *, actor: Actor, user: str | None = None) -> list[TokenInfo]:
    """Tokens (never their values): a user sees their own; `user.manage` sees anyone's."""
    if user is not None:
        user = normalise_name(user)
        if user != actor.name:
            actor.require("user.manage", what=f"list the tokens of {user}")
    elif not actor.can("user.manage"):
        user = actor.name
    query = (select(ApiTokenRow, UserRow.name).join(UserRow, UserRow.id == ApiTokenRow.user_id)
             .order_by(ApiTokenRow.id))
    if user is not None:
        query = query.where(UserRow.name == user)
    async with rt.read() as s:
        rows = (await s.execute(query)).all()
    await audit.append_alone(rt, actor=actor, action="token.list", target=f"user:{user or '*'}",
                             details={"count": len(rows)})
    return [TokenInfo(t.id, t.name, u, t.created_at, t.last_used_at, t.revoked) for t, u in rows]


async def revoke_token(rt: Runtime, *, actor: Actor, token_id: int) -> None:
    """Revoke at once: the next request with it is refused and open sockets of its user re-check."""
    async with rt.write() as s:
        found = (await s.execute(select(ApiTokenRow, UserRow).join(UserRow, UserRow.id == ApiTokenRow.user_id)
                                 .where(ApiTokenRow.id == token_id))).first()
        if found is None:
            raise NotFound(f"no token {token_id}", hint="list tokens with `GET /api/v1/tokens`")
        token, owner = found
        if owner.name != actor.name:
            actor.require("user.manage", what=f"revoke tokens of {owner.name}")
        was = token.revoked
        token.revoked = True
        await audit.append(s, actor=actor, action="token.revoke", target=f"user:{owner.name}",
                           details={"token_id": token_id, "name": token.name, "was_revoked": was})
        event = access_changed(rt, s, user_id=owner.id, user=owner.name, reason="token_revoked")
    rt.bus.publish(event)


async def create_token(rt: Runtime, *, actor: Actor, user: str, name: str = "cli") -> str:
    """Return a new API token once; only its sha256 is stored."""
    user = normalise_name(user)
    if actor.name != user:
        actor.require("user.manage", what=f"create tokens for {user}")
    token = new_token("opr")
    async with rt.write() as s:
        row = await _user(s, user)
        if row is None:
            raise NotFound(f"no user {user!r}", hint="add one with `opsroom user add NAME --role viewer`")
        s.add(ApiTokenRow(user_id=row.id, name=name, token_hash=token_hash(token)))
        await audit.append(s, actor=actor, action="token.create", target=f"user:{user}", details={"name": name})
    return token


_TOKEN_USER = (select(UserRow, ApiTokenRow.id, ApiTokenRow.last_used_at)
               .join(ApiTokenRow, ApiTokenRow.user_id == UserRow.id)
               .where(ApiTokenRow.token_hash == bindparam("hash"), ApiTokenRow.revoked.is_(False)))
_TOUCH_TOKEN = update(ApiTokenRow).where(ApiTokenRow.id == bindparam("tid"))


async def authenticate_token(rt: Runtime, *, token: str, door: Door) -> Actor:
    """Every API request: read from the store each time (no cache), so a revoked token or a
    disabled user is refused at the next request, also when another process (the CLI) did it.

    One hop to the writer (transact) for the lookup and the occasional last-used write: an
    AsyncSession read costs several hops through aiosqlite's thread, 3.0 against 0.5 ms of CPU.
    """
    hashed, now = token_hash(token), time.time()

    def lookup(s: Session) -> UserRow | None:
        found = s.execute(_TOKEN_USER, {"hash": hashed}).first()
        if found is None or found[0].disabled:
            return None
        user, token_id, last_used = found
        if last_used is None or last_used < now - LAST_USED_EVERY_S:
            s.connection().execute(_TOUCH_TOKEN, {"tid": token_id, "last_used_at": now})
        return user

    user = await rt.transact(lookup)
    if user is None:
        raise Unauthenticated("invalid or revoked API token", hint="create one with `opsroom token create USER`")
    return actor_for(rt, user, door)


@dataclass
class LoginResult:
    actor: Actor
    session_token: str
    csrf_token: str


async def login(rt: Runtime, *, name: str, password: str, door: Door = "web",
                address: str | None = None) -> LoginResult:
    """Throttled per user name and per client address before argon2 runs; argon2 runs off the loop."""
    try:
        key: str | None = normalise_name(name)
    except Invalid:
        key = None  # no such user can exist: checked like a wrong password, never said apart
    shown = key or "(invalid name)"
    throttle = login_throttle(rt)
    refused = throttle.begin(key or name[:64].casefold(), address)
    if refused is not None:
        wait = max(1, round(refused.retry_after))
        if refused.audit:
            await audit.append_alone(rt, actor=Actor(shown, door), action="login", target=f"user:{shown}",
                                     outcome="throttled",
                                     details={"by": refused.key.split(":", 1)[0], "address": address,
                                              "retry_after_s": wait, "not_audited_since": refused.suppressed})
        raise TooManyAttempts("too many failed logins", retry_after=wait,
                              hint=f"try again in {wait} s" + (" or ask an admin to reset your password"
                                                                if refused.key.startswith("user:") else ""))
    row = None
    if key is not None:
        async with rt.read() as s:
            row = await _user(s, key)
    ok = await _verify(row.password_hash if row else None, password)
    if row is None or not ok or row.disabled:
        await audit.append_alone(rt, actor=Actor(shown, door), action="login", target=f"user:{shown}",
                                 outcome="denied", details={"address": address})
        raise Unauthenticated("wrong user name or password")
    throttle.succeeded(row.name, address)
    actor = actor_for(rt, row, door)
    async with rt.write() as s:
        session_token, csrf = start_session(rt, s, user_id=row.id)
        await audit.append(s, actor=actor, action="login", target=f"user:{row.name}",
                           details={"address": address})
    return LoginResult(actor, session_token, csrf)


def start_session(rt: Runtime, s: AsyncSession, *, user_id: int) -> tuple[str, str]:
    """A new web session (token, csrf token) in the caller's transaction, beside its login's audit
    record: every way in (password, single sign-on) gets a fresh token, so none can be fixated."""
    session_token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    s.add(WebSessionRow(user_id=user_id, token_hash=token_hash(session_token), csrf_token=csrf,
                        expires_at=time.time() + rt.settings.session_hours * 3600))
    return session_token, csrf


async def session_actor(rt: Runtime, *, session_token: str, door: Door) -> tuple[Actor, str]:
    """(actor, csrf token) for a web session cookie."""
    async with rt.read() as s:
        found = (await s.execute(
            select(UserRow, WebSessionRow).join(WebSessionRow, WebSessionRow.user_id == UserRow.id)
            .where(WebSessionRow.token_hash == token_hash(session_token))
        )).first()
    if found is None or found[1].expires_at < time.time() or found[0].disabled:
        raise Unauthenticated("not logged in or the session expired", hint="log in again")
    return actor_for(rt, found[0], door), found[1].csrf_token


async def logout(rt: Runtime, *, actor: Actor, session_token: str) -> None:
    session_hash = token_hash(session_token)
    event = None
    async with rt.write() as s:
        await s.execute(delete(WebSessionRow).where(WebSessionRow.token_hash == session_hash))
        await audit.append(s, actor=actor, action="logout", target=f"user:{actor.name}")
        if actor.user_id is not None:
            event = access_changed(rt, s, user_id=actor.user_id, user=actor.name, reason="logout",
                                   session_hash=session_hash)
    if event is not None:
        rt.bus.publish(event)


async def holders_of(rt: Runtime, *, roles: list[str]) -> list[str]:
    """Names of users holding any of the roles (to say whom an approval is asking)."""
    async with rt.read() as s:
        rows = list((await s.execute(select(UserRow).where(UserRow.disabled.is_(False)))).scalars())
    wanted = set(roles)
    return sorted(r.name for r in rows if wanted & set(r.roles) or ("admin" in r.roles and "admin" in wanted))


async def actor_by_name(rt: Runtime, *, name: str, door: Door) -> Actor:
    """The actor for a person a chat adapter has mapped to an opsroom user."""
    try:
        key = normalise_name(name)
    except Invalid:
        key = None
    row = None
    if key is not None:
        async with rt.read() as s:
            row = await _user(s, key)
    if row is None or row.disabled:
        raise Unauthenticated(f"I don't know {name[:64]!r} as an opsroom user",
                              hint="ask an admin to add you (`opsroom user add`)")
    return actor_for(rt, row, door)
