"""Run Alembic migrations programmatically (start-up, CLI, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from opsroom import __version__
from opsroom.errors import OpsroomError
from opsroom.store.engine import normalize_url
from opsroom.store.lease import LeaseHeld, lease_for

HERE = Path(__file__).parent


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE / "migrations"))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


class SchemaAhead(OpsroomError):
    """The store was migrated by a newer opsroom: this one must not run on it, nor touch it."""

    code = "schema_ahead"


class StoreBusy(OpsroomError):
    """The store needs migrating and a server runs on it: migrating under it would break it."""

    code = "store_busy"


def _config(engine: AsyncEngine, sync_conn: Connection) -> Config:
    cfg = alembic_config(str(engine.url.render_as_string(hide_password=False)))
    cfg.attributes["connection"] = sync_conn
    return cfg


def _behind(cfg: Config, sync_conn: Connection) -> bool:
    """True when the store is new or older than this opsroom; SchemaAhead when it is newer."""
    script = ScriptDirectory.from_config(cfg)
    current = set(MigrationContext.configure(sync_conn).get_current_heads())
    unknown = sorted(current - {rev.revision for rev in script.walk_revisions()})
    if unknown:
        # Alembic's own error, "Can't locate revision", says nothing of the usual cause: a rollback.
        raise SchemaAhead(
            f"the store's schema is at revision {', '.join(unknown)}, which opsroom {__version__} does not "
            "know: a newer opsroom has migrated this store",
            hint="run that newer opsroom against it, or restore the store from a backup taken before the upgrade")
    return current != set(script.get_heads())


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


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the schema to head on an existing engine's connection (SchemaAhead if it is newer)."""

    def _run(sync_conn: Connection) -> None:
        cfg = _config(engine, sync_conn)
        if _behind(cfg, sync_conn):
            command.upgrade(cfg, "head")

    async with engine.begin() as conn:
        await conn.run_sync(_run)


async def upgrade_unless_served(engine: AsyncEngine) -> None:
    """Migrate for a CLI command, which may run beside a server: only a store no server holds is
    migrated, so a newer CLI never changes the schema under an older server that still runs."""
    async with engine.connect() as conn:
        behind = await conn.run_sync(lambda sync_conn: _behind(_config(engine, sync_conn), sync_conn))
    if not behind:
        return
    held = lease_for(engine, on_lost=lambda _holder: None)
    try:
        await held.acquire()
    except LeaseHeld as exc:
        raise StoreBusy(f"the store needs a schema upgrade for opsroom {__version__}, and {exc}",
                        hint="stop that server and start this version, which upgrades the store as it "
                             "starts; or run the command with the opsroom that server runs") from None
    try:
        await upgrade(engine)
    finally:
        await held.release()
