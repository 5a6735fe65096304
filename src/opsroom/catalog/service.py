"""The running catalog's version, and reloading it: the new one validated whole, then swapped in.

A reload reads the server's catalog path again. Any problem refuses it whole and the running
catalog stays; otherwise the new one replaces it in one step of the event loop (nothing awaits
between the swap and the engines following it), so no check, rule or room sees half of each.
Rooms, sockets and running executions are never dropped: a running execution keeps the runbook
it started with (runbooks/executor.py), a run awaiting approval for a runbook changed since is
cancelled (no approval could ever start it), and the checks scheduler adds, drops and reschedules.
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select

from opsroom.access.identity import Actor
from opsroom.access.reconcile import reconcile_users
from opsroom.approvals.models import ApprovalRow
from opsroom.audit import service as audit
from opsroom.catalog.catalog import Catalog, Location
from opsroom.catalog.errors import CatalogError, Problem
from opsroom.catalog.loader import load_catalog
from opsroom.errors import Conflict, Invalid, OpsroomError, PermissionDenied
from opsroom.events import CatalogReloaded
from opsroom.integrity import service as integrity
from opsroom.runbooks import service as execution_service
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime

log = structlog.get_logger(__name__)

# A catalog file larger than this is a mistake (a log copied in) or an attack on the loader's
# memory: a 20,000-check catalog is ~3 MB of YAML.
MAX_FILE_BYTES = 32 * 2**20
MAX_FILES = 10_000
# Kinds compared by a reload, in the order people read them. Platforms, alert sources and hosts
# hold credentials: they are compared here but left out of the version hash (Catalog.content_hash),
# so no hash over a secret is ever shown.
KINDS = ("environments", "systems", "services", "checks", "runbooks", "rules", "rooms", "roles", "users",
         "platforms", "alert_sources", "hosts", "aliases")
COUNTED = ("environments", "systems", "services", "checks", "runbooks", "rules", "rooms", "roles", "users",
           "platforms", "alert_sources", "hosts", "aliases")
REFUSED = "the catalog was refused"  # how a refusal's message starts (the CLI's exit 1 reads it)
SIGNAL_ACTOR = Actor("signal:SIGHUP", "system", frozenset({"system"}), frozenset({"*"}))


@dataclass(frozen=True)
class Change:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def summary(self) -> str:
        return " ".join(f"{sign}{len(names)}" for sign, names in
                        (("+", self.added), ("-", self.removed), ("~", self.changed)) if names)


@dataclass(frozen=True)
class CatalogVersion:
    hash: str
    loaded_at: datetime
    counts: dict[str, int]


@dataclass(frozen=True)
class Reloaded:
    old_hash: str
    version: CatalogVersion
    changes: dict[str, Change]  # only the kinds that changed
    notes: list[str] = field(default_factory=list)  # what a reload cannot apply, or people should know
    took_s: float = 0.0

    def summary(self) -> str:
        if not self.changes:
            return "no changes"
        return "; ".join(f"{kind} {change.summary()}" for kind, change in self.changes.items())


class CatalogRefused(Invalid):
    """The new catalog has problems: nothing was applied. Carries them at file:line:column."""

    code = "catalog_invalid"

    def __init__(self, error: CatalogError) -> None:
        count = len(error.problems)
        super().__init__(f"{REFUSED} ({count}{'+' if error.truncated else ''} "
                         f"problem{'s' if count != 1 else ''}); the running catalog is unchanged:\n{error.render()}",
                         hint="fix what each line names, then reload again")
        self.problems = error.problems
        self.truncated = error.truncated


# --- reading ------------------------------------------------------------------


def read_catalog(path: Path) -> Catalog:
    """The catalog at `path`, validated (start-up and reload): the loader's checks, and first the
    files themselves: none larger than MAX_FILE_BYTES, none a link leading out of the directory
    (the server's account may read files the catalog's authors must not quote back into errors)."""
    problems = _file_problems(path)
    if problems:
        raise CatalogError(problems)
    return load_catalog(path)


def _file_problems(root: Path) -> list[Problem]:
    if not root.is_dir():
        return _too_large(root) if root.is_file() else []  # the loader names a missing path
    inside = root.resolve()
    problems: list[Problem] = []
    files = 0
    # The loader's selection (*.yaml/*.yml, nothing hidden; linked directories are not entered).
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".yaml", ".yml") or any(p.startswith(".") for p in path.relative_to(root).parts):
            continue
        files += 1
        if path.is_symlink() and not path.resolve().is_relative_to(inside):
            problems.append(Problem(Location(str(path), 1, 1),
                                    "this file is a link that leads outside the catalog directory",
                                    "copy the file into the catalog directory, or link the whole directory"))
        elif path.is_file():
            problems += _too_large(path)
    if files > MAX_FILES:
        problems.append(Problem(None, f"the catalog directory holds {files} YAML files, more than {MAX_FILES}",
                                "merge files, or point the catalog at the directory that holds only the catalog"))
    return problems


def _too_large(path: Path) -> list[Problem]:
    try:
        size = path.stat().st_size
    except OSError:
        return []  # the loader reports a file it cannot read
    if size <= MAX_FILE_BYTES:
        return []
    return [Problem(Location(str(path), 1, 1), f"this file is {size / 2**20:.0f} MB, more than the "
                    f"{MAX_FILE_BYTES // 2**20} MB a catalog file may be", "split it into several files")]


def _read_and_compare(path: Path, old: Catalog) -> tuple[Catalog, str, dict[str, Change]]:
    """Off the event loop: loading, indexing, hashing and comparing 20,000 checks takes seconds."""
    catalog = read_catalog(path)
    catalog.prepare()
    return catalog, catalog.content_hash, compare(old, catalog)


# --- comparing ----------------------------------------------------------------


def compare(old: Catalog, new: Catalog) -> dict[str, Change]:
    """Added, removed and changed names per kind (aliases by pattern); kinds unchanged left out."""
    out: dict[str, Change] = {}
    for kind in KINDS:
        before, after = _named(old, kind), _named(new, kind)
        change = Change(tuple(sorted(after.keys() - before.keys())), tuple(sorted(before.keys() - after.keys())),
                        tuple(sorted(n for n in before.keys() & after.keys() if before[n] != after[n])))
        if change:
            out[kind] = change
    return out


def _named(catalog: Catalog, kind: str) -> dict[str, Any]:
    if kind == "aliases":
        return {a.pattern: a for a in catalog.aliases}
    objects: dict[str, Any] = getattr(catalog, kind)
    return objects


# --- the service functions ------------------------------------------------------


def version_of(rt: Runtime) -> CatalogVersion:
    cat = rt.catalog
    counts = {kind: len(_named(cat, kind)) for kind in COUNTED}
    return CatalogVersion(rt.catalog_hash, datetime.fromtimestamp(rt.catalog_loaded_at, UTC), counts)


async def get_version(rt: Runtime, *, actor: Actor) -> CatalogVersion:
    """Which catalog runs now: its hash (as `opsroom catalog validate` prints it), when it was loaded."""
    if not actor.can("status.read"):
        await audit.append_alone(rt, actor=actor, action="catalog.read", target="catalog", outcome="refused",
                                 details={"reason": "missing permission status.read"})
        actor.require("status.read", what="see the catalog's version")
    version = version_of(rt)
    await audit.append_alone(rt, actor=actor, action="catalog.read", target="catalog",
                             details={"hash": version.hash})
    return version


async def reload_catalog(rt: Runtime, *, actor: Actor, wait: bool = False) -> Reloaded:
    """Load the server's catalog path again and apply it, or refuse it whole (CatalogRefused).

    Admins only. One reload at a time: another one asked meanwhile is refused (Conflict), or with
    `wait` (SIGHUP) waits for the running one and then reads the files again.
    """
    if not actor.can("*"):
        await audit.append_alone(rt, actor=actor, action="catalog.reload", target="catalog", outcome="refused",
                                 details={"reason": "not an admin"})
        raise PermissionDenied(f"{actor.name} may not reload the catalog",
                               hint="only an admin reloads it (or send SIGHUP to the server on its host); "
                                    f"your roles: {', '.join(sorted(actor.roles)) or 'none'}")
    path = rt.settings.catalog
    if path is None:
        raise Invalid("this server runs without a catalog path, so there is nothing to reload",
                      hint="start it with --catalog DIR (or OPSROOM_CATALOG)")
    lock = rt.catalog_reload_lock
    if lock.locked() and not wait:
        running = rt.catalog_reload_by or "someone"
        await audit.append_alone(rt, actor=actor, action="catalog.reload", target="catalog", outcome="refused",
                                 details={"reason": f"a reload asked by {running} is running"})
        raise Conflict(f"a catalog reload asked by {running} is running now",
                       hint="wait for it to finish (a second or two), then reload again if the files changed since")
    async with lock:
        rt.catalog_reload_by = actor.name
        try:
            return await _reload(rt, actor=actor, path=path)
        finally:
            rt.catalog_reload_by = None


async def _reload(rt: Runtime, *, actor: Actor, path: Path) -> Reloaded:
    started = time.monotonic()
    old, old_hash = rt.catalog, rt.catalog_hash
    # The collector off while the new catalog is built: its full passes over the hundreds of
    # thousands of new objects would each hold the loop (and the GIL) for most of a second.
    collecting = gc.isenabled()
    gc.disable()
    try:
        new, new_hash, changes = await asyncio.to_thread(_read_and_compare, path, old)
    except CatalogError as exc:
        refused = CatalogRefused(exc)
        first = [p.render() for p in exc.problems[:10]]
        await audit.append_alone(rt, actor=actor, action="catalog.reload", target="catalog", outcome="refused",
                                 details={"running": old_hash, "problems": len(exc.problems), "first": first})
        log.warning("catalog reload refused; the running catalog stays", by=actor.name, problems=len(exc.problems),
                    first=first[0] if first else "")
        raise refused from None
    finally:
        if collecting:
            gc.enable()
    # The swap and everything that follows the catalog in memory, with no await in between.
    rt.use_catalog(new, content_hash=new_hash)
    if rt.monitor is not None:
        checks = changes.get("checks", Change())
        rt.monitor.catalog_changed(old, touched=[*checks.added, *checks.removed, *checks.changed])
    # Listeners follow in publish itself (the rooms' routes: chat/hub.py), still with no await.
    rt.bus.publish(CatalogReloaded(old_hash=old_hash, new_hash=new_hash, by=actor.name, changed=sorted(changes),
                                   source="catalog"))
    _follow_alert_sources(rt)
    _settle_memory()
    notes = _notes(rt, old, changes)
    if "users" in changes or "roles" in changes:
        await reconcile_users(rt)
    notes += await _close_stale_requests(rt, actor=actor, changes=changes)
    result = Reloaded(old_hash, version_of(rt), changes, notes, time.monotonic() - started)
    details = {"old": old_hash, "new": new_hash, "notes": notes,
               "changes": {k: {"added": _listed(c.added), "removed": _listed(c.removed),
                               "changed": _listed(c.changed)} for k, c in changes.items()}}
    await audit.append_alone(rt, actor=actor, action="catalog.reload", target="catalog", outcome="applied",
                             details=details)
    await _accept_catalog_files(rt, actor=actor, path=path)
    log.info("catalog reloaded", by=actor.name, old=old_hash[:12], new=new_hash[:12], changes=result.summary(),
             notes=notes, took_ms=round(result.took_s * 1000, 1))
    return result


async def _accept_catalog_files(rt: Runtime, *, actor: Actor, path: Path) -> None:
    """A reload is the admin's deliberate act of applying the catalog's files as they are: their
    file integrity changes are accepted with it (audited as integrity.accept), so the protected
    runbooks they define are not left quarantined. Scripts the runbooks run are not catalog
    files: a change to one still waits for `opsroom integrity accept`. Until change control
    (a second person approving a protected change) lands, this is one person's approval."""
    try:
        await integrity.accept(rt, actor=actor, paths=[str(path)])
    except OpsroomError as exc:  # e.g. a baseline that cannot be trusted: only a whole accept helps
        log.warning("catalog reloaded, but its files' integrity changes were not accepted",
                    reason=exc.message, hint=exc.hint)


