"""Local admin commands on the server host: users, tokens, audit verify, migrate.

They open the store directly and act as `local:<login>` (whoever can run them can read the store
anyway), through the service layer, which checks and audits them. Only `opsroom migrate` creates
a store: any other command pointed at a place with no store says so instead of answering from an
empty one it made up.
"""

from __future__ import annotations

import datetime as dt
import getpass
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from opsroom.cli.common import (
    CatalogOpt,
    DataOpt,
    app,
    audit_app,
    local_admin,
    out,
    run,
    settings_for,
    token_app,
    user_app,
)
from opsroom.cli.terminal import clean, error, write
from opsroom.errors import OpsroomError

if TYPE_CHECKING:
    from opsroom.config import Settings
    from opsroom.runtime import Runtime


class NoStore(OpsroomError):
    code = "no_store"


def _where(settings: Settings) -> str:
    if settings.database_url:
        from sqlalchemy.engine import make_url

        try:
            return make_url(settings.database_url).render_as_string(hide_password=True)
        except Exception:
            return "the database of OPSROOM_DATABASE_URL"
    return str(settings.data)


async def _exists(settings: Settings) -> bool:
    from opsroom.store.engine import make_engine
    from opsroom.store.migrate import store_exists

    engine = make_engine(settings.db_url)
    try:
        return await store_exists(engine)
    finally:
        await engine.dispose()


@asynccontextmanager
async def store(catalog: Path | None, data: Path | None) -> AsyncIterator[Runtime]:
    """The runtime of an existing store (migrated if no server holds it); NoStore if there is none."""
    from opsroom import server

    settings = settings_for(catalog, data)
    if not await _exists(settings):
        where = _where(settings)
        raise NoStore(f"no opsroom store in {where}",
                      hint="pass --data DIR (or OPSROOM_DATA / OPSROOM_DATABASE_URL) of the store the server uses; "
                           f"a new store is made by starting the server once or by `opsroom migrate --data {where}`"
                      if not settings.database_url else
                      "point OPSROOM_DATABASE_URL at the server's database; a new store is made by starting "
                      "the server once or by `opsroom migrate`")
    # What the server must hear of (access taken away: it closes those sockets) the access
    # service writes to the store's outbox in the change's own transaction.
    rt = await server.open_runtime(settings)
    try:
        yield rt
    finally:
        await rt.close()


def _when(at: float | None) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if at else "-"


def _cell(value: Any) -> Text:
    return Text(clean(str(value)))  # a Text is never read as rich markup


@app.command()
def migrate(data: DataOpt = None) -> None:
    """Create the store, or bring its schema up to this version (refused while a server runs on it)."""
    from opsroom import server
    from opsroom.catalog.catalog import Catalog
    from opsroom.store.migrate import current_revision

    settings = settings_for(None, data)

    async def body() -> tuple[bool, str]:
        existed = await _exists(settings)
        rt = await server.open_runtime(settings, Catalog())
        try:
            version = await current_revision(rt.engine)
        finally:
            await rt.close()
        return existed, str(version)

    existed, version = run(body)
    write(f"{'store' if existed else 'new store'} in {_where(settings)} at schema revision {version}")


@audit_app.command("verify")
def audit_verify(data: DataOpt = None, catalog: CatalogOpt = None,
                 checkpoints: Annotated[Path | None, typer.Option(
                     help="directory of signed checkpoints (default: OPSROOM_AUDIT_CHECKPOINT_DIR)")] = None,
                 public_key: Annotated[Path | None, typer.Option(
                     help="the public key to check checkpoints with, as `audit public-key` printed it "
                          "(default: this host's key)")] = None) -> None:
    """Recompute the hash chain and check every signed checkpoint against it; name the first fault
    (audited, as `audit.verify`). Exit 0 intact, 1 broken, 2 a bad option."""
    from opsroom.audit import keys
    from opsroom.audit import service as audit

    if checkpoints is not None and not checkpoints.is_dir():
        error(f"--checkpoints {clean(str(checkpoints))}: no such directory")
        raise typer.Exit(2)
    try:
        public = keys.read_public(public_key) if public_key is not None else None
    except (OSError, keys.KeyRefused) as exc:
        error(f"--public-key: {clean(str(exc))}")
        raise typer.Exit(2) from None

    async def body() -> Any:
        async with store(catalog, data) as rt:
            return await audit.verify_as(rt, actor=local_admin(), checkpoints=checkpoints, public_key=public)

    result = run(body)
    if result.ok:
        covered = (f"{result.checkpoints} signed checkpoints match" if result.checkpoints else
                   "no checkpoints found: a cut tail or a consistently rewritten chain cannot be seen")
        write(f"audit OK: {result.records} records, chain intact; {covered}")
        return
    where = f"checkpoint {result.bad_checkpoint}" if result.bad_checkpoint else f"record {result.broken_seq}"
    write(f"audit BROKEN at {clean(where)}: {clean(result.reason or '')}", stream=sys.stderr)
    raise typer.Exit(1)


