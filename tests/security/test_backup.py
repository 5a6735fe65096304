"""What an attacker tries against `opsroom backup` / `restore`: a planted link at the backup's
name, a world-writable directory, and restores from files that are not (whole, servable) opsroom
stores. Each is refused clearly, with nothing half-written anywhere."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from opsroom import server
from opsroom.config import Settings
from opsroom.errors import OpsroomError
from opsroom.store import backup
from opsroom.store.backup import BackupRefused
from opsroom.store.migrate import SchemaAhead
from tests.e2e.harness import cli


@pytest.fixture
async def store(tmp_path: Path) -> str:
    data = tmp_path / "live"
    rt = await server.open_runtime(Settings(data=data))
    await rt.close()
    return rt.settings.db_url


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".partial" in p.name or p.name.startswith("."))


async def test_a_link_planted_at_the_backup_name_is_never_followed(store: str, tmp_path: Path) -> None:
    safe = tmp_path / "backups"
    safe.mkdir(mode=0o700)
    victim = tmp_path / "authorized_keys"
    victim.write_text("ssh-ed25519 AAAA owner\n")
    (safe / "nightly.db").symlink_to(victim)
    for force in (False, True):
        with pytest.raises(BackupRefused, match="is a symbolic link") as refused:
            await backup.backup(url=store, dest=safe / "nightly.db", force=force)
        assert refused.value.hint
    assert victim.read_text() == "ssh-ed25519 AAAA owner\n"
    assert (safe / "nightly.db").is_symlink() and _leftovers(safe) == []


@pytest.mark.parametrize("mode", [0o777, 0o1777])
async def test_a_backup_is_not_written_where_every_user_can_write(store: str, tmp_path: Path, mode: int) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)  # /tmp-like, sticky or not
    with pytest.raises(BackupRefused, match="writable by every user") as refused:
        await backup.backup(url=store, dest=shared / "b.db")
    assert refused.value.hint and "only you and root can write" in refused.value.hint
    assert list(shared.iterdir()) == []


async def test_the_backup_is_private_whatever_the_umask(store: str, tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        done = await backup.backup(url=store, dest=tmp_path / "b.db")
    finally:
        os.umask(old)
    assert stat.S_IMODE(done.path.stat().st_mode) == 0o600


async def test_the_store_itself_is_not_a_backup_destination(store: str, tmp_path: Path) -> None:
    with pytest.raises(BackupRefused, match="is the store itself"):
        await backup.backup(url=store, dest=tmp_path / "live" / "opsroom.db-wal")


def _not_sqlite(path: Path) -> None:
    path.write_bytes(b"#!/bin/sh\nrm -rf /\n" * 100)


def _sqlite_not_opsroom(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (t TEXT)")
        db.execute("INSERT INTO notes VALUES ('hello')")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


async def _truncated(path: Path, store: str) -> None:
    whole = await backup.backup(url=store, dest=path.with_suffix(".whole"))
    data = whole.path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


async def _newer(path: Path, store: str) -> None:
    await backup.backup(url=store, dest=path)
    with sqlite3.connect(path) as db:  # as an opsroom of a later, contracting, release leaves it
        db.execute("UPDATE alembic_version SET version_num = '0099_from_the_future'")


@pytest.mark.parametrize("case", ["not sqlite", "empty", "sqlite but not opsroom", "truncated", "newer schema"])
async def test_a_restore_from_anything_but_a_whole_servable_store_writes_nothing(
        store: str, tmp_path: Path, case: str) -> None:
    source = tmp_path / "incoming" / "b.db"
    source.parent.mkdir(mode=0o700)
    if case == "not sqlite":
        _not_sqlite(source)
    elif case == "empty":
        _empty(source)
    elif case == "sqlite but not opsroom":
        _sqlite_not_opsroom(source)
    elif case == "truncated":
        await _truncated(source, store)
    else:
        await _newer(source, store)
    target = tmp_path / "restored"
    expected = SchemaAhead if case == "newer schema" else BackupRefused
    with pytest.raises(expected) as refused:
        await backup.restore(source=source, data=target)
    assert isinstance(refused.value, OpsroomError) and refused.value.message
    files = sorted(p.name for p in target.iterdir()) if target.exists() else []
    assert "opsroom.db" not in files and not [f for f in files if f != "opsroom.db.server-lock"], files


async def test_a_link_as_the_restore_source_is_refused(store: str, tmp_path: Path) -> None:
    done = await backup.backup(url=store, dest=tmp_path / "b.db")
    (tmp_path / "link.db").symlink_to(done.path)
    with pytest.raises(BackupRefused, match="is not a regular file"):
        await backup.restore(source=tmp_path / "link.db", data=tmp_path / "restored")


def test_the_cli_refusals_are_one_error_and_a_hint(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert cli("migrate", "--data", str(data)).returncode == 0
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    _not_sqlite(tmp_path / "junk.db")
    answers = {
        "world-writable": cli("backup", str(shared / "b.db"), "--data", str(data)),
        "not a store": cli("restore", str(tmp_path / "junk.db"), "--data", str(tmp_path / "new")),
        "no --data": cli("restore", str(tmp_path / "junk.db"), env={"OPSROOM_DATA": ""}),
        "postgresql": cli("backup", str(tmp_path / "b.db"),
                          env={"OPSROOM_DATABASE_URL": "postgresql://ops:pw-in-url@127.0.0.1/opsroom"}),
    }
    for case, result in answers.items():
        assert result.returncode in (1, 2), (case, result.stdout, result.stderr)
        assert "Traceback" not in result.stdout + result.stderr, case
        assert "hint:" in result.stderr, (case, result.stderr)
        assert "pw-in-url" not in result.stdout + result.stderr, case
    assert list(shared.iterdir()) == [] and not (tmp_path / "new" / "opsroom.db").exists()
