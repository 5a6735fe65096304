"""`opsroom backup` and `opsroom restore`: local admin commands on the server host.

They read and write the store's file directly and never migrate it (a backup taken before an
upgrade must be of the store as it was). The service is opsroom.store.backup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opsroom.cli.common import DataOpt, app, run, settings_for
from opsroom.cli.terminal import error, write

ForceOpt = Annotated[bool, typer.Option("--force", help="replace an existing file or store")]


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.0f} kB"


@app.command()
def backup(dest: Annotated[Path, typer.Argument(help="the backup file, or a directory to write a dated one in")],
           data: DataOpt = None, force: ForceOpt = False) -> None:
    """Copy the SQLite store while the server runs (SQLite's online backup), checked, mode 0600.
    A PostgreSQL store is backed up with pg_dump: this command prints how."""
    from opsroom.store import backup as service

    settings = settings_for(None, data)
    done = run(lambda: service.backup(url=settings.db_url, dest=dest, force=force))
    write(f"backup of {settings.db_url.partition(':///')[2]} written to {done.path}: {_size(done.size)}, "
          f"schema revision {done.revision}, {done.audit_records} audit records, integrity ok "
          f"({done.seconds:.2f} s)")


@app.command()
def restore(source: Annotated[Path, typer.Argument(help="a file `opsroom backup` wrote")],
            data: DataOpt = None, force: ForceOpt = False) -> None:
    """Make a backup the store of --data DIR (no server may run on it). An existing store is
    replaced only with --force, and kept beside it as opsroom.db.replaced-TIME."""
    from opsroom.store import backup as service

    if data is None:
        error("name the data directory to restore into", "pass --data DIR (or set OPSROOM_DATA)")
        raise typer.Exit(2)
    settings = settings_for(None, data)
    if settings.database_url:
        _dump, pg_restore = service.pg_commands(settings.database_url)
        error("opsroom restore writes SQLite stores; OPSROOM_DATABASE_URL names a PostgreSQL one",
              f"restore a pg_dump into a new database with: {pg_restore} (docs/operations.md)")
        raise typer.Exit(2)
    done = run(lambda: service.restore(source=source, data=data, force=force))
    write(f"restored {source} to {done.path}: {_size(done.size)}, schema revision {done.revision}, "
          f"{done.audit_records} audit records, integrity ok; check it with `opsroom audit verify --data {data}`")
