"""The opsroom command line (typer + rich).

Two kinds of command (DESIGN 8): those that act as a person (`check run`, `runbook run`) are
requests to the running server over its API (cli/remote.py); local admin commands on the server
host (users, tokens, audit verify, migrate; cli/admin.py) open the store through the service layer.
No process but the server runs a runbook.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from opsroom.catalog.nagios_import import DEFAULT_USER1, NagiosImportError, import_nagios
from opsroom.cli import access as _access  # noqa: F401  (registers `opsroom access`)
from opsroom.cli import admin, backup, remote, runs
from opsroom.cli import cluster as _cluster  # noqa: F401  (registers `opsroom cluster`)
from opsroom.cli import integrity as _integrity  # noqa: F401  (registers `opsroom integrity`)
from opsroom.cli import worker as _worker  # noqa: F401  (registers `opsroom worker`)
from opsroom.cli.client import NOT_OK, USAGE, ClientError
from opsroom.cli.common import (
    CatalogOpt,
    DataOpt,
    OutputOpt,
    ProfileOpt,
    ServerOpt,
    TokenOpt,
    app,
    catalog_app,
    err,
    local_admin,
    out,
    run,
    settings_for,
)
from opsroom.cli.output import show
from opsroom.cli.profiles import ProfileError
from opsroom.cli.terminal import error, write

__all__ = ["admin", "app", "backup", "local_admin", "main", "remote", "run", "runs", "settings_for"]


def _version(value: bool) -> None:
    if value:
        from opsroom import __version__

        print(f"opsroom {__version__}")
        raise typer.Exit()


@app.callback()
def global_options(
        version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_version,
                                              help="print the version and exit")] = False,
        server: ServerOpt = None, token: TokenOpt = None, profile: ProfileOpt = None,
        output: OutputOpt = None) -> None:
    """opsroom: ChatOps for production support. Remote commands take --server/--token/--profile/-o
    here or after the command; exit codes: 0 ok, 1 not OK, 2 usage, 3 not allowed, 4 not found,
    5 server unreachable (docs/cli.md)."""
    remote.GLOBAL.update(server=server, token=token, profile=profile, output=output)


@catalog_app.command("validate")
def catalog_validate(path: Annotated[Path, typer.Argument(help="catalog directory or file")]) -> None:
    """Validate a catalog; errors name file:line:column and how to fix them."""
    from opsroom.catalog.errors import CatalogError
    from opsroom.catalog.service import read_catalog

    try:
        cat = read_catalog(path)  # what the server reads: links out of it and oversized files refused
    except CatalogError as exc:
        write(exc.render(), stream=sys.stderr)  # a catalog under review may hold escapes
        raise typer.Exit(2) from None
    counts = ", ".join(f"{len(getattr(cat, k))} {k}" for k in ("systems", "services", "checks", "runbooks", "rules",
                                                                "rooms"))
    out.print(f"catalog OK: {counts}; hash {cat.content_hash[:12]}")



@catalog_app.command("reload")
def catalog_reload(server: ServerOpt = None, token: TokenOpt = None, profile: ProfileOpt = None,
                   output: OutputOpt = None) -> None:
    """Ask the running server to reload its catalog: applied whole (exit 0) or refused whole with
    every problem at file:line:column, the running catalog unchanged (exit 1). Admins only."""
    from opsroom.catalog.service import REFUSED

    try:
        with remote.api_client(server, token, profile) as api:
            done = remote.expect(api.post("/catalog/reload"), "old_hash", "catalog", "summary", "changes")
    except ClientError as exc:  # a refusal's detail holds the problems, rendered as `validate` does
        error(exc.message, exc.hint)
        raise typer.Exit(NOT_OK if exc.message.startswith(REFUSED) else exc.exit_code) from None
    except ProfileError as exc:
        error(exc.message, exc.hint)
        raise typer.Exit(USAGE) from None
    show(done, remote.output_format(output), text=_reloaded)


def _reloaded(done: dict[str, Any]) -> str:
    new = done["catalog"].get("hash") if isinstance(done["catalog"], dict) else None
    lines = [f"catalog reloaded: {str(done['old_hash'])[:12]} -> {str(new)[:12]} ({done['summary']})"]
    for kind, change in (done["changes"] if isinstance(done["changes"], dict) else {}).items():
        for what in ("added", "removed", "changed"):
            if isinstance(change, dict) and change.get(what):
                lines.append(f"  {kind} {what}: {', '.join(map(str, change[what]))}")
    lines += [f"  note: {note}" for note in done.get("notes") or ()]
    return "\n".join(lines) + "\n"


import_app = typer.Typer(no_args_is_help=True, help="Turn another tool's configuration into a catalog draft.")
catalog_app.add_typer(import_app, name="import")
MAX_IMPORT_BYTES = 20 * 1024 * 1024  # per file; a Nagios shop's largest object file is a few MB
MAX_IMPORT_FILES = 10_000


@import_app.command("nagios")
def catalog_import_nagios(
        files: Annotated[list[Path], typer.Argument(help="Nagios object files, or directories of *.cfg")],
        output: Annotated[Path | None, typer.Option("--output", "-o", help="write DIR/nagios.yaml and "
                                                    "DIR/skipped.txt instead of the draft on stdout")] = None,
        user1: Annotated[str, typer.Option("--user1", help="$USER1$, the plugin directory")] = DEFAULT_USER1,
        macro: Annotated[list[str] | None, typer.Option("--macro", help="USERn=VALUE (repeatable)")] = None,
        secret_macro: Annotated[list[str] | None, typer.Option(
            "--secret-macro", help="USERn=SECRET: $USERn$ becomes ${secret:SECRET} (repeatable)")] = None,
        interval_length: Annotated[float | None, typer.Option(help="seconds per Nagios interval unit")] = None,
        force: Annotated[bool, typer.Option(help="overwrite an earlier draft in --output")] = False) -> None:
    """Translate a Nagios object configuration into a catalog draft and list what it could not translate."""
    try:
        macros = {"USER1": user1, **_macro_options(macro or [], "--macro")}
        secrets = _macro_options(secret_macro or [], "--secret-macro")
        sources = _nagios_sources(files)
        draft = import_nagios(sources, macros=macros, secret_macros=secrets, interval_length=interval_length)
    except NagiosImportError as exc:
        error(f"{exc.file}:{exc.line}: {exc.message}", exc.hint)
        raise typer.Exit(2) from None
    except ValueError as exc:
        message, _, hint = str(exc).partition("\n")
        error(message, hint or None)
        raise typer.Exit(2) from None
    skipped = "".join(s.render() + "\n" for s in draft.skipped)
    counts = ", ".join(f"{len(draft.catalog[k])} {k}" for k in ("systems", "services", "checks"))
    if output is None:
        sys.stdout.write(draft.to_yaml())
        write(f"draft: {counts}; not translated: {len(draft.skipped)}\n{skipped}", stream=sys.stderr, end="")
        return
    target, listing = output / "nagios.yaml", output / "skipped.txt"
    if not force and (target.exists() or listing.exists()):
        error(f"{target} already exists", "pass --force to overwrite it, or another --output")
        raise typer.Exit(2)
    output.mkdir(parents=True, exist_ok=True)
    target.write_text(draft.to_yaml())
    listing.write_text(skipped)
    write(f"draft: {counts} in {target}\nnot translated: {len(draft.skipped)} (listed in {listing})\n{skipped}",
          end="")


def _macro_options(values: list[str], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for text in values:
        key, eq, value = text.partition("=")
        key = key.strip().strip("$").upper()
        if not eq or not key.startswith("USER") or not key[4:].isdigit() or not 1 <= int(key[4:]) <= 256:
            raise ValueError(f"{option} {text!r} is not USERn=VALUE\nwrite e.g. {option} USER3=value (n 1-256)")
        out[key] = value
    return out


def _nagios_sources(paths: list[Path]) -> list[tuple[str, str]]:
    """(name, text) of each file given, and of the *.cfg under each directory given (links kept inside it)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = path.resolve()
            for root, dirs, names in os.walk(path):  # does not enter linked directories
                dirs.sort()
                # A linked file only when it stays in the tree given (conf-enabled -> conf-available).
                files += [Path(root) / n for n in sorted(names) if n.endswith(".cfg")
                          and (Path(root) / n).resolve().is_relative_to(inside)]
        else:
            files.append(path)
    if len(files) > MAX_IMPORT_FILES:
        raise ValueError(f"{len(files)} files, more than {MAX_IMPORT_FILES}\nimport the configuration in parts")
    out = []
    for f in files:
        try:
            if not f.is_file():
                raise ValueError(f"{f}: not a file\npass Nagios object files (.cfg) or directories of them")
            if f.stat().st_size > MAX_IMPORT_BYTES:
                raise ValueError(f"{f}: larger than {MAX_IMPORT_BYTES // 2**20} MB\nsplit it, or pass only "
                                 "the object files")
            out.append((str(f), f.read_text(encoding="utf-8")))
        except UnicodeDecodeError as exc:
            raise ValueError(f"{f}: not UTF-8 text at byte {exc.start}\nconvert it first, e.g. "
                             f"iconv -f latin1 -t utf-8") from None
        except OSError as exc:
            raise ValueError(f"{f}: cannot read it: {exc.strerror or exc}\ncheck the path and "
                             "its permissions") from None
    return out


