"""Run Alembic migrations programmatically (start-up, CLI, tests), expand then contract.

Every migration module says what kind of change it is, with one module-level line:

    compat = "expand"    # additive: new tables, nullable columns (or with a server default), indexes
    compat = "contract"  # anything an older opsroom would break on: drops, renames, NOT NULL, rewrites

A module without the line counts as contract (the safe default). Expand migrations are what
make a rolling upgrade possible: an older server keeps serving a store that a newer opsroom
expanded, and `opsroom migrate` may apply them under running servers.

An older opsroom cannot read the newer code's migration files, so the store itself says what
happened to it: each applied revision leaves a row in `schema_compat` (its parent, its kind,
and `serves_from`, the oldest revision of code that can still serve the store). An opsroom
that finds the store at a revision it does not know walks those rows back to its own head:
if every revision on the way is expand, it serves; if one is contract, or the way does not
lead to its head, it refuses (SchemaAhead) and leaves the store alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import Column, Connection, Float, String, Table, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from opsroom import __version__
from opsroom.errors import OpsroomError
from opsroom.store.base import Base
from opsroom.store.engine import normalize_url
from opsroom.store.lease import LeaseHeld, lease_for

log = structlog.get_logger(__name__)
HERE = Path(__file__).parent
EXPAND, CONTRACT = "expand", "contract"
# Extra version directories (a test's "next version" of opsroom); the shipped ones always come first.
EXTRA_VERSION_LOCATIONS: list[str] = []
# One migrator at a time per PostgreSQL database (two rolling-upgrade CLIs started together).
MIGRATE_LOCK_KEY = 0x0B5_A1E3
# An expand migration under running servers waits this long for a table lock, then fails
# (and is retried by the operator) instead of queueing every server's queries behind it.
ONLINE_LOCK_TIMEOUT = "5s"
LIVE_NODE_S = 15.0  # a node heartbeating within this counts as serving (the cluster says dead after 3 s)
# Live by the store's clock, as the cluster counts heartbeats: a migrating host whose clock runs
# ahead must not take live servers for dead ones. [SQLite, PostgreSQL]
LIVE_NODES = (
    text("SELECT kind, node_id, version FROM cluster_nodes WHERE stopped_at IS NULL "
         "AND heartbeat_at >= (julianday('now') - 2440587.5) * 86400.0 - :window"),
    text("SELECT kind, node_id, version FROM cluster_nodes WHERE stopped_at IS NULL "
         "AND heartbeat_at >= extract(epoch from clock_timestamp()) - :window"),
)

schema_compat = Table(
    "schema_compat", Base.metadata,
    Column("revision", String(64), primary_key=True),
    Column("down_revision", String(64), nullable=True),
    Column("kind", String(16), nullable=False),
    Column("serves_from", String(64), nullable=False),
    Column("applied_at", Float, nullable=False),
    Column("by_version", String(32), nullable=False),
)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE / "migrations"))
    locations = [str(HERE / "migrations" / "versions"), *EXTRA_VERSION_LOCATIONS]
    # Alembic splits version_locations on the path separator (os.pathsep by default, ':' here).
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", ":".join(locations))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


class SchemaAhead(OpsroomError):
    """The store was migrated by a newer opsroom in a way this one cannot serve: it must not
    run on it, nor touch it."""

    code = "schema_ahead"


class StoreBusy(OpsroomError):
    """The store needs a contract migration and a server runs on it: migrating under it would break it."""

    code = "store_busy"


def kind_of(script: Script) -> str:
    """A migration's declared kind; no declaration (or a misspelt one) is contract."""
    return EXPAND if getattr(script.module, "compat", None) == EXPAND else CONTRACT


@dataclass(frozen=True)
class Plan:
    """What migrating this store would do: `pending` migrations in order, or the expand-only
    revisions of a newer opsroom the store is at (`ahead`, then nothing is pending)."""

    current: str | None
    pending: tuple[Script, ...]
    ahead: tuple[str, ...] = ()

    @property
    def contract(self) -> tuple[Script, ...]:
        return tuple(s for s in self.pending if kind_of(s) == CONTRACT)


def _config(engine: AsyncEngine, sync_conn: Connection) -> Config:
    cfg = alembic_config(str(engine.url.render_as_string(hide_password=False)))
    cfg.attributes["connection"] = sync_conn
    return cfg


