"""What every CLI module shares: the command groups, the options, and turning errors into one line."""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from opsroom.access.identity import Actor
from opsroom.cli.output import Format
from opsroom.errors import OpsroomError

if TYPE_CHECKING:  # the remote commands never load these: a CLI call starts in ~0.4 s, not 2
    from opsroom.config import Settings

# -h as well as --help on every command (click passes help_option_names down to subcommands);
# typer's --install-completion / --show-completion for bash, zsh, fish and PowerShell.
app = typer.Typer(no_args_is_help=True, add_completion=True, help="opsroom: ChatOps for production support.",
                  context_settings={"help_option_names": ["-h", "--help"]})
catalog_app = typer.Typer(no_args_is_help=True, help="The catalog (config as code).")
check_app = typer.Typer(no_args_is_help=True, help="Health checks (asked of the running server).")
runbook_app = typer.Typer(no_args_is_help=True, help="Runbooks (asked of the running server).")
audit_app = typer.Typer(no_args_is_help=True, help="The audit log (local admin, on the server host).")
user_app = typer.Typer(no_args_is_help=True, help="Users (local admin, on the server host).")
token_app = typer.Typer(no_args_is_help=True, help="API tokens (local admin, on the server host).")
for sub, name in ((catalog_app, "catalog"), (check_app, "check"), (runbook_app, "runbook"), (audit_app, "audit"),
                  (user_app, "user"), (token_app, "token")):
    app.add_typer(sub, name=name)

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)  # a file:line must never be split by wrapping
T = TypeVar("T")

CatalogOpt = Annotated[Path | None, typer.Option("--catalog", envvar="OPSROOM_CATALOG", help="catalog directory")]
DataOpt = Annotated[Path | None, typer.Option("--data", envvar="OPSROOM_DATA", help="data directory")]
# The options of every command that asks the server (cli/remote.py resolves them, docs/cli.md):
# --server/--token win, then --profile, then OPSROOM_URL/OPSROOM_TOKEN, then the current profile.
TokenOpt = Annotated[str | None, typer.Option("--token", help="API token (acts as its user); default: the profile's, "
                                                              "else OPSROOM_TOKEN", show_default=False)]
ServerOpt = Annotated[str | None, typer.Option("--server", help="the server's URL; default: the profile's, else "
                                                                "OPSROOM_URL, else http://127.0.0.1:8080")]
ProfileOpt = Annotated[str | None, typer.Option("--profile", envvar="OPSROOM_PROFILE",
                                                help="a profile saved by `opsroom login` (default: the current one)")]
OutputOpt = Annotated[Format | None, typer.Option("--output", "-o", help="table (default), json or yaml",
                                                  case_sensitive=False, show_default=False)]


def settings_for(catalog: Path | None = None, data: Path | None = None, **extra: Any) -> Settings:
    values: dict[str, Any] = dict(extra)
    if catalog is not None:
        values["catalog"] = catalog
    if data is not None:
        values["data"] = data
    from opsroom.config import Settings

    return Settings(**values)


def local_admin() -> Actor:
    """Whoever can run the CLI on the server's host can already read its database."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no passwd entry and no LOGNAME
        login = f"uid{os.getuid()}"
    return Actor(f"local:{login}", "cli", frozenset({"admin"}), frozenset({"*"}))


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run a command body; service errors become a clear message and exit code, never a traceback."""
    from opsroom.catalog.errors import CatalogError
    from opsroom.cli.terminal import error, write
    from opsroom.store.lease import refusal

    try:
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
    except CatalogError as exc:
        write(exc.render(), stream=sys.stderr)  # a catalog under review may hold escapes
        raise typer.Exit(2) from None
    except OpsroomError as exc:
        error(exc.message, exc.hint)
        raise typer.Exit(1 if exc.code != "forbidden" else 3) from None
    except Exception as exc:
        reason = refusal(exc)  # a store that cannot be reached is a fact to fix, not a traceback
        if reason is None:
            raise
        message, _, hint = reason.partition("\n  hint: ")
        error(message, hint or None)
        raise typer.Exit(1) from None
