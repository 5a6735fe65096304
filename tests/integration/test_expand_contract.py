"""Expand/contract migrations: an older opsroom serves a store a newer one only expanded, and
refuses one it contracted, unrecorded or diverging; expand is applied under a running server,
contract is not. On both stores, with a real "next version" (tests/fixtures/migrations_*)."""

from __future__ import annotations

import time
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from opsroom import __version__, server
from opsroom.access import service as access
from opsroom.audit import service as audit
from opsroom.config import Settings
from opsroom.store import migrate
from opsroom.store.engine import make_engine
from opsroom.store.lease import lease_for
from opsroom.store.migrate import (
    CONTRACT,
    EXPAND,
    SchemaAhead,
    StoreBusy,
    alembic_config,
    kind_of,
    plan,
    upgrade,
    upgrade_unless_served,
)
from tests.factories import SYSTEM

FIXTURES = Path(__file__).parent.parent / "fixtures"
NEXT, NEXT_CONTRACT = str(FIXTURES / "migrations_next"), str(FIXTURES / "migrations_next_contract")
THEN_CONTRACT = str(FIXTURES / "migrations_then_contract")  # after NEXT
AFTER_CONTRACT = str(FIXTURES / "migrations_after_contract")  # after NEXT_CONTRACT
SHIPPED_HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("pg_own_url").replace("postgresql://", "postgresql+asyncpg://")
    eng = make_engine(url)
    try:
        yield eng
    finally:
        await eng.dispose()


