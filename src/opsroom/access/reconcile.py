"""The catalog's users, reconciled with the store at every start.

The catalog is the reviewed source of truth for the people it names: a user removed from it
is disabled (not deleted: the audit log keeps pointing at them), a user moved to a lesser role
there loses the old one, and a password from `password_env` is applied when it changed. Users
added with `opsroom user add` (source 'local') and not named by the catalog are never touched.
A user an admin disabled stays disabled; one the reconcile disabled comes back with the catalog.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from opsroom import events
from opsroom.access.identity import SYSTEM
from opsroom.access.models import UserRow, WebSessionRow
from opsroom.access.names import ALLOWED, name_problem, normalise_name
from opsroom.access.service import _hash, _verify, access_changed, check_password
from opsroom.audit import service as audit
from opsroom.catalog.schema import User
from opsroom.errors import Invalid
from opsroom.runtime import Runtime

log = structlog.get_logger(__name__)


@dataclass
class ReconcileReport:
    created: list[str] = field(default_factory=list)
    roles: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)  # name -> (old, new)
    disabled: list[str] = field(default_factory=list)
    enabled: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)  # local users the catalog now names
    passwords: list[str] = field(default_factory=list)
    no_password: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # stored before names were normalised: old -> new
    bindings: dict[str, tuple[list[dict[str, str]], list[dict[str, str]]]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.roles or self.bindings or self.disabled or self.enabled or self.adopted
                    or self.passwords or self.renamed)


def _bindings(user: User) -> list[dict[str, str]]:
    """The catalog's scoped roles as stored (users.bindings); no `system` key when it names none."""
    return [b.model_dump(exclude_none=True) for b in user.bindings]


def _wanted_password(rt: Runtime, user: User, passwords: dict[str, str]) -> str | None:
    password = passwords.get(user.name)
    if password is None and user.password_env:
        password = os.environ.get(user.password_env) or None
    if password is not None:
        try:
            check_password(rt, password)
        except Invalid as exc:
            # A weak password must not stop the server; the user is told how to set a good one.
            log.warning("catalog user's password refused", user=user.name, variable=user.password_env,
                        reason=exc.message, hint=f"set a longer one, or `opsroom user passwd {user.name}`")
            return None
    return password


async def _legacy_names(rt: Runtime, s: AsyncSession, rows: dict[str, UserRow],
                        report: ReconcileReport) -> list[events.AccessChanged]:
    """Users stored before names were normalised: renamed to their normal form when it is free,
    disabled otherwise (a Cyrillic lookalike beside `boss` is what the rule exists for: its
    tokens would still work, and no door could reach it by name to disable it)."""
    out: list[events.AccessChanged] = []
    for name, row in sorted(rows.items()):
        problem = name_problem(name)
        if problem is None and normalise_name(name) == name:
            continue
        new = normalise_name(name) if problem is None else None
        if new is not None and new not in rows:
            row.name = new
            if row.display_name is None:
                row.display_name = name
            rows[new] = rows.pop(name)
            report.renamed[name] = new
            await audit.append(s, actor=SYSTEM, action="user.reconcile", target=f"user:{new}",
                               details={"renamed_from": name})
            continue
        if not row.disabled:
            row.disabled, row.disabled_by = True, "admin"
            await s.execute(delete(WebSessionRow).where(WebSessionRow.user_id == row.id))
            report.disabled.append(name)
            out.append(access_changed(rt, s, user_id=row.id, user=name, reason="disabled"))
            why = problem or f"the same name as {new!r}"
            await audit.append(s, actor=SYSTEM, action="user.reconcile", target=f"user:{name[:64]}",
                               details={"disabled": f"name not allowed: {why}"})
            log.warning(f"stored user {name!r} disabled: its name is not allowed ({why})", user=name,
                        hint=f"user names are {ALLOWED}")
    return out


