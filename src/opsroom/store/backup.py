"""Backup and restore of a SQLite store, while a server runs on it.

The copy is made with SQLite's online backup API in one step: under WAL a reader holds a
consistent snapshot and never blocks the server's writers, so the copy is the store as of one
commit, never half of a transaction (a stepped backup restarts whenever the server writes, and
under a busy server may never finish). It is written to a temporary file beside the
destination (mode 0600, from the first byte), checked (integrity_check, a schema revision),
synced, and only then linked into place: a crash leaves no half-written backup under the name.

PostgreSQL stores are backed up with pg_dump/pg_restore (docs/operations.md); `backup` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from opsroom.errors import OpsroomError
from opsroom.store.engine import is_sqlite, make_engine, normalize_url
from opsroom.store.lease import FileLease, LeaseHeld
from opsroom.store.migrate import plan

HEADER = b"SQLite format 3\x00"
STORE_FILE = "opsroom.db"


class BackupRefused(OpsroomError):
    """A backup or restore that would be unsafe, or of something that is not an opsroom store."""

    code = "backup_refused"


@dataclass(frozen=True)
class Copied:
    """What a backup or restore wrote: where, how big, the schema revision and audit records in it."""

    path: Path
    size: int
    revision: str
    audit_records: int
    seconds: float


def pg_commands(url: str) -> tuple[str, str]:
    """The pg_dump and pg_restore commands for the store at `url` (password never shown)."""
    shown = make_url(url.replace("+asyncpg", "")).render_as_string(hide_password=True)
    return (f"pg_dump --format=custom --file=opsroom.dump '{shown}'",
            "createdb NEWDB && pg_restore --no-owner --exit-on-error --dbname=NEWDB opsroom.dump")


def sqlite_path(url: str) -> Path:
    """The file of a SQLite store URL; BackupRefused, with the PostgreSQL commands, for any other."""
    url = normalize_url(url)
    if not is_sqlite(url):
        dump, restore = pg_commands(url)
        raise BackupRefused(
            "opsroom backup copies SQLite stores; this store is PostgreSQL, which pg_dump backs up while "
            "the servers run",
            hint=f"back it up with: {dump}; restore into a new database with: {restore} "
                 "(docs/operations.md, 'Backup and restore')")
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupRefused("the store is in memory: there is nothing on disk to back up")
    return Path(database)


async def backup(*, url: str, dest: Path, force: bool = False) -> Copied:
    """Copy the store at `url` to `dest` (a file, or a directory to put a dated file in)."""
    source = sqlite_path(url)
    return await asyncio.to_thread(_backup, source, dest, force)


def _destination(dest: Path, source: Path, *, force: bool) -> Path:
    if dest.is_dir() and not dest.is_symlink():
        dest = dest / f"opsroom-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.db"
    parent = dest.parent
    if not parent.is_dir():
        raise BackupRefused(f"the directory {parent} does not exist", hint="create it (mode 0700) first")
    mode = parent.stat().st_mode
    if mode & stat.S_IWOTH:
        # Anyone may create names there: a link planted at the name, or a file swapped before it is read.
        raise BackupRefused(f"{parent} is writable by every user, so a backup of the store (password hashes, "
                            "sealed secrets, the audit log) could be swapped or read there",
                            hint="write it to a directory only you and root can write, e.g. /var/backups/opsroom")
    if dest.is_symlink():
        raise BackupRefused(f"{dest} is a symbolic link (to {os.readlink(dest)}); a backup never follows one",
                            hint="name a new file, or remove the link")
    if dest.exists():
        if not dest.is_file():
            raise BackupRefused(f"{dest} exists and is not a file")
        if not force:
            raise BackupRefused(f"{dest} already exists", hint="pass --force to replace it, or name a new file")
    resolved = dest.resolve()
    if resolved in {source.resolve(), *(Path(f"{source.resolve()}{s}") for s in ("-wal", "-shm", "-journal"))}:
        raise BackupRefused(f"{dest} is the store itself", hint="name a file outside the data directory")
    return dest


def _backup(source: Path, dest: Path, force: bool) -> Copied:
    started = time.monotonic()
    if not source.is_file():
        raise BackupRefused(f"no opsroom store at {source}",
                            hint="pass --data DIR (or OPSROOM_DATA) of the store the server uses")
    dest = _destination(dest, source, force=force)
    try:  # a WAL reader wants to write the -shm: read-write where allowed, though nothing is written
        src = _open(source, readonly=False)
    except sqlite3.OperationalError:
        src = _open(source, readonly=True)
    try:
        _require_store(src, source)
        tmp = _temp_beside(dest)
        try:
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)  # pages=-1: one step, one snapshot (module docstring)
                # A file of its own: readable with no -wal/-shm beside it (read-only media, a
                # copy opened elsewhere); a restored store is put back in WAL by the server.
                dst.execute("PRAGMA journal_mode=DELETE")
            finally:
                dst.close()
            revision, records = _check(tmp, what=f"the copy of {source}")
            _sync(tmp)
            _place(tmp, dest, replace=force)
        finally:
            _remove(tmp)
    finally:
        src.close()
    return Copied(dest, dest.stat().st_size, revision, records, time.monotonic() - started)


async def restore(*, source: Path, data: Path, force: bool = False) -> Copied:
    """Make `source` (a backup) the store of the data directory `data`: never under a running
    server, never over an existing store without `force` (the old one is then kept beside it)."""
    target = await asyncio.to_thread(_restorable, source, data)
    lease = FileLease(Path(f"{target}.server-lock"))  # held throughout: no server starts mid-restore
    try:
        await lease.acquire()
    except LeaseHeld as exc:
        raise BackupRefused(f"a server runs on the store in {data} ({exc.holder}); restoring under it would "
                            "break it", hint="stop that server first, then restore") from None
    try:
        if (target.exists() or target.is_symlink()) and not force:
            raise BackupRefused(f"{target} already holds a store",
                                hint="restore into a new --data DIR, or pass --force to replace it (the old "
                                     "one is kept beside it as opsroom.db.replaced-TIME)")
        return await _restore(source, target)
    finally:
        await lease.release()


def _restorable(source: Path, data: Path) -> Path:
    """The store file to restore `source` into, once `source` looks like a SQLite database."""
    if source.is_symlink() or not source.is_file():
        raise BackupRefused(f"{source} is not a regular file", hint="name the backup file itself")
    with source.open("rb") as f:
        if f.read(len(HEADER)) != HEADER:
            raise BackupRefused(f"{source} is not an opsroom store: not a SQLite database",
                                hint="name a file `opsroom backup` wrote")
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    return data / STORE_FILE


async def _restore(source: Path, target: Path) -> Copied:
    started = time.monotonic()
    tmp = await asyncio.to_thread(_temp_beside, target)
    try:
        revision, records = await asyncio.to_thread(_copy_checked, source, tmp)
        engine = make_engine(f"sqlite+aiosqlite:///{tmp}")
        try:
            await plan(engine)  # SchemaAhead for a store of a newer opsroom this one cannot serve
        finally:
            await engine.dispose()
        size = await asyncio.to_thread(_swap_in, tmp, target)
    finally:
        _remove(tmp)
    return Copied(target, size, revision, records, time.monotonic() - started)


def _copy_checked(source: Path, tmp: Path) -> tuple[str, int]:
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise BackupRefused(f"cannot open {source}: {exc}") from None
    try:
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
        except sqlite3.DatabaseError as exc:
            raise BackupRefused(f"{source} is damaged or not a store: {exc}",
                                hint="restore from another backup") from None
        finally:
            dst.close()
    finally:
        src.close()
    return _check(tmp, what=str(source))


def _swap_in(tmp: Path, target: Path) -> int:
    # The old store with its WAL and shared memory, moved aside together: a -wal left beside a
    # new file would be replayed into it.
    if target.exists():
        with contextlib.closing(_open(target, readonly=False)) as old:
            old.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for suffix in ("", "-wal", "-shm"):
            old_file = Path(f"{target}{suffix}")
            if old_file.exists():
                old_file.rename(f"{target}.replaced-{stamp}{suffix}")
    _sync(tmp)
    _place(tmp, target, replace=False)
    return target.stat().st_size


def _open(path: Path, *, readonly: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode={'ro' if readonly else 'rw'}", uri=True, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def _require_store(conn: sqlite3.Connection, path: Path) -> None:
    try:
        conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError:
        raise BackupRefused(f"{path} is not an opsroom store (no schema revision in it)",
                            hint="pass --data DIR of the store the server uses") from None


def _check(path: Path, *, what: str) -> tuple[str, int]:
    """The schema revision and audit record count of a copy that passes integrity_check."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            problems = [r[0] for r in conn.execute("PRAGMA integrity_check(5)")]
            if problems != ["ok"]:
                raise BackupRefused(f"{what} fails SQLite's integrity check: {'; '.join(problems)[:300]}",
                                    hint="nothing was written; check the disk and try again, or use another backup")
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            records = conn.execute("SELECT count(*) FROM audit_records").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise BackupRefused(f"{what} is not an opsroom store: {exc}",
                            hint="name a file `opsroom backup` wrote") from None
    if row is None:
        raise BackupRefused(f"{what} is not an opsroom store (no schema revision in it)")
    return str(row[0]), int(records)


def _temp_beside(dest: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)  # mode 0600
    os.close(fd)
    return Path(name)


def _sync(path: Path) -> None:
    os.chmod(path, 0o600)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _place(tmp: Path, dest: Path, *, replace: bool) -> None:
    """Give the checked copy its name: a hard link never overwrites (a name that appeared since
    it was checked, a planted link, is refused); --force renames over a regular file only."""
    if replace:
        if dest.is_symlink():
            raise BackupRefused(f"{dest} became a symbolic link; nothing was written")
        os.replace(tmp, dest)
    else:
        try:
            os.link(tmp, dest)
        except FileExistsError:
            raise BackupRefused(f"{dest} appeared while the backup was written; nothing was replaced",
                                hint="name a new file") from None
    dir_fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _remove(tmp: Path) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{tmp}{suffix}")