def _plan(cfg: Config, sync_conn: Connection) -> Plan:
    """Pending migrations of a store that is new or older; SchemaAhead for one this code cannot serve."""
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    current = MigrationContext.configure(sync_conn).get_current_heads()
    known = {rev.revision for rev in script.walk_revisions()}
    unknown = sorted(set(current) - known)
    if unknown:
        return Plan(current[0], (), _ahead_but_servable(sync_conn, unknown, known, head))
    at = current[0] if current else None
    pending = tuple(reversed(list(script.iterate_revisions(head, at)))) if at != head else ()
    return Plan(at, pending)


def _ahead(unknown: Sequence[str], why: str = "") -> SchemaAhead:
    # Alembic's own error, "Can't locate revision", says nothing of the usual cause: a rollback.
    return SchemaAhead(
        f"the store's schema is at revision {', '.join(unknown)}, which opsroom {__version__} does not "
        f"know: a newer opsroom has migrated this store{why}",
        hint="run that newer opsroom against it, or restore the store from a backup taken before the upgrade")


def _ahead_but_servable(sync_conn: Connection, unknown: Sequence[str], known: set[str], head: str | None
                        ) -> tuple[str, ...]:
    """The revisions beyond this code's head, when all are expand (read from the store's own
    record, never from code this opsroom lacks); SchemaAhead otherwise."""
    if len(unknown) != 1 or not inspect(sync_conn).has_table("schema_compat"):
        raise _ahead(unknown)
    rows = {r.revision: r for r in sync_conn.execute(select(schema_compat))}
    walked: list[str] = []
    rev: str | None = unknown[0]
    while rev is not None and rev not in known:
        row = rows.get(rev)
        if row is None or len(walked) > len(rows):  # unrecorded, or a loop in a tampered record
            raise _ahead(unknown)
        if row.kind != EXPAND:
            raise _ahead(unknown, f", with a contract migration ({rev}) that opsroom {__version__} cannot serve "
                                  f"(the store needs code at revision {row.serves_from} or later)")
        walked.append(rev)
        rev = row.down_revision
    if rev != head:  # the newer revisions do not build on this code's last one
        raise _ahead(unknown, f" from revision {rev or 'none'}, not from this version's {head}")
    return tuple(reversed(walked))


def _record(sync_conn: Connection, script: ScriptDirectory) -> None:
    """Leave a schema_compat row for every revision this code knows the store has (those applied
    now, and those applied before the record existed); rows of other revisions are kept."""
    schema_compat.create(sync_conn, checkfirst=True)
    have = set(sync_conn.scalars(select(schema_compat.c.revision)))
    serves_from: str | None = None
    for rev in reversed(list(script.walk_revisions())):
        kind = kind_of(rev)
        serves_from = rev.revision if kind == CONTRACT or serves_from is None else serves_from
        if rev.revision not in have:
            down = rev.down_revision if isinstance(rev.down_revision, str) or rev.down_revision is None else None
            sync_conn.execute(schema_compat.insert().values(
                revision=rev.revision, down_revision=down, kind=kind, serves_from=serves_from,
                applied_at=time.time(), by_version=__version__))


def _serialise(sync_conn: Connection) -> None:
    if sync_conn.dialect.name == "postgresql":  # SQLite: the engine's BEGIN IMMEDIATE admits one writer
        sync_conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATE_LOCK_KEY})


async def plan(engine: AsyncEngine) -> Plan:
    """What `upgrade` would do to this store (SchemaAhead if this opsroom cannot serve it)."""
    async with engine.connect() as conn:
        return await conn.run_sync(lambda sync_conn: _plan(_config(engine, sync_conn), sync_conn))


def _sqlite_file(db: str | None) -> bool:
    return bool(db) and db != ":memory:" and Path(str(db)).is_file()


async def store_exists(engine: AsyncEngine) -> bool:
    """True when the engine's database holds an opsroom store (a schema revision). Creates
    nothing: a SQLite file that is not there is never opened, since opening it would create it."""
    if engine.url.get_backend_name() == "sqlite" and not _sqlite_file(engine.url.database):
        return False
    return await current_revision(engine) is not None


async def current_revision(engine: AsyncEngine) -> str | None:
    """The store's schema revision, None where there is no opsroom store."""
    async with engine.connect() as conn:
        heads = await conn.run_sync(lambda sync_conn: MigrationContext.configure(sync_conn).get_current_heads())
    return heads[0] if heads else None


@dataclass(frozen=True)
class Upgraded:
    """What `upgrade` did: the revisions applied, and the contract ones left waiting for `who`."""

    applied: tuple[str, ...]
    waiting: tuple[Script, ...] = ()
    who: str = ""