@app.command()
def serve(catalog: CatalogOpt = None, data: DataOpt = None,
          host: Annotated[str, typer.Option(envvar="OPSROOM_HOST")] = "127.0.0.1",
          port: Annotated[int, typer.Option(envvar="OPSROOM_PORT")] = 8080) -> None:
    """Run the server: checks, rules, runbooks, the web room and the API."""
    import uvicorn

    from opsroom.catalog.errors import CatalogError
    from opsroom.catalog.service import read_catalog
    from opsroom.store import lease
    from opsroom.web.app import create_app
    from opsroom.web.security import WS_MAX_FRAME

    if catalog is None:
        err.print("error: no catalog given\n  hint: pass --catalog DIR or set OPSROOM_CATALOG")
        raise typer.Exit(2)
    try:
        settings = settings_for(catalog, data, host=host, port=port)
        read_catalog(catalog)
    except CatalogError as exc:
        write(exc.render(), stream=sys.stderr)  # a catalog under review may hold escapes
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
                    ws="websockets-sansio", ws_max_size=WS_MAX_FRAME, loop="asyncio")
    except SystemExit:
        # uvicorn exits 3 on any failed startup; a refusal it printed the reason for (a server
        # that started in the same second holds the store) exits 2, as the preflight above does.
        if web.state.refused:
            raise typer.Exit(2) from None
        raise


SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")


@app.command("completion")
def completion(shell: Annotated[str, typer.Argument(help="bash, zsh, fish or powershell")]) -> None:
    """Print the shell completion script, e.g. `source <(opsroom completion bash)` in ~/.bashrc.

    Named, as kubectl and gh do: --show-completion guesses the shell from the parent process,
    which fails under sudo, in scripts and in containers."""
    from typer._completion_shared import get_completion_script

    name = shell.strip().lower()
    if name not in SHELLS:
        error(f"no completion for the shell {shell!r}", f"name one of: {', '.join(SHELLS[:4])}")
        raise typer.Exit(2)
    write(get_completion_script(prog_name="opsroom", complete_var="_OPSROOM_COMPLETE", shell=name))


@app.command()
def demo(port: Annotated[int, typer.Option(envvar="OPSROOM_PORT")] = 8080,
         host: Annotated[str, typer.Option()] = "127.0.0.1",
         outage: Annotated[bool, typer.Option(help="kill service-b 15 s after start")] = False,
         auto: Annotated[bool, typer.Option(help="let a rule recover service-b with no human")] = False,
         catalog: Annotated[Path | None, typer.Option(
             help="a copy of the demo catalog to run instead (e.g. with its room bound to your Slack)")] = None,
         data: DataOpt = None) -> None:
    """Start the demo: System A's services and opsroom on http://127.0.0.1:8080/."""
    from opsroom.cli.demo import run_demo

    run_demo(host=host, port=port, outage=outage, auto=auto, data=data, catalog=catalog)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # Admin commands run service code in this process: its warnings get the server's safe
    # logging (plain tracebacks, no locals, masked); serve and demo configure their own.
    from opsroom import logs

    logs.configure("warning", json=False)
    app()