@audit_app.command("checkpoint")
def audit_checkpoint(data: DataOpt = None, catalog: CatalogOpt = None) -> None:
    """Sign the log's current size and head now and write it off the database (audited)."""
    from opsroom.audit import service as audit

    async def body() -> Any:
        async with store(catalog, data) as rt:
            return await audit.checkpoint_as(rt, actor=local_admin())

    done = run(body)
    also = "".join(f", {what}" for what, sent in (("committed to git", done.git), ("sent to syslog", done.syslog))
                   if sent)
    write(f"checkpoint of {done.checkpoint.size} records written to {clean(str(done.path))}{also}")
    for problem in done.problems:
        error(clean(problem))
    if done.problems:
        raise typer.Exit(1)


@audit_app.command("public-key")
def audit_public_key(data: DataOpt = None) -> None:
    """Print the checkpoint signing key's public half (PEM), for auditors to verify with elsewhere."""
    from opsroom.audit import keys
    from opsroom.audit.checkpointer import signing_key

    settings = settings_for(None, data)

    async def body() -> Any:  # run() turns a refused key file into a message and exit 1
        return signing_key(settings)

    write(keys.public_pem(run(body).public_key()).rstrip("\n"))


@user_app.command("add")
def user_add(name: str, role: Annotated[list[str], typer.Option("--role", help="repeatable")],
             password_stdin: Annotated[bool, typer.Option(help="read the password from stdin")] = False,
             data: DataOpt = None, catalog: CatalogOpt = None) -> None:
    """Add a user (no password: token-only until `user passwd`)."""
    from opsroom.access import service as access

    password = _read_password(password_stdin) if password_stdin else None

    async def body() -> str:
        async with store(catalog, data) as rt:
            return (await access.add_user(rt, actor=local_admin(), name=name, roles=role, password=password)).name

    stored = run(body)
    # Names are normalised (case-folded, NFKC): say the name the person must log in with.
    write(f"user {stored} added with roles {', '.join(role)}")