AUDITED_NAMES = 1000  # per kind and list: a first load of 20,000 checks is named by its count


def _listed(names: tuple[str, ...]) -> list[str]:
    return list(names) if len(names) <= AUDITED_NAMES else [*names[:AUDITED_NAMES], f"… {len(names)} in all"]


def _settle_memory() -> None:
    """One collection now (the load's own cyclic garbage), then the new catalog moves out of the
    collector's view, as start-up does (server.py): it lives until the next reload."""
    gc.collect()
    gc.freeze()


def _follow_alert_sources(rt: Runtime) -> None:
    book = rt.alerts
    if book is None:
        return
    book.sources, book.configs = {}, {}
    book.build_sources()  # settings were checked by each kind's Config when the catalog loaded


def _notes(rt: Runtime, old: Catalog, changes: dict[str, Change]) -> list[str]:
    notes = []
    platforms = changes.get("platforms")
    if platforms:
        names = ", ".join([*platforms.added, *platforms.removed, *platforms.changed])
        notes.append(f"chat platforms changed ({names}): their connections are made at start; "
                     "restart the server to apply them")
    platforms_here = rt.live_rooms.platforms
    if platforms_here and "rooms" in changes:
        bound = {(r.name, b) for r in rt.catalog.rooms.values() for b in r.bind}
        bound -= {(r.name, b) for r in old.rooms.values() for b in r.bind}
        joining = {p.name for p in platforms_here.values() if not p.implicit}  # the web room needs no join
        added = {p for _, b in bound if (p := b.partition(":")[0]) in joining}
        if added:
            notes.append(f"rooms bound to new channels on {', '.join(sorted(added))}: lines from them reach "
                         "their room now; a platform that joins channels at start joins them at the next restart")
    return notes


