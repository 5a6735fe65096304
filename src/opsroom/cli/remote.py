"""Commands that act as a person: requests to the running server (DESIGN 8, "the CLI is a client").

No runbook or check runs in this process, and no local catalog is read: the server's catalog,
approvals and audit decide, whatever copy of the catalog the person running the CLI holds.
"""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer

from opsroom.cli.client import Client, ClientError, path_part
from opsroom.cli.common import ServerOpt, TokenOpt, app, check_app, runbook_app
from opsroom.cli.terminal import error, write

# Statuses of an execution that is not finished yet (domain/execution.py ACTIVE); the CLI does
# not import the domain to stay a thin client, and a status it does not know ends the wait.
WAITING = {"pending", "running"}
CHECK_EXIT = {"OK": 0, "WARNING": 1, "CRITICAL": 2}  # as a Nagios plugin; anything else is 3


def _client(server: str | None, token: str | None) -> Client:
    if not token:
        error("this command acts as a user",
              "pass --token or set OPSROOM_TOKEN (an admin creates one with `opsroom token create USER`)")
        raise typer.Exit(2)
    token = token.strip()
    if not token.isascii() or not token.isprintable() or " " in token:
        error("the token holds characters no opsroom token has (spaces, control or non-ASCII characters)",
              "copy the whole token `opsroom token create` printed, and nothing else")
        raise typer.Exit(2)
    if server is None:
        from opsroom.config import Settings

        try:
            server = Settings().url
        except ValueError as exc:
            error(f"bad OPSROOM_* setting: {str(exc).splitlines()[0]}", "fix the environment variable it names")
            raise typer.Exit(2) from None
    return Client(server, token, timeout=60)


def _object(payload: Any, *fields: str) -> dict[str, Any]:
    """The server's answer as the object it must be, with `fields`; anything else is one clear line."""
    if not isinstance(payload, dict) or any(f not in payload for f in fields):
        raise ClientError("the server's answer is not what this opsroom CLI expects",
                          hint="is the server an opsroom of the same version? see `opsroom --help` on both")
    return payload


def _fail(exc: ClientError) -> typer.Exit:
    error(exc.message, exc.hint)
    return typer.Exit(exc.exit_code)


@check_app.command("run")
def check_run(name: str, server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Ask the server to run one check now; print its result, exit 0/1/2/3 like a Nagios plugin."""
    try:
        with _client(server, token) as api:
            view = _object(api.post(f"/checks/{path_part(name)}/run"), "check", "state")
    except ClientError as exc:
        raise _fail(exc) from None
    write(f"{view['check']}: {view['state']} {view.get('output') or ''}")
    raise typer.Exit(CHECK_EXIT.get(str(view.get("state")), 3))


def _params(name: str, given: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for p in given:
        if "=" not in p:
            error(f"{p!r} is not key=value", f"opsroom runbook run {name} key=value")
            raise typer.Exit(2)
        k, _, v = p.partition("=")
        params[k] = v
    return params


def _wait(api: Client, execution: int, timeout: float) -> dict[str, Any]:
    """Poll the execution until it ends or `timeout` passes; each poll is one audited view,
    so the interval grows to 2 s: a long runbook costs a few records a second at most."""
    deadline = time.monotonic() + timeout
    pause = 0.1
    while True:
        row = _object(api.get(f"/executions/{execution}"), "status")
        if row.get("status") not in WAITING or time.monotonic() >= deadline:
            return row
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 1.5, 2.0)


@runbook_app.command("run")
def runbook_run(name: str, params: Annotated[list[str] | None, typer.Argument(help="key=value")] = None,
                server: ServerOpt = None, token: TokenOpt = None,
                no_wait: Annotated[bool, typer.Option("--no-wait", help="print the execution and return")] = False,
                timeout: Annotated[float, typer.Option(min=0, help="seconds to wait for the end of the run")]
                = 900.0) -> None:
    """Ask the server to run a runbook as the token's user; on protected environments it awaits approval."""
    given = _params(name, params or [])
    try:
        with _client(server, token) as api:
            row = _object(api.post(f"/runbooks/{path_part(name)}/run", {"params": given}), "id", "status")
            eid = row["id"]
            if not isinstance(eid, int):
                raise ClientError("the server's answer is not what this opsroom CLI expects (execution id)")
            if row.get("status") == "awaiting_approval":
                write(f"execution #{eid} awaits approval (request #{row.get('approval_id')}); "
                      "an approver decides in the room or the API")
                return
            if no_wait:
                write(f"execution #{eid}: {row.get('status')}")
                return
            row = _wait(api, eid, timeout)
    except ClientError as exc:
        raise _fail(exc) from None
    status = str(row.get("status"))
    if status in WAITING:
        error(f"execution #{eid} is still {status} after {timeout:g} s",
              f"it goes on on the server; follow it in the room or at GET /api/v1/executions/{eid}")
        raise typer.Exit(1)
    output = str(row.get("output") or "")
    if output:
        write(output, end="" if output.endswith("\n") else "\n")
    if row.get("error"):
        write(f"error: {row['error']}", stream=sys.stderr)
    write(f"execution #{eid}: {status}")
    raise typer.Exit(0 if status == "succeeded" else 1)


@app.command("cancel")
def cancel(execution: Annotated[int, typer.Argument(min=1, help="the execution's number")],
           server: ServerOpt = None, token: TokenOpt = None) -> None:
    """Cancel an execution as the token's user: its process gets SIGTERM, then SIGKILL after a grace period."""
    try:
        with _client(server, token) as api:
            row = _object(api.post(f"/executions/{execution}/cancel"), "id", "status")
    except ClientError as exc:
        raise _fail(exc) from None
    status = str(row.get("status"))
    write(f"execution #{execution}: {status}" + ("" if status == "cancelled" else " (its process is being stopped)"))
    raise typer.Exit(0 if status == "cancelled" else 1)
