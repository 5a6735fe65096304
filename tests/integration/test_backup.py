"""Backup and restore through the service (opsroom.store.backup) on real stores: a SQLite store
written to while it is copied, restored and verified; PostgreSQL refused with the pg_dump way."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from opsroom import server
from opsroom.access import service as access
from opsroom.audit import service as audit
from opsroom.config import Settings
from opsroom.runtime import Runtime
from opsroom.store import backup
from opsroom.store.backup import BackupRefused
from opsroom.store.lease import FileLease
from tests.factories import SYSTEM


async def _store(data: Path) -> Runtime:
    rt = await server.open_runtime(Settings(data=data))
    await access.add_user(rt, actor=SYSTEM, name="first", roles=["viewer"], password=None)
    return rt


async def test_a_store_written_to_while_it_is_copied_restores_whole(tmp_path: Path) -> None:
    rt = await _store(tmp_path / "live")
    stop = asyncio.Event()
    added: list[str] = []

    async def keep_writing() -> None:  # audited changes, each its own transaction
        n = 0
        while not stop.is_set():
            name = f"user{n}"
            await access.add_user(rt, actor=SYSTEM, name=name, roles=["viewer"], password=None)
            await access.create_token(rt, actor=SYSTEM, user=name, name="t")
            added.append(name)
            n += 1

    writer = asyncio.get_running_loop().create_task(keep_writing())
    try:
        while len(added) < 20:
            await asyncio.sleep(0.01)
        copies = [await backup.backup(url=rt.settings.db_url, dest=tmp_path / f"b{i}.db") for i in range(3)]
        while len(added) < 60:  # and the store moved on after the last copy
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await writer
        await rt.close()
    assert [c.audit_records for c in copies] == sorted(c.audit_records for c in copies)
    assert copies[0].audit_records >= 41 and copies[-1].audit_records < 2 * len(added) + 1  # taken mid-flight
    for copy in copies:
        assert stat.S_IMODE(copy.path.stat().st_mode) == 0o600
        assert copy.revision and copy.size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
    # Each copy restores to a store whose audit chain is intact and matches what it holds.
    for i, copy in enumerate(copies):
        restored = await backup.restore(source=copy.path, data=tmp_path / f"r{i}")
        assert restored.audit_records == copy.audit_records
        rt2 = await server.open_runtime(Settings(data=tmp_path / f"r{i}"))
        try:
            result = await audit.verify(rt2)
            assert result.ok and result.records == copy.audit_records, result
            users = await access.list_users(rt2, actor=SYSTEM)
            # whole transactions only: each user came with its record (its token's may be after the copy)
            assert len(users) == 1 + copy.audit_records // 2
        finally:
            await rt2.close()


async def test_restore_never_under_a_running_server_nor_over_a_store_without_force(tmp_path: Path) -> None:
    rt = await _store(tmp_path / "live")
    try:
        await access.add_user(rt, actor=SYSTEM, name="in-the-backup", roles=["viewer"], password=None)
        copy = await backup.backup(url=rt.settings.db_url, dest=tmp_path / "b.db")
    finally:
        await rt.close()
    target = tmp_path / "other"
    rt = await _store(target)
    await rt.close()
    before = (target / "opsroom.db").read_bytes()
    held = FileLease(target / "opsroom.db.server-lock")
    await held.acquire()
    try:
        with pytest.raises(BackupRefused, match="a server runs on the store") as busy:
            await backup.restore(source=copy.path, data=target, force=True)
        assert busy.value.hint == "stop that server first, then restore"
    finally:
        await held.release()
    with pytest.raises(BackupRefused, match="already holds a store"):
        await backup.restore(source=copy.path, data=target)
    assert (target / "opsroom.db").read_bytes() == before
    await backup.restore(source=copy.path, data=target, force=True)
    kept = [p for p in target.iterdir() if p.name.startswith("opsroom.db.replaced-")]
    assert [p.read_bytes() for p in kept if not p.name.endswith(("-wal", "-shm"))] == [before]
    with sqlite3.connect(target / "opsroom.db") as db:
        assert db.execute("SELECT name FROM users ORDER BY id").fetchall() == [("first",), ("in-the-backup",)]


async def test_backup_refuses_to_replace_a_file_without_force(tmp_path: Path) -> None:
    rt = await _store(tmp_path / "live")
    await rt.close()
    (tmp_path / "b.db").write_text("yesterday's backup")
    with pytest.raises(BackupRefused, match="already exists"):
        await backup.backup(url=rt.settings.db_url, dest=tmp_path / "b.db")
    assert (tmp_path / "b.db").read_text() == "yesterday's backup"
    done = await backup.backup(url=rt.settings.db_url, dest=tmp_path / "b.db", force=True)
    with sqlite3.connect(done.path) as db:
        assert db.execute("SELECT count(*) FROM users").fetchone() == (1,)


async def test_backup_of_a_postgresql_store_names_pg_dump(pg_own_url: str) -> None:
    url = pg_own_url.replace("postgresql://", "postgresql+asyncpg://opsroom:s3cret-pw@", 1).replace(
        "postgres@", "", 1)
    with pytest.raises(BackupRefused) as refused:
        await backup.backup(url=url, dest=Path(os.devnull))
    assert "this store is PostgreSQL" in refused.value.message
    assert refused.value.hint and "pg_dump --format=custom" in refused.value.hint and "pg_restore" in refused.value.hint
    assert "s3cret-pw" not in refused.value.hint  # the password is never printed
