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
from typing import Annotated

import typer

from opsroom.catalog.errors import CatalogError
from opsroom.catalog.loader import load_catalog
from opsroom.cli import admin, remote
from opsroom.cli.common import CatalogOpt, DataOpt, app, catalog_app, err, local_admin, out, run, settings_for
from opsroom.cli.terminal import write
from opsroom.store import lease

__all__ = ["admin", "app", "local_admin", "main", "remote", "run", "settings_for"]


@catalog_app.command("validate")
def catalog_validate(path: Annotated[Path, typer.Argument(help="catalog directory or file")]) -> None:
    """Validate a catalog; errors name file:line:column and how to fix them."""
    try:
        cat = load_catalog(path)
    except CatalogError as exc:
        write(exc.render(), stream=sys.stderr)  # a catalog under review may hold escapes
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
    from opsroom.web.security import WS_MAX_FRAME

    if catalog is None:
        err.print("error: no catalog given\n  hint: pass --catalog DIR or set OPSROOM_CATALOG")
        raise typer.Exit(2)
    try:
        settings = settings_for(catalog, data, host=host, port=port)
        load_catalog(catalog)
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
