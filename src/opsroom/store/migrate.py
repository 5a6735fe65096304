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

HERE = Path(__file__).parent


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE / "migrations"))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


class SchemaAhead(OpsroomError):
    """The store was migrated by a newer opsroom: this one must not run on it, nor touch it."""

    code = "schema_ahead"


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the schema to head on an existing engine's connection.

    Raises SchemaAhead when the store is at a revision this opsroom does not have (Alembic's own
    error, "Can't locate revision", says nothing of the cause: usually a rollback of opsroom).
    """

    def _run(sync_conn: Connection) -> None:
        cfg = alembic_config(str(engine.url.render_as_string(hide_password=False)))
        cfg.attributes["connection"] = sync_conn
        known = {rev.revision for rev in ScriptDirectory.from_config(cfg).walk_revisions()}
        unknown = sorted(set(MigrationContext.configure(sync_conn).get_current_heads()) - known)
        if unknown:
            raise SchemaAhead(
                f"the store's schema is at revision {', '.join(unknown)}, which opsroom {__version__} does not "
                "know: a newer opsroom has migrated this store",
                hint="run that newer opsroom against it, or restore the store from a backup taken before "
                     "the upgrade")
        command.upgrade(cfg, "head")

    async with engine.begin() as conn:
        await conn.run_sync(_run)
