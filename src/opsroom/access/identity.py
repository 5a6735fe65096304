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


def _grants(permissions: frozenset[str], permission: str) -> bool:
    return "*" in permissions or permission in permissions


@dataclass(frozen=True)
class Binding:
    """A role held in one environment (and optionally one system of it) only: docs/access.md."""

    role: str
    environment: str
    system: str | None = None
    permissions: frozenset[str] = frozenset()

    def covers(self, environment: str | None, system: str | None) -> bool:
        """Default deny: a target with no environment, another one, or (for a system binding)
        no system or another system is not covered."""
        if environment is None or environment != self.environment:
            return False
        return self.system is None or self.system == system

    @property
    def label(self) -> str:
        where = f"environment {self.environment}" + (f", system {self.system}" if self.system else "")
        return f"{self.role} on {where}"


@dataclass(frozen=True)
class Actor:
    name: str
    door: Door
    roles: frozenset[str] = frozenset()  # unscoped: they apply in every environment
    permissions: frozenset[str] = frozenset()  # of the unscoped roles
    user_id: int | None = None
    correlation_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False)
    bindings: tuple[Binding, ...] = ()

    def can(self, permission: str, *, environment: str | None = None, system: str | None = None) -> bool:
        """Whether an unscoped role, or a binding covering the target's scope, grants `permission`.

        A check that names no environment is answered by the unscoped roles alone: a scoped
        binding never grants anything to a caller that did not say where the action lands.
        """
        return self.deciding(permission, environment=environment, system=system) is not None

    def deciding(self, permission: str, *, environment: str | None = None,
                 system: str | None = None) -> str | Binding | None:
        """What grants it: "unscoped" (a global role), the covering Binding, or None (denied)."""
        if _grants(self.permissions, permission):
            return "unscoped"
        for b in self.bindings:
            if b.covers(environment, system) and _grants(b.permissions, permission):
                return b
        return None

    def can_somewhere(self, permission: str) -> bool:
        """Whether any role or binding grants it at all: the question before the target is known."""
        return _grants(self.permissions, permission) or any(_grants(b.permissions, permission)
                                                            for b in self.bindings)

    def environments_with(self, permission: str) -> frozenset[str]:
        """Where a binding grants it (for a list narrowed to what a scoped-only holder may read)."""
        return frozenset(b.environment for b in self.bindings if _grants(b.permissions, permission))

    def roles_in(self, environment: str | None, system: str | None = None) -> frozenset[str]:
        """The roles that count for a target there: the unscoped ones and the covering bindings'."""
        return self.roles | {b.role for b in self.bindings if b.covers(environment, system)}

    def require(self, permission: str, *, what: str, environment: str | None = None,
                system: str | None = None) -> None:
        if not self.can(permission, environment=environment, system=system):
            where = f" in environment {environment}" if environment else ""
            scoped = "; ".join(b.label for b in self.bindings)
            raise PermissionDenied(
                f"{self.name} may not {what}{where}",
                hint=f"needs permission {permission!r}{where}; your roles: {', '.join(sorted(self.roles)) or 'none'}"
                     + (f"; scoped: {scoped} (`opsroom access explain` says why)" if scoped else ""),
            )

    def via(self, door: Door) -> Actor:
        return Actor(self.name, door, self.roles, self.permissions, self.user_id, self.correlation_id,
                     bindings=self.bindings)


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