async def _close_stale_requests(rt: Runtime, *, actor: Actor, changes: dict[str, Change]) -> list[str]:
    """Open requests for a runbook the reload changed or removed can never be approved (an approval
    covers the version asked for; approvals/service.py). Left open, each would hold its run's lock
    until it expires and refuse the "ask again" as a duplicate: they are cancelled now, announced in
    their room as any cancel is."""
    runbooks = changes.get("runbooks")
    if runbooks is None or not (runbooks.changed or runbooks.removed):
        return []
    async with rt.read() as s:
        ids = list((await s.execute(
            select(ExecutionRow.id).join(ApprovalRow, ApprovalRow.id == ExecutionRow.approval_id)
            .where(ApprovalRow.status == "open", ExecutionRow.status == "awaiting_approval",
                   ExecutionRow.runbook.in_([*runbooks.changed, *runbooks.removed]))
            .order_by(ExecutionRow.id))).scalars())
    closer = Actor(f"catalog reload ({actor.name})", "system", frozenset({"system"}), frozenset({"*"}))
    closed = []
    for execution_id in ids:
        try:
            await execution_service.cancel_execution(rt, actor=closer, execution_id=execution_id)
            closed.append(execution_id)
        except OpsroomError:
            pass  # decided or expired meanwhile: nothing left to close
    if not closed:
        return []
    shown = ", ".join(f"#{i}" for i in closed[:10]) + (" …" if len(closed) > 10 else "")
    return [f"executions awaiting approval for a runbook changed or removed were cancelled ({shown}): "
            "an approval covers the version asked for; ask again"]


def reload_log_line(result: Reloaded) -> str:
    """One line for a log or a terminal."""
    return f"catalog {result.old_hash[:12]} -> {result.version.hash[:12]}: {result.summary()}"

