"""The loaded catalog: every object by kind and name, where it was written, and lookups."""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field

from opsroom.catalog.schema import (
    Alias,
    Check,
    Environment,
    Role,
    Room,
    Rule,
    Runbook,
    Service,
    System,
    User,
)


@dataclass(frozen=True)
class Location:
    file: str
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


def normalize(name: str) -> str:
    """'Service B', 'service_b', 'SERVICE-B' -> 'serviceb': how people type names on a phone."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


@dataclass
class Catalog:
    root: str = ""
    environments: dict[str, Environment] = field(default_factory=dict)
    systems: dict[str, System] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    checks: dict[str, Check] = field(default_factory=dict)
    runbooks: dict[str, Runbook] = field(default_factory=dict)
    rules: dict[str, Rule] = field(default_factory=dict)
    rooms: dict[str, Room] = field(default_factory=dict)
    aliases: list[Alias] = field(default_factory=list)
    roles: dict[str, Role] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)
    # (kind, name) -> where the object starts; (kind, name, field...) -> where that field is.
    locations: dict[tuple[str, ...], Location] = field(default_factory=dict)

    def locate(self, *key: str) -> Location | None:
        """Most specific known location for a key path, falling back to its parents."""
        for n in range(len(key), 0, -1):
            loc = self.locations.get(tuple(key[:n]))
            if loc is not None:
                return loc
        return None

    @property
    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for kind in ("environments", "systems", "services", "checks", "runbooks", "rules", "rooms",
                     "roles", "users"):
            for name, obj in sorted(getattr(self, kind).items()):
                digest.update(f"{kind}/{name}={obj.content_hash}\n".encode())
        for alias in self.aliases:
            digest.update(f"alias={alias.content_hash}\n".encode())
        return digest.hexdigest()

    # --- derived facts -------------------------------------------------

    def service_environment(self, service: str) -> str:
        svc = self.services[service]
        return svc.environment or self.systems[svc.system].environment

    def check_service(self, check: str) -> str | None:
        return self.checks[check].service

    def check_system(self, check: str) -> str | None:
        c = self.checks[check]
        if c.system:
            return c.system
        return self.services[c.service].system if c.service else None

    def check_environment(self, check: str) -> str:
        c = self.checks[check]
        if c.environment:
            return c.environment
        if c.service:
            return self.service_environment(c.service)
        if c.system:
            return self.systems[c.system].environment
        return next(iter(self.environments), "default")

    def checks_of_service(self, service: str) -> list[str]:
        return [n for n, c in self.checks.items() if c.service == service and c.enabled]

    def checks_of_system(self, system: str) -> list[str]:
        return [n for n, c in self.checks.items() if c.enabled and self.check_system(n) == system]

    def services_of_system(self, system: str) -> list[str]:
        return [n for n, s in self.services.items() if s.system == system]

    def is_protected(self, environment: str) -> bool:
        env = self.environments.get(environment)
        return bool(env and env.protected)

    def rooms_for_system(self, system: str | None) -> list[str]:
        """Rooms subscribed to a system; a room with no systems listed hears everything."""
        return [n for n, r in self.rooms.items() if not r.systems or (system and system in r.systems)]

    # --- forgiving lookups for chat -------------------------------------

    def _match(self, text: str, names: dict[str, list[str]]) -> tuple[str | None, list[str]]:
        key = normalize(text)
        for name, others in names.items():
            if key == normalize(name) or any(key == normalize(o) for o in others):
                return name, []
        flat = {normalize(n): n for n in names}
        for name, others in names.items():
            for o in others:
                flat.setdefault(normalize(o), name)
        close = difflib.get_close_matches(key, list(flat), n=3, cutoff=0.6)
        return None, list(dict.fromkeys(flat[c] for c in close))

    def find_service(self, text: str) -> tuple[str | None, list[str]]:
        """(exact name or None, suggestions) for what a person typed."""
        return self._match(text, {n: [*s.aliases, *([s.title] if s.title else [])]
                                  for n, s in self.services.items()})

    def find_system(self, text: str) -> tuple[str | None, list[str]]:
        return self._match(text, {n: [s.title] if s.title else [] for n, s in self.systems.items()})

    def find_check(self, text: str) -> tuple[str | None, list[str]]:
        return self._match(text, {n: [] for n in self.checks})

    def find_runbook(self, text: str) -> tuple[str | None, list[str]]:
        return self._match(text, {n: [r.title] if r.title else [] for n, r in self.runbooks.items()})