def _read_password(from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("new password: ")
    if getpass.getpass("again: ") != first:
        error("the passwords differ")
        raise typer.Exit(2)
    return first


@user_app.command("passwd")
def user_passwd(name: str, password_stdin: Annotated[bool, typer.Option()] = False, data: DataOpt = None,
                catalog: CatalogOpt = None) -> None:
    """Set a user's password (ends their web sessions)."""
    from opsroom.access import service as access

    password = _read_password(password_stdin)

    async def body() -> None:
        async with store(catalog, data) as rt:
            await access.set_password(rt, actor=local_admin(), name=name, password=password)

    run(body)
    write(f"password of {name} changed")


@user_app.command("list")
def user_list(data: DataOpt = None, catalog: CatalogOpt = None) -> None:
    """Users, their roles, and whether they are disabled."""
    from opsroom.access import service as access

    async def body() -> Any:
        async with store(catalog, data) as rt:
            return await access.list_users(rt, actor=local_admin())

    table = Table("user", "roles", "password", "state")
    for u in run(body):
        table.add_row(_cell(u.name), _cell(", ".join(u.roles)), "set" if u.password_hash else "-",
                      "disabled" if u.disabled else "active")
    out.print(table)


@user_app.command("disable")
def user_disable(name: str, data: DataOpt = None, catalog: CatalogOpt = None) -> None:
    """Disable a user: their tokens, sessions and open sockets stop working at once."""
    from opsroom.access import service as access

    async def body() -> None:
        async with store(catalog, data) as rt:
            await access.disable_user(rt, actor=local_admin(), name=name)

    run(body)
    write(f"user {name} disabled: their tokens and sessions no longer work")


@user_app.command("enable")
def user_enable(name: str, data: DataOpt = None, catalog: CatalogOpt = None) -> None:
    """Enable a disabled user again (revoked tokens stay revoked)."""
    from opsroom.access import service as access

    async def body() -> None:
        async with store(catalog, data) as rt:
            await access.enable_user(rt, actor=local_admin(), name=name)

    run(body)
    write(f"user {name} enabled")


@token_app.command("create")
def token_create(user: str, name: Annotated[str, typer.Option()] = "cli", data: DataOpt = None,
                 catalog: CatalogOpt = None) -> None:
    """Create an API token; it is printed once and stored only as a hash."""
    from opsroom.access import service as access

    async def body() -> str:
        async with store(catalog, data) as rt:
            return await access.create_token(rt, actor=local_admin(), user=user, name=name)

    print(run(body))


@token_app.command("list")
def token_list(user: Annotated[str | None, typer.Argument(help="only this user's tokens")] = None,
               data: DataOpt = None, catalog: CatalogOpt = None) -> None:
    """API tokens (never their values): id, user, name, created, last used, revoked."""
    from opsroom.access import service as access

    async def body() -> Any:
        async with store(catalog, data) as rt:
            return await access.list_tokens(rt, actor=local_admin(), user=user)

    table = Table("id", "user", "name", "created", "last used", "state")
    for t in run(body):
        table.add_row(str(t.id), _cell(t.user), _cell(t.name), _when(t.created_at), _when(t.last_used_at),
                      "revoked" if t.revoked else "active")
    out.print(table)


@token_app.command("revoke")
def token_revoke(token_id: Annotated[int, typer.Argument(metavar="ID", min=1, help="from `opsroom token list`")],
                 data: DataOpt = None, catalog: CatalogOpt = None) -> None:
    """Revoke an API token: it stops working at once."""
    from opsroom.access import service as access

    async def body() -> None:
        async with store(catalog, data) as rt:
            await access.revoke_token(rt, actor=local_admin(), token_id=token_id)

    run(body)
    write(f"token #{token_id} revoked")


@user_app.command("link")
def user_link(name: str, data: DataOpt = None, catalog: CatalogOpt = None) -> None:
    """Issue a one-time code that links a chat account to NAME (`link CODE` on the platform; 10 minutes)."""
    from opsroom.access import links

    async def body() -> tuple[str, float]:
        async with store(catalog, data) as rt:
            return await links.issue_link_code(rt, actor=local_admin(), user=name)

    code, expires = run(body)
    # Only the code on stdout (a script can read it); the rest to stderr like every other note.
    print(code)
    write(f"give it to {name} to type as `link {code}` in a chat bound to a room; it works once, until "
          f"{_when(expires)} (older codes of {name} no longer work)", stream=sys.stderr)


@user_app.command("links")
def user_links(name: str, data: DataOpt = None, catalog: CatalogOpt = None) -> None:
    """Chat accounts linked to NAME: platform, account id, display name, since."""
    from opsroom.access import links

    async def body() -> Any:
        async with store(catalog, data) as rt:
            return await links.list_links(rt, actor=local_admin(), user=name)

    table = Table("platform", "account", "name", "linked")
    for link in run(body):
        table.add_row(_cell(link.platform), _cell(link.account_id), _cell(link.display_name), _when(link.created_at))
    out.print(table)


@user_app.command("unlink")
def user_unlink(name: str, platform: str, account: str, data: DataOpt = None, catalog: CatalogOpt = None) -> None:
    """Remove the link of a chat account to NAME (the server stops honouring it within seconds)."""
    from opsroom.access import links

    async def body() -> None:
        async with store(catalog, data) as rt:
            await links.unlink(rt, actor=local_admin(), platform=platform, account_id=account, user=name)

    run(body)
    write(f"{platform} account {clean(account)} is no longer linked to {name}")
