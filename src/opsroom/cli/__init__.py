"""The opsroom command line (typer + rich). Every command goes through the service layer."""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from opsroom.access.identity import Actor
from opsroom.catalog.errors import CatalogError
from opsroom.catalog.loader import load_catalog
from opsroom.config import Settings
from opsroom.errors import OpsroomError
from opsroom.store import lease

app = typer.Typer(no_args_is_help=True, add_completion=False, help="opsroom: ChatOps for production support.")
catalog_app = typer.Typer(no_args_is_help=True, help="The catalog (config as code).")
check_app = typer.Typer(no_args_is_help=True, help="Health checks.")
runbook_app = typer.Typer(no_args_is_help=True, help="Runbooks.")
audit_app = typer.Typer(no_args_is_help=True, help="The audit log.")
user_app = typer.Typer(no_args_is_help=True, help="Users.")
token_app = typer.Typer(no_args_is_help=True, help="API tokens.")
for sub, name in ((catalog_app, "catalog"), (check_app, "check"), (runbook_app, "runbook"), (audit_app, "audit"),
                  (user_app, "user"), (token_app, "token")):
    app.add_typer(sub, name=name)

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)  # a file:line must never be split by wrapping
T = TypeVar("T")

CatalogOpt = Annotated[Path | None, typer.Option("--catalog", envvar="OPSROOM_CATALOG", help="catalog directory")]
DataOpt = Annotated[Path | None, typer.Option("--data", envvar="OPSROOM_DATA", help="data directory")]
TokenOpt = Annotated[str | None, typer.Option("--token", envvar="OPSROOM_TOKEN", help="API token (acts as its user)")]


def settings_for(catalog: Path | None = None, data: Path | None = None, **extra: Any) -> Settings:
    values: dict[str, Any] = dict(extra)
    if catalog is not None:
        values["catalog"] = catalog
    if data is not None:
        values["data"] = data
    return Settings(**values)


