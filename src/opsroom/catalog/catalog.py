"""The loaded catalog: every object by kind and name, where it was written, and lookups."""

from __future__ import annotations

import difflib
import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from opsroom.catalog.schema import (
    AlertSource,
    Alias,
    Check,
    Environment,
    Host,
    Platform,
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
    """Immutable once loaded (a reload builds a new one), so derived indexes are computed once."""

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
    platforms: dict[str, Platform] = field(default_factory=dict)
    alert_sources: dict[str, AlertSource] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)
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

    # Indexes: with 20,000 checks a scan per state change blocked the loop ~18 ms each.
    @cached_property
    def _checks_by_system(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for n, c in self.checks.items():
            system = self.check_system(n)
            if c.enabled and system is not None:
                out[system].append(n)
        return out

    @cached_property
    def _checks_by_service(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for n, c in self.checks.items():
            if c.enabled and c.service is not None:
                out[c.service].append(n)
        return out

    @cached_property
    def _services_by_system(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for n, s in self.services.items():
            out[s.system].append(n)
        return out

    def checks_of_service(self, service: str) -> list[str]:
        return list(self._checks_by_service.get(service, ()))

    def checks_of_system(self, system: str) -> list[str]:
        return list(self._checks_by_system.get(system, ()))

    def services_of_system(self, system: str) -> list[str]:
        return list(self._services_by_system.get(system, ()))

    def is_protected(self, environment: str) -> bool:
        env = self.environments.get(environment)
        return bool(env and env.protected)

    def rooms_for_system(self, system: str | None) -> list[str]:
        """Rooms subscribed to a system; a room with no systems listed hears everything."""
        return [n for n, r in self.rooms.items() if not r.systems or (system and system in r.systems)]

    # --- forgiving lookups for chat -------------------------------------

    @cached_property
    def _matchers(self) -> dict[str, _Matcher]:
        return {}

    def _find(self, kind: str, names: Callable[[], dict[str, list[str]]], text: str) -> tuple[str | None, list[str]]:
        """(exact name or None, suggestions); `names` (object -> other names) is read once per kind."""
        matcher = self._matchers.get(kind)
        if matcher is None:
            matcher = self._matchers[kind] = _Matcher(names())
        key = normalize(text)
        if key in matcher.exact:
            return matcher.exact[key], []
        return None, matcher.suggest(key)

    def prepare(self) -> None:
        """Build every index now (start-up), not on the first state change or chat question."""
        _ = self._checks_by_system, self._checks_by_service, self._services_by_system
        for find in (self.find_service, self.find_system, self.find_check, self.find_runbook):
            find("")

    def find_service(self, text: str) -> tuple[str | None, list[str]]:
        """(exact name or None, suggestions) for what a person typed."""
        return self._find("service", lambda: {n: [*s.aliases, *([s.title] if s.title else [])]
                                               for n, s in self.services.items()}, text)

    def find_system(self, text: str) -> tuple[str | None, list[str]]:
        return self._find("system", lambda: {n: [s.title] if s.title else [] for n, s in self.systems.items()},
                          text)

    def find_check(self, text: str) -> tuple[str | None, list[str]]:
        return self._find("check", lambda: {n: [] for n in self.checks}, text)

    def find_runbook(self, text: str) -> tuple[str | None, list[str]]:
        return self._find("runbook", lambda: {n: [r.title] if r.title else [] for n, r in self.runbooks.items()},
                          text)


class _Matcher:
    """Normalized names of one kind: exact keys (first object in catalog order wins) and suggestion keys."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.exact: dict[str, str] = {}
        for name, others in names.items():
            for key in (normalize(name), *map(normalize, others)):
                self.exact.setdefault(key, name)
        self.close = {normalize(n): n for n in names}
        for name, others in names.items():
            for other in others:
                self.close.setdefault(normalize(other), name)
        # difflib over 20,000 check names took 230 ms of the event loop for one typo: rank only
        # the keys sharing the most 3-letter runs with what was typed.
        self.grams: dict[str, list[str]] = defaultdict(list)
        for key in self.close:
            for gram in _grams(key):
                self.grams[gram].append(key)

    def suggest(self, key: str) -> list[str]:
        candidates: list[str] = list(self.close)
        if len(candidates) > _SUGGEST_POOL:
            shared: Counter[str] = Counter()
            for gram in _grams(key):
                shared.update(self.grams.get(gram, ()))
            candidates = [k for k, _ in shared.most_common(_SUGGEST_POOL)]
        near = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
        return list(dict.fromkeys(self.close[c] for c in near))


_SUGGEST_POOL = 500


def _grams(key: str) -> set[str]:
    padded = f"^{key}$"
    return {padded[i:i + 3] for i in range(len(padded) - 2)}
