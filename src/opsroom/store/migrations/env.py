"""Alembic environment: runs on a connection handed in by opsroom.store.migrate."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection

from opsroom.store.base import Base, import_models
from opsroom.store.engine import make_engine
from opsroom.store.migrate import schema_compat  # noqa: F401  (its table is in Base.metadata too)

import_models()
target_metadata = Base.metadata
config = context.config


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    conn: Any = config.attributes.get("connection")
    if conn is not None:
        _configure(conn)
        return

    async def _standalone() -> None:
        engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
        async with engine.begin() as c:
            await c.run_sync(_configure)
        await engine.dispose()

    asyncio.run(_standalone())


run()
