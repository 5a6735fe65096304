"""Who is acting, through which door, with which permissions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from opsroom.errors import PermissionDenied

Door = Literal["web", "api", "chat", "cli", "rule", "system", "webhook"]

# Permissions of the built-in roles. Catalog roles may add roles built from these.
BUILTIN_ROLES: dict[str, frozenset[str]] = {
    # Developers see production read-only: health, status, executions, on-demand checks.
    "viewer": frozenset({"status.read", "check.run", "execution.read", "approval.read"}),
    "operator": frozenset({"status.read", "check.run", "execution.read", "approval.read", "runbook.run",
                           "alert.ack", "alert.silence"}),
    "approver": frozenset({"status.read", "check.run", "execution.read", "approval.read", "approval.decide",
                           "alert.ack"}),
    "admin": frozenset({"*"}),
}
ALL_PERMISSIONS = frozenset({
    "status.read", "check.run", "execution.read", "approval.read", "runbook.run",
    "approval.decide", "audit.read", "user.manage", "token.create", "alert.ack", "alert.silence",
})


@dataclass(frozen=True)
class Actor:
    name: str
    door: Door
    roles: frozenset[str] = frozenset()
    permissions: frozenset[str] = frozenset()
    user_id: int | None = None
    correlation_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    def can(self, permission: str) -> bool:
        return "*" in self.permissions or permission in self.permissions

    def require(self, permission: str, *, what: str) -> None:
        if not self.can(permission):
            raise PermissionDenied(
                f"{self.name} may not {what}",
                hint=f"needs permission {permission!r}; your roles: {', '.join(sorted(self.roles)) or 'none'}",
            )

    def via(self, door: Door) -> Actor:
        return Actor(self.name, door, self.roles, self.permissions, self.user_id, self.correlation_id)


def permissions_for(roles: list[str] | frozenset[str], catalog_roles: dict[str, list[str]] | None = None,
                    inherits: dict[str, list[str]] | None = None) -> frozenset[str]:
    """Expand roles (built-in and catalog-defined, with inheritance) into permissions."""
    out: set[str] = set()
    seen: set[str] = set()
    stack = list(roles)
    while stack:
        role = stack.pop()
        if role in seen:
            continue
        seen.add(role)
        out |= BUILTIN_ROLES.get(role, frozenset())
        out |= set((catalog_roles or {}).get(role, []))
        stack.extend((inherits or {}).get(role, []))
    return frozenset(out)


def rule_actor(rule: str, correlation_id: str | None = None) -> Actor:
    """Rules act with exactly what their policy in the reviewed catalog allows."""
    return Actor(f"rule:{rule}", "rule", frozenset({"rule"}),
                 frozenset({"status.read", "check.run", "runbook.run", "execution.read"}),
                 correlation_id=correlation_id)


def alert_source_actor(source: str) -> Actor:
    """A sender of alerts can only report them: it is no person and holds no permission."""
    return Actor(f"alert:{source}", "webhook", frozenset({"alert_source"}), frozenset())


SYSTEM = Actor("opsroom", "system", frozenset({"system"}), frozenset({"*"}))