async def upgrade(engine: AsyncEngine, *, served: str | None = None, defer: bool = True) -> list[str]:
    """Bring the schema to head on an existing engine's connection; the revisions applied.

    SchemaAhead if a newer opsroom migrated it beyond what this one serves; a store a newer one
    only expanded is served as it is. While servers of another version run on the store (live
    cluster nodes, or `served`: who holds SQLite's lease), only the expand migrations before
    the first contract one are applied, under a short lock timeout; the contract ones wait
    until those servers are gone. `defer` (a server starting in a rolling upgrade) logs that
    they wait; otherwise StoreBusy says so, after the expand ones were committed. StoreBusy
    too when an expand migration follows a waiting contract one: this code needs it, and it
    cannot be applied before the contract one.
    """

    def _run(sync_conn: Connection) -> Upgraded:
        cfg = _config(engine, sync_conn)
        _serialise(sync_conn)
        todo = _plan(cfg, sync_conn)  # planned under the lock: another migrator may just have finished
        if todo.ahead:
            return Upgraded(())
        nodes = _live_nodes(sync_conn) if todo.pending else []
        others = [label for label, version in nodes if version != __version__]
        who = served or (f"{len(others)} cluster node(s) of another version run on it: {', '.join(others[:5])}"
                         if others else "")
        pending: list[Script] = list(todo.pending)
        waiting: tuple[Script, ...] = ()
        if who and todo.contract:
            first = next(i for i, s in enumerate(pending) if kind_of(s) == CONTRACT)
            pending, waiting = pending[:first], tuple(pending[first:])
            if any(kind_of(s) == EXPAND for s in waiting):
                raise _busy(todo.contract, who, why="an expand migration of this version follows it")
        if pending and (who or nodes) and sync_conn.dialect.name == "postgresql":
            sync_conn.execute(text(f"SET LOCAL lock_timeout = '{ONLINE_LOCK_TIMEOUT}'"))
        if pending:
            command.upgrade(cfg, pending[-1].revision)
        _record(sync_conn, ScriptDirectory.from_config(cfg))
        return Upgraded(tuple(s.revision for s in pending), waiting, who)

    async with engine.begin() as conn:
        done = await conn.run_sync(_run)
    if done.waiting:
        if not defer:
            raise _busy(done.waiting, done.who, applied=done.applied)
        log.warning("contract migrations wait until no server of another version runs on the store",
                    waiting=[s.revision for s in done.waiting], because=done.who, applied=list(done.applied))
    return list(done.applied)


def _busy(contract: Iterable[Script], who: str, *, why: str = "", applied: Sequence[str] = ()) -> StoreBusy:
    names = ", ".join(f"{s.revision} ({(s.doc or '').splitlines()[0] if s.doc else 'no description'})"
                      for s in contract)
    done = f"expand migrations {', '.join(applied)} applied; " if applied else ""
    return StoreBusy(
        f"{done}the store needs a contract migration for opsroom {__version__} ({names}), and {who}"
        + (f"; {why}" if why else ""),
        hint="a contract migration changes what older servers rely on: upgrade every server to this version "
             "first (expand migrations run under them), then run `opsroom migrate` again; or run the command "
             "with the opsroom that server runs")


def _live_nodes(sync_conn: Connection) -> list[tuple[str, str]]:
    """Cluster nodes (servers, workers) whose heartbeat is fresh: ('kind node_id (version)', version)."""
    if not inspect(sync_conn).has_table("cluster_nodes"):
        return []
    rows = sync_conn.execute(LIVE_NODES[sync_conn.dialect.name == "postgresql"], {"window": LIVE_NODE_S})
    return [(f"{r.kind} {r.node_id} ({r.version})", str(r.version)) for r in rows]


async def upgrade_unless_served(engine: AsyncEngine) -> list[str]:
    """Migrate for a CLI command, which may run beside servers. A store no server runs on is
    migrated whole; under servers of another version only expand migrations are applied (the
    rolling upgrade: the older servers never see the additions), and a contract one is
    refused with StoreBusy (the expand ones before it are applied all the same)."""
    todo = await plan(engine)
    if not todo.pending:
        return []
    held = lease_for(engine, on_lost=lambda _holder: None)  # SQLite's one server; PostgreSQL: cluster nodes
    try:
        await held.acquire()
    except LeaseHeld as exc:
        return await upgrade(engine, served=str(exc), defer=False)  # its version is unknown: take it as older
    try:
        return await upgrade(engine, defer=False)
    finally:
        await held.release()
