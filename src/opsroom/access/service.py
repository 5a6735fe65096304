"""Access service: users, passwords, API tokens, web sessions, and who an actor is."""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import delete, select

from opsroom.access.identity import BUILTIN_ROLES, SYSTEM, Actor, Door, permissions_for
from opsroom.access.models import ApiTokenRow, UserRow, WebSessionRow
from opsroom.access.secrets import hash_password, new_token, token_hash, verify_password
from opsroom.audit import service as audit
from opsroom.errors import Conflict, Invalid, NotFound, Unauthenticated
from opsroom.runtime import Runtime

MIN_PASSWORD = 12


def actor_for(rt: Runtime, row: UserRow, door: Door) -> Actor:
    cat = rt.catalog
    perms = permissions_for(
        row.roles,
        {n: r.permissions for n, r in cat.roles.items()},
        {n: r.inherits for n, r in cat.roles.items()},
    )
    return Actor(row.name, door, frozenset(row.roles), perms, row.id)


def _known_roles(rt: Runtime) -> set[str]:
    return set(BUILTIN_ROLES) | set(rt.catalog.roles)


def _check_password(rt: Runtime, password: str) -> None:
    if len(password) < MIN_PASSWORD and not rt.settings.demo:
        raise Invalid(f"password is too short ({len(password)} characters)",
                      hint=f"use at least {MIN_PASSWORD} characters, e.g. four random words")


async def add_user(rt: Runtime, *, actor: Actor, name: str, roles: list[str], password: str | None = None,
                   display_name: str | None = None) -> UserRow:
    actor.require("user.manage", what="add users")
    unknown = set(roles) - _known_roles(rt)
    if unknown:
        raise Invalid(f"unknown role(s): {', '.join(sorted(unknown))}",
                      hint=f"known roles: {', '.join(sorted(_known_roles(rt)))}")
    if password is not None:
        _check_password(rt, password)
    async with rt.write() as s:
        if (await s.execute(select(UserRow).where(UserRow.name == name))).scalar_one_or_none():
            raise Conflict(f"user {name!r} already exists", hint="use `opsroom user passwd` to change a password")
        row = UserRow(name=name, roles=roles, display_name=display_name,
                      password_hash=hash_password(password) if password else None)
        s.add(row)
        await s.flush()
        await audit.append(s, actor=actor, action="user.add", target=f"user:{name}", details={"roles": roles})
    return row


async def set_password(rt: Runtime, *, actor: Actor, name: str, password: str) -> None:
    if actor.name != name:
        actor.require("user.manage", what=f"change the password of {name}")
    _check_password(rt, password)
    async with rt.write() as s:
        row = (await s.execute(select(UserRow).where(UserRow.name == name))).scalar_one_or_none()
        if row is None:
            raise NotFound(f"no user {name!r}", hint="list users with `opsroom user list`")
        row.password_hash = hash_password(password)
        # A new password ends every open web session of that user.
        await s.execute(delete(WebSessionRow).where(WebSessionRow.user_id == row.id))
        await audit.append(s, actor=actor, action="user.passwd", target=f"user:{name}")


async def list_users(rt: Runtime, *, actor: Actor) -> list[UserRow]:
    actor.require("status.read", what="list users")
    async with rt.read() as s:
        return list((await s.execute(select(UserRow).order_by(UserRow.name))).scalars())


async def ensure_bootstrap_users(rt: Runtime, *, passwords: dict[str, str] | None = None) -> list[str]:
    """Create the catalog's users that do not exist yet; passwords only from env or the demo."""
    created: list[str] = []
    async with rt.read() as s:
        existing = set((await s.execute(select(UserRow.name))).scalars())
    for user in rt.catalog.users.values():
        if user.name in existing:
            continue
        password = (passwords or {}).get(user.name)
        if password is None and user.password_env:
            password = os.environ.get(user.password_env)
        await add_user(rt, actor=SYSTEM.via("system"), name=user.name, roles=list(user.roles),
                       password=password, display_name=user.display_name)
        created.append(user.name)
    return created


async def create_token(rt: Runtime, *, actor: Actor, user: str, name: str = "cli") -> str:
    """Return a new API token once; only its sha256 is stored."""
    if actor.name != user:
        actor.require("user.manage", what=f"create tokens for {user}")
    token = new_token("opr")
    async with rt.write() as s:
        row = (await s.execute(select(UserRow).where(UserRow.name == user))).scalar_one_or_none()
        if row is None:
            raise NotFound(f"no user {user!r}", hint="add one with `opsroom user add NAME --role viewer`")
        s.add(ApiTokenRow(user_id=row.id, name=name, token_hash=token_hash(token)))
        await audit.append(s, actor=actor, action="token.create", target=f"user:{user}", details={"name": name})
    return token


async def authenticate_token(rt: Runtime, *, token: str, door: Door) -> Actor:
    async with rt.read() as s:
        found = (await s.execute(
            select(UserRow, ApiTokenRow).join(ApiTokenRow, ApiTokenRow.user_id == UserRow.id)
            .where(ApiTokenRow.token_hash == token_hash(token), ApiTokenRow.revoked.is_(False))
        )).first()
    if found is None or found[0].disabled:
        raise Unauthenticated("invalid or revoked API token", hint="create one with `opsroom token create USER`")
    return actor_for(rt, found[0], door)


@dataclass
class LoginResult:
    actor: Actor
    session_token: str
    csrf_token: str


async def login(rt: Runtime, *, name: str, password: str, door: Door = "web") -> LoginResult:
    async with rt.read() as s:
        row = (await s.execute(select(UserRow).where(UserRow.name == name))).scalar_one_or_none()
    ok = verify_password(row.password_hash if row else None, password)
    if row is None or not ok or row.disabled:
        await audit.append_alone(rt, actor=Actor(name[:64], door), action="login", target=f"user:{name[:64]}",
                                 outcome="denied")
        raise Unauthenticated("wrong user name or password")
    session_token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    actor = actor_for(rt, row, door)
    async with rt.write() as s:
        s.add(WebSessionRow(user_id=row.id, token_hash=token_hash(session_token), csrf_token=csrf,
                            expires_at=time.time() + rt.settings.session_hours * 3600))
        await audit.append(s, actor=actor, action="login", target=f"user:{name}")
    return LoginResult(actor, session_token, csrf)


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
    async with rt.write() as s:
        await s.execute(delete(WebSessionRow).where(WebSessionRow.token_hash == token_hash(session_token)))
        await audit.append(s, actor=actor, action="logout", target=f"user:{actor.name}")


async def holders_of(rt: Runtime, *, roles: list[str]) -> list[str]:
    """Names of users holding any of the roles (to say whom an approval is asking)."""
    async with rt.read() as s:
        rows = list((await s.execute(select(UserRow).where(UserRow.disabled.is_(False)))).scalars())
    wanted = set(roles)
    return sorted(r.name for r in rows if wanted & set(r.roles) or ("admin" in r.roles and "admin" in wanted))



async def actor_by_name(rt: Runtime, *, name: str, door: Door) -> Actor:
    """The actor for a person a chat adapter has mapped to an opsroom user."""
    async with rt.read() as s:
        row = (await s.execute(select(UserRow).where(UserRow.name == name))).scalar_one_or_none()
    if row is None or row.disabled:
        raise Unauthenticated(f"I don't know {name!r} as an opsroom user",
                              hint="ask an admin to add you (`opsroom user add`)")
    return actor_for(rt, row, door)