def local_admin() -> Actor:
    """Whoever can run the CLI on the server's host can already read its database."""
    return Actor(f"local:{getpass.getuser()}", "cli", frozenset({"admin"}), frozenset({"*"}))


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run a command body; service errors become a clear message and exit code, never a traceback."""
    try:
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
    except CatalogError as exc:
        err.print(exc.render(), markup=False, highlight=False)
        raise typer.Exit(2) from None
    except OpsroomError as exc:
        err.print(f"error: {exc.message}", markup=False, highlight=False)
        if exc.hint:
            err.print(f"  hint: {exc.hint}", markup=False, highlight=False)
        raise typer.Exit(1 if exc.code != "forbidden" else 3) from None


async def _runtime(settings: Settings) -> Any:
    from opsroom import server

    return await server.open_runtime(settings)


@catalog_app.command("validate")
def catalog_validate(path: Annotated[Path, typer.Argument(help="catalog directory or file")]) -> None:
    """Validate a catalog; errors name file:line:column and how to fix them."""
    try:
        cat = load_catalog(path)
    except CatalogError as exc:
        err.print(exc.render(), markup=False, highlight=False)
        raise typer.Exit(2) from None
    counts = ", ".join(f"{len(getattr(cat, k))} {k}" for k in ("systems", "services", "checks", "runbooks", "rules",
                                                                "rooms"))
    out.print(f"catalog OK: {counts}; hash {cat.content_hash[:12]}")


@app.command()
def serve(catalog: CatalogOpt = None, data: DataOpt = None,
          host: Annotated[str, typer.Option(envvar="OPSROOM_HOST")] = "127.0.0.1",
          port: Annotated[int, typer.Option(envvar="OPSROOM_PORT")] = 8080) -> None:
    """Run the server: checks, rules, runbooks, the web room and the API."""
    import uvicorn

    from opsroom.web.app import create_app

    if catalog is None:
        err.print("error: no catalog given\n  hint: pass --catalog DIR or set OPSROOM_CATALOG")
        raise typer.Exit(2)
    try:
        settings = settings_for(catalog, data, host=host, port=port)
        load_catalog(catalog)
    except CatalogError as exc:
        err.print(exc.render(), markup=False, highlight=False)
        raise typer.Exit(2) from None
    except ValueError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from None
    settings.data.mkdir(parents=True, exist_ok=True)
    problem = lease.preflight(settings.db_url)
    if problem:
        err.print(f"error: {problem}", markup=False, highlight=False)
        raise typer.Exit(2)
    out.print(f"opsroom serving http://{host}:{port}/ (data in {settings.data})", highlight=False)
    # One logging set-up for uvicorn, the libraries and opsroom: plain tracebacks, no locals, masked.
    from opsroom import logs

    logs.configure(settings.log_level)
    # The standard asyncio loop, named (uvicorn would pick uvloop when installed): it starts a
    # recovery's process with vfork in ~1 ms where uvloop's libuv spawn takes ~2.7 ms, and the
    # probes' own machinery (probes/connects.py, probes/deadlines.py) leaves uvloop little to add.
    web = create_app(settings)
    try:
        uvicorn.run(web, host=host, port=port, log_level=settings.log_level, log_config=None,
                    ws="websockets-sansio", loop="asyncio")
    except SystemExit:
        # uvicorn exits 3 on any failed startup; a refusal it printed the reason for (a server
        # that started in the same second holds the store) exits 2, as the preflight above does.
        if web.state.refused:
            raise typer.Exit(2) from None
        raise


@check_app.command("run")
def check_run(name: str, token: TokenOpt = None, catalog: CatalogOpt = None, data: DataOpt = None) -> None:
    """Run one check now and print its result."""
    from opsroom.access import service as access
    from opsroom.checks import service as checks
    from opsroom.checks.monitor import Monitor

    async def body() -> dict[str, Any]:
        rt = await _runtime(settings_for(catalog, data))
        try:
            actor = await access.authenticate_token(rt, token=_need(token), door="cli")
            rt.monitor = Monitor(rt, persist=False)
            await rt.monitor.load()
            view = await checks.run_check(rt, actor=actor, check=name)
            await rt.monitor.stop()
            return view
        finally:
            await rt.close()

    view = run(body)
    out.print(f"{view['check']}: {view['state']} {view['output']}", markup=False, highlight=False)
    raise typer.Exit({"OK": 0, "WARNING": 1, "CRITICAL": 2}.get(view["state"], 3))


def _need(token: str | None) -> str:
    if not token:
        err.print("error: this command acts as a user\n  hint: pass --token or set OPSROOM_TOKEN "
                  "(create one with `opsroom token create USER`)")
        raise typer.Exit(2)
    return token


@runbook_app.command("run")
def runbook_run(name: str, params: Annotated[list[str] | None, typer.Argument(help="key=value")] = None,
                token: TokenOpt = None, catalog: CatalogOpt = None, data: DataOpt = None) -> None:
    """Run a runbook as the token's user; on protected environments it waits for approval."""
    from opsroom.access import service as access
    from opsroom.checks.monitor import Monitor
    from opsroom.outbox import OutboxWriter
    from opsroom.runbooks import service as runbooks
    from opsroom.runbooks.executor import Executor

    given: dict[str, str] = {}
    for p in params or []:
        if "=" not in p:
            err.print(f"error: {p!r} is not key=value\n  hint: opsroom runbook run {name} key=value")
            raise typer.Exit(2)
        k, _, v = p.partition("=")
        given[k] = v

    async def body() -> Any:
        rt = await _runtime(settings_for(catalog, data))
        try:
            actor = await access.authenticate_token(rt, token=_need(token), door="cli")
            rt.monitor = Monitor(rt, persist=False)
            await rt.monitor.load()
            rt.executor = Executor(rt)
            OutboxWriter(rt)  # the server's rooms hear about this run (approval asked, result)
            row = await runbooks.request_run(rt, actor=actor, runbook=name, params=given)
            if row.status != "awaiting_approval":
                await rt.executor.wait(row.id)
                await rt.executor.close()
                row = await runbooks.get_execution(rt, actor=actor, execution_id=row.id)
            await rt.monitor.stop()
            await rt.bus.drain()
            return row
        finally:
            await rt.close()

    row = run(body)
    if row.status == "awaiting_approval":
        out.print(f"execution #{row.id} awaits approval (request #{row.approval_id}); "
                  "an approver decides in the room or the API", highlight=False)
        return
    sys.stdout.write(row.output)
    out.print(f"execution #{row.id}: {row.status}", highlight=False)
    raise typer.Exit(0 if row.status == "succeeded" else 1)