async def reconcile_users(rt: Runtime, *, passwords: dict[str, str] | None = None) -> ReconcileReport:
    """Make the store's catalog users what the catalog says; audit and log what changed."""
    report = ReconcileReport()
    wanted = {normalise_name(u.name): u for u in rt.catalog.users.values()}
    async with rt.read() as s:
        existing = {r.name: r for r in (await s.execute(select(UserRow))).scalars()}
    # argon2 before the transaction, off the loop: a new hash, or a check that the stored one is current.
    new_hashes: dict[str, str] = {}
    for name, user in wanted.items():
        password = _wanted_password(rt, user, passwords or {})
        row = existing.get(name)
        stored = row.password_hash if row is not None else None
        if password is not None and not (stored and await _verify(stored, password)):
            new_hashes[name] = await _hash(password)
        elif password is None and stored is None:
            report.no_password.append(name)
    changes: list[events.AccessChanged] = []
    async with rt.write() as s:
        rows = {r.name: r for r in (await s.execute(select(UserRow))).scalars()}
        changes += await _legacy_names(rt, s, rows, report)
        for name, user in wanted.items():
            details: dict[str, Any] = {}
            row = rows.get(name)
            if row is None:
                row = UserRow(name=name, roles=user.unscoped_roles, bindings=_bindings(user),
                              display_name=user.display_name, password_hash=new_hashes.get(name), source="catalog")
                s.add(row)
                await s.flush()
                report.created.append(name)
                details = {"created": True, "roles": user.unscoped_roles, "password": name in new_hashes}
                if row.bindings:
                    details["bindings"] = row.bindings
            else:
                if row.source != "catalog":
                    row.source = "catalog"
                    report.adopted.append(name)
                    details["adopted"] = "the catalog names this local user: it now decides its roles"
                if list(row.roles) != user.unscoped_roles or list(row.bindings or []) != _bindings(user):
                    if list(row.roles) != user.unscoped_roles:
                        report.roles[name] = (list(row.roles), user.unscoped_roles)
                        details["roles"] = {"old": list(row.roles), "new": user.unscoped_roles}
                    if list(row.bindings or []) != _bindings(user):
                        report.bindings[name] = (list(row.bindings or []), _bindings(user))
                        details["bindings"] = {"old": list(row.bindings or []), "new": _bindings(user)}
                    row.roles, row.bindings = user.unscoped_roles, _bindings(user)
                    changes.append(access_changed(rt, s, user_id=row.id, user=row.name, reason="roles"))
                if user.display_name is not None and row.display_name != user.display_name:
                    details["display_name"] = user.display_name
                    row.display_name = user.display_name
                if row.disabled and row.disabled_by == "catalog":
                    row.disabled, row.disabled_by = False, None
                    report.enabled.append(name)
                    details["enabled"] = "back in the catalog"
                if name in new_hashes:
                    row.password_hash = new_hashes[name]
                    await s.execute(delete(WebSessionRow).where(WebSessionRow.user_id == row.id))
                    report.passwords.append(name)
                    details["password"] = f"set from {user.password_env or 'the demo passwords'}"
                    changes.append(access_changed(rt, s, user_id=row.id, user=row.name, reason="password"))
            if details:
                await audit.append(s, actor=SYSTEM, action="user.reconcile", target=f"user:{name}", details=details)
        for name, row in rows.items():
            if row.source != "catalog" or name in wanted or row.disabled:
                continue
            row.disabled, row.disabled_by = True, "catalog"
            await s.execute(delete(WebSessionRow).where(WebSessionRow.user_id == row.id))
            report.disabled.append(name)
            changes.append(access_changed(rt, s, user_id=row.id, user=row.name, reason="disabled"))
            await audit.append(s, actor=SYSTEM, action="user.reconcile", target=f"user:{name}",
                               details={"disabled": "no longer in the catalog"})
    for change in changes:
        rt.bus.publish(change)
    if report.changed:
        log.info("catalog users reconciled", created=report.created, adopted=report.adopted, renamed=report.renamed,
                 roles={n: f"{','.join(o) or '-'} -> {','.join(w) or '-'}" for n, (o, w) in report.roles.items()},
                 disabled=report.disabled, enabled=report.enabled, passwords_set=report.passwords)
    for name in report.no_password:
        user = wanted[name]
        how = (f"{user.password_env} is not set" if user.password_env else "the catalog gives no password_env")
        log.warning(f"catalog user {name} has no password and cannot log in on the web ({how})", user=name,
                    hint=f"set one with `opsroom user passwd {name}`, or set password_env in the catalog")
    return report
