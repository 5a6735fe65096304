"""`opsroom worker --environment ENV`: run that environment's runbook steps (docs/workers.md)."""

from __future__ import annotations

import contextlib
from typing import Annotated

import typer

from opsroom.cli.common import CatalogOpt, DataOpt, app, settings_for
from opsroom.cli.terminal import error


@app.command("worker")
def worker(
        environment: Annotated[str, typer.Option("--environment", "-e", help="the environment whose queue "
                                                 "(opsroom.ENV) this worker consumes, and only that one")],
        catalog: CatalogOpt = None, data: DataOpt = None,
        broker: Annotated[str | None, typer.Option("--broker", help="broker URL; default: OPSROOM_BROKERS[ENV], "
                                                   "else OPSROOM_BROKER_URL", show_default=False)] = None) -> None:
    """Consume one environment's queue of runbook steps: heartbeats in the store (OPSROOM_DATABASE_URL),
    rebuilds each step from the catalog, streams its output back. Exit 2: misconfigured, 3: the broker
    credentials may not read that queue, 5: broker unreachable."""
    from opsroom.catalog.errors import CatalogError
    from opsroom.catalog.service import read_catalog
    from opsroom.workers import queues
    from opsroom.workers.consumer import WorkerError, serve

    settings = settings_for(catalog, data)
    if not queues.ENVIRONMENT.match(environment):
        error(f"{environment[:64]!r} is not an environment name", "letters, digits, '_', '.', '-', up to 64")
        raise typer.Exit(2)
    url = broker or settings.broker_for(environment)
    if not url:
        error(f"no broker is configured for environment {environment}",
              "set OPSROOM_BROKERS='{\"" + environment + "\": \"amqp://...\"}' or OPSROOM_BROKER_URL, or pass --broker")
        raise typer.Exit(2)
    if settings.catalog is None:
        error("a worker needs the catalog: it rebuilds each step's command from it",
              "pass --catalog DIR (or set OPSROOM_CATALOG): the same catalog as the servers")
        raise typer.Exit(2)
    try:
        cat = read_catalog(settings.catalog)
    except CatalogError as exc:
        error(f"the catalog at {settings.catalog} does not load: {exc}", "run `opsroom catalog validate` on it")
        raise typer.Exit(2) from None
    if environment not in cat.environments:
        error(f"the catalog has no environment {environment!r}",
              f"known: {', '.join(cat.environments) or 'none'}")
        raise typer.Exit(2)
    from urllib.parse import urlsplit

    from opsroom import logs
    from opsroom.secrets import masking

    logs.configure(settings.log_level)
    with contextlib.suppress(ValueError):
        password = urlsplit(url).password
        if password:  # a step that prints it, or a broker error quoting the URL, shows a mask
            masking.register(password)
    try:
        serve(settings, cat, environment=environment, broker=url)
    except WorkerError as exc:
        error(exc.message, exc.hint)
        raise typer.Exit(exc.code) from None