class Version:
    """Which opsroom this process is: N (shipped) or N+1 (shipped + one more directory)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch

    def n(self) -> None:
        self.monkeypatch.setattr(migrate, "EXTRA_VERSION_LOCATIONS", [])

    def next(self, directory: str = NEXT) -> None:
        self.monkeypatch.setattr(migrate, "EXTRA_VERSION_LOCATIONS", [directory])


@pytest.fixture
def version(monkeypatch: pytest.MonkeyPatch) -> Iterator[Version]:
    v = Version(monkeypatch)
    v.n()
    yield v


async def _one(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def _columns(engine: AsyncEngine, table: str) -> set[str]:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: {col["name"] for col in inspect(c).get_columns(table)})


def test_a_migration_without_a_declaration_counts_as_contract() -> None:
    def script(**attrs: Any) -> Any:
        return types.SimpleNamespace(module=types.SimpleNamespace(**attrs))

    assert kind_of(script()) == CONTRACT
    assert kind_of(script(compat="Expand")) == CONTRACT  # misspelt: not trusted
    assert kind_of(script(compat="expand")) == EXPAND
    shipped = {s.revision: kind_of(s) for s in ScriptDirectory.from_config(alembic_config("sqlite://")).walk_revisions()}
    assert shipped["0001"] == CONTRACT and all(shipped[r] == EXPAND for r in ("0002", "0005", "0006", "0007"))


async def test_every_applied_revision_is_recorded_with_the_oldest_code_that_serves_it(
        engine: AsyncEngine, version: Version) -> None:
    assert await upgrade(engine)  # a new store: everything applied
    async with engine.connect() as conn:
        rows = {r.revision: r for r in await conn.execute(text("SELECT * FROM schema_compat"))}
    assert rows["0001"].kind == CONTRACT and rows["0001"].serves_from == "0001"
    assert rows["0007"].kind == EXPAND and rows["0007"].down_revision == "0006"
    assert rows[SHIPPED_HEAD].serves_from in rows  # the last contract one, at or before the head
    version.next()
    assert await upgrade(engine) == ["next_expand"]
    expand = await _one(engine, "SELECT serves_from FROM schema_compat WHERE revision = 'next_expand'")
    assert expand == rows[SHIPPED_HEAD].serves_from  # an expand keeps the oldest code that serves it


async def test_an_older_opsroom_serves_a_store_a_newer_one_only_expanded(
        engine: AsyncEngine, version: Version, tmp_path: Path) -> None:
    await upgrade(engine)
    version.next()
    await upgrade(engine)
    assert {"nickname"} <= await _columns(engine, "users")
    version.n()
    seen = await plan(engine)
    assert seen.ahead == ("next_expand",) and not seen.pending
    assert await upgrade(engine) == [] and await upgrade_unless_served(engine) == []
    assert await _one(engine, "SELECT version_num FROM alembic_version") == "next_expand"  # left as it is
    # The older code's services on it: a user added, tokens made, the audit chain intact.
    url = engine.url.render_as_string(hide_password=False)
    rt = await server.open_runtime(Settings(data=tmp_path / "data", database_url=url))
    try:
        await access.add_user(rt, actor=SYSTEM, name="olduser", roles=["viewer"], password=None)
        assert await access.create_token(rt, actor=SYSTEM, user="olduser", name="t")
        assert (await audit.verify(rt)).ok
    finally:
        await rt.close()
    assert await _one(engine, "SELECT nickname FROM users WHERE name = 'olduser'") is None


async def test_an_older_opsroom_refuses_a_store_a_newer_one_contracted(engine: AsyncEngine, version: Version) -> None:
    await upgrade(engine)
    version.next(NEXT_CONTRACT)
    assert await upgrade(engine) == ["next_contract"]
    assert "catalog_hash" not in await _columns(engine, "executions")
    version.n()
    with pytest.raises(SchemaAhead) as refused:
        await upgrade(engine)
    assert "with a contract migration (next_contract)" in refused.value.message
    assert "code at revision next_contract or later" in refused.value.message
    assert "a newer opsroom has migrated this store" in refused.value.message and refused.value.hint


@pytest.mark.parametrize("tamper", ["row removed", "row says it builds on an older revision", "record dropped"])
async def test_an_unrecorded_or_diverging_newer_store_is_refused(engine: AsyncEngine, version: Version,
                                                                  tamper: str) -> None:
    await upgrade(engine)
    version.next()
    await upgrade(engine)
    async with engine.begin() as conn:
        if tamper == "row removed":
            await conn.execute(text("DELETE FROM schema_compat WHERE revision = 'next_expand'"))
        elif tamper == "row says it builds on an older revision":
            await conn.execute(text("UPDATE schema_compat SET down_revision = '0005' WHERE revision = 'next_expand'"))
        else:
            await conn.execute(text("DROP TABLE schema_compat"))
    version.n()
    with pytest.raises(SchemaAhead, match="a newer opsroom has migrated this store"):
        await plan(engine)


async def _heartbeat(engine: AsyncEngine, node: str, at: float, version: str = "0.0.9") -> None:
    async with engine.begin() as conn:  # another server of the cluster, heartbeating at `at`
        await conn.execute(text(
            "INSERT INTO cluster_nodes (node_id, kind, host, pid, version, started_at, heartbeat_at, info) "
            "VALUES (:n, 'server', 'b', 1, :v, :t, :t, '{}')"), {"n": node, "t": at, "v": version})


async def test_expand_is_applied_under_a_running_server_and_contract_is_not(engine: AsyncEngine,
                                                                            version: Version) -> None:
    await upgrade(engine)
    # A running server of the older version: SQLite's holds the store's lease; PostgreSQL's heartbeats.
    held = lease_for(engine, on_lost=lambda _holder: None)
    await held.acquire()
    await _heartbeat(engine, "srv-a", time.time())
    try:
        version.next(NEXT_CONTRACT)
        with pytest.raises(StoreBusy) as busy:
            await upgrade_unless_served(engine)
        assert "needs a contract migration" in busy.value.message and "next_contract" in busy.value.message
        assert busy.value.hint and "upgrade every server to this version first" in busy.value.hint
        assert await upgrade(engine) == []  # a newer server starting beside it: the contract one waits
        assert await _one(engine, "SELECT version_num FROM alembic_version") == SHIPPED_HEAD  # untouched
        assert "catalog_hash" in await _columns(engine, "executions")
        version.next(NEXT)
        assert await upgrade_unless_served(engine) == ["next_expand"]  # the rolling upgrade
    finally:
        await held.release()
    assert await _one(engine, "SELECT version_num FROM alembic_version") == "next_expand"


async def test_a_contract_migration_waits_for_the_nodes_of_other_versions(engine: AsyncEngine,
                                                                          version: Version) -> None:
    await upgrade(engine)
    await _heartbeat(engine, "srv-b", time.time())
    await _heartbeat(engine, "srv-c", time.time() - 3600)  # long dead: not counted
    await _heartbeat(engine, "srv-d", time.time(), version=__version__)  # upgraded already: not in the way
    version.next(NEXT_CONTRACT)
    with pytest.raises(StoreBusy, match=r"1 cluster node\(s\) of another version run on it: server srv-b"):
        await upgrade(engine, defer=False)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE cluster_nodes SET heartbeat_at = heartbeat_at - 3600 WHERE node_id = 'srv-b'"))
    assert await upgrade(engine, defer=False) == ["next_contract"]  # only this version runs now


async def test_the_expand_migrations_before_a_contract_one_are_applied_under_older_servers(
        engine: AsyncEngine, version: Version, monkeypatch: pytest.MonkeyPatch) -> None:
    await upgrade(engine)
    await _heartbeat(engine, "srv-b", time.time())
    monkeypatch.setattr(migrate, "EXTRA_VERSION_LOCATIONS", [NEXT, THEN_CONTRACT])
    with pytest.raises(StoreBusy) as busy:
        await upgrade_unless_served(engine)
    assert busy.value.message.startswith("expand migrations next_expand applied; the store needs a contract")
    assert await _one(engine, "SELECT version_num FROM alembic_version") == "next_expand"  # committed
    assert await upgrade(engine) == []  # a server of this version starts: then_contract waits
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE cluster_nodes SET stopped_at = heartbeat_at"))
    assert await upgrade(engine) == ["then_contract"]


async def test_an_expand_migration_after_a_waiting_contract_one_is_refused(engine: AsyncEngine,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    await upgrade(engine)
    await _heartbeat(engine, "srv-b", time.time())
    monkeypatch.setattr(migrate, "EXTRA_VERSION_LOCATIONS", [NEXT_CONTRACT, AFTER_CONTRACT])
    with pytest.raises(StoreBusy, match="an expand migration of this version follows it"):
        await upgrade(engine)  # even for a server starting: it would run without what it needs
    assert await _one(engine, "SELECT version_num FROM alembic_version") == SHIPPED_HEAD
