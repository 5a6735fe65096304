"""The migrations build exactly the tables the models describe, on both stores: a column added to a
model without a migration (or the other way round) fails here, not in a production upgrade."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from opsroom.store.base import Base, import_models
from opsroom.store.engine import make_engine
from opsroom.store.migrate import upgrade


def _diff(conn: Connection) -> list[object]:
    import_models()
    ctx = MigrationContext.configure(conn, opts={"compare_type": False})
    # Index names differ by naming convention on some old tables; columns and tables must match.
    return [d for d in compare_metadata(ctx, Base.metadata)
            if not (isinstance(d, tuple) and d[0] in ("add_index", "remove_index"))]


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_migrations_match_the_models(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}" if store == "sqlite" else request.getfixturevalue("pg_own_url")
    if store == "postgresql":
        url = url.replace("postgresql://", "postgresql+asyncpg://")
    engine = make_engine(url)
    try:
        await upgrade(engine)
        async with engine.connect() as conn:
            diff = await conn.run_sync(_diff)
        assert diff == [], diff
    finally:
        await engine.dispose()