@audit_app.command("verify")
def audit_verify(data: DataOpt = None, catalog: CatalogOpt = None) -> None:
    """Walk the hash chain; name the first broken record."""
    from opsroom.audit import service as audit

    async def body() -> Any:
        rt = await _runtime(settings_for(catalog, data))
        try:
            return await audit.verify(rt)
        finally:
            await rt.close()

    result = run(body)
    if result.ok:
        out.print(f"audit OK: {result.records} records, chain intact")
        return
    err.print(f"audit BROKEN at record {result.broken_seq}: {result.reason}", markup=False)
    raise typer.Exit(1)


@user_app.command("add")
def user_add(name: str, role: Annotated[list[str], typer.Option("--role", help="repeatable")],
             password_stdin: Annotated[bool, typer.Option(help="read the password from stdin")] = False,
             data: DataOpt = None, catalog: CatalogOpt = None) -> None:
    """Add a user (no password: token-only until `user passwd`)."""
    from opsroom.access import service as access

    password = _read_password(password_stdin) if password_stdin else None

    async def body() -> None:
        rt = await _runtime(settings_for(catalog, data))
        try:
            await access.add_user(rt, actor=local_admin(), name=name, roles=role, password=password)
        finally:
            await rt.close()

    run(body)
    out.print(f"user {name} added with roles {', '.join(role)}", highlight=False)


def _read_password(from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("new password: ")
    if getpass.getpass("again: ") != first:
        err.print("error: the passwords differ")
        raise typer.Exit(2)
    return first


@user_app.command("passwd")
def user_passwd(name: str, password_stdin: Annotated[bool, typer.Option()] = False, data: DataOpt = None,
                catalog: CatalogOpt = None) -> None:
    """Set a user's password (ends their web sessions)."""
    from opsroom.access import service as access

    password = _read_password(password_stdin)

    async def body() -> None:
        rt = await _runtime(settings_for(catalog, data))
        try:
            await access.set_password(rt, actor=local_admin(), name=name, password=password)
        finally:
            await rt.close()

    run(body)
    out.print(f"password of {name} changed", highlight=False)


@user_app.command("list")
def user_list(data: DataOpt = None, catalog: CatalogOpt = None) -> None:
    from opsroom.access import service as access

    async def body() -> Any:
        rt = await _runtime(settings_for(catalog, data))
        try:
            return await access.list_users(rt, actor=local_admin())
        finally:
            await rt.close()

    table = Table("user", "roles", "password")
    for u in run(body):
        table.add_row(u.name, ", ".join(u.roles), "set" if u.password_hash else "-")
    out.print(table)


@token_app.command("create")
def token_create(user: str, name: Annotated[str, typer.Option()] = "cli", data: DataOpt = None,
                 catalog: CatalogOpt = None) -> None:
    """Create an API token; it is printed once and stored only as a hash."""
    from opsroom.access import service as access

    async def body() -> str:
        rt = await _runtime(settings_for(catalog, data))
        try:
            return await access.create_token(rt, actor=local_admin(), user=user, name=name)
        finally:
            await rt.close()

    print(run(body))


@app.command()
def demo(port: Annotated[int, typer.Option(envvar="OPSROOM_PORT")] = 8080,
         host: Annotated[str, typer.Option()] = "127.0.0.1",
         outage: Annotated[bool, typer.Option(help="kill service-b 15 s after start")] = False,
         auto: Annotated[bool, typer.Option(help="let a rule recover service-b with no human")] = False,
         data: DataOpt = None) -> None:
    """Start the demo: System A's services and opsroom on http://127.0.0.1:8080/."""
    from opsroom.cli.demo import run_demo

    run_demo(host=host, port=port, outage=outage, auto=auto, data=data)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
