"""Runbook runs from the CLI: ask for one, wait for its approval, follow its output live.

Following reads the server's event stream of the execution (GET /api/v1/executions/N/stream):
output lines appear as the runbook prints them, and the command exits with the run's outcome
(0 succeeded, 1 anything else). With -o json|yaml the live lines go to stderr and stdout holds
only the final execution object, so a script can parse it.
"""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any, TextIO

import typer

from opsroom.cli.client import NOT_OK, UNREACHABLE, USAGE, Client, ClientError, path_part
from opsroom.cli.common import OutputOpt, ProfileOpt, ServerOpt, TokenOpt, app, runbook_app
from opsroom.cli.output import Format, fields, show, when
from opsroom.cli.remote import api_client, calling, expect, listing, output_format
from opsroom.cli.terminal import error, write

ACTIVE = {"pending", "awaiting_approval", "running"}  # domain/execution.py ACTIVE (the CLI stays thin)
RECONNECTS = 5  # a stream dropped because this terminal fell behind is opened again this often


def _params(name: str, given: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for p in given:
        if "=" not in p:
            error(f"{p!r} is not key=value", f"opsroom runbook run {name} key=value")
            raise typer.Exit(USAGE)
        k, _, v = p.partition("=")
        params[k] = v
    return params


def _asked(api: Client, row: dict[str, Any], say: TextIO) -> None:
    """Who must decide the run's approval request, as the server tells it."""
    aid = row.get("approval_id")
    line = f"execution #{row['id']} awaits approval (request #{aid})"
    try:
        req = expect(api.get(f"/approvals/{aid}"), "id") if isinstance(aid, int) else {}
    except ClientError:
        req = {}  # the run itself is what the person waits for; the request's detail is a courtesy
    asked = req.get("approvers") or req.get("roles")
    if asked:
        line += f"; asked: {', '.join(map(str, asked))}"
    if req.get("expires_at") is not None:
        line += f"; expires {when(req.get('expires_at'))}"
    write(line + "; an approver decides in the room or with `opsroom approve " + f"{aid}`", stream=say)


def follow(api: Client, eid: int, *, say: TextIO, deadline: float | None) -> dict[str, Any]:
    """Stream the execution until it ends; its output goes to `say` as it is printed. Returns the
    final execution. A stream dropped because this terminal fell behind is opened again and its
    replay (all the output so far) is skipped as far as it was printed."""
    consumed, shown, reconnects, partial = 0, None, 0, ""
    while True:
        seen = 0
        for event, data in api.stream(f"/executions/{eid}/stream"):
            if deadline is not None and time.monotonic() > deadline:
                raise ClientError(f"execution #{eid} has not ended in the time given (--timeout)",
                                  hint=f"it goes on on the server: `opsroom execution {eid} --follow`")
            if event == "output" and isinstance(data, dict):
                text = str(data.get("text") or "")
                new = text[max(0, consumed - seen):]
                seen += len(text)
                consumed += len(new)
                # Whole lines only: an escape sequence cut between two events is cleaned whole.
                head, nl, partial = (partial + new).rpartition("\n")
                if nl:
                    write(head + nl, stream=say, end="")
            elif event == "execution" and isinstance(data, dict):
                if shown is not None and data.get("status") != shown:
                    write(f"execution #{eid}: {data.get('status')}", stream=say)
                shown = data.get("status")
            elif event == "end" and isinstance(data, dict):
                if partial:
                    write(partial, stream=say)
                return data
            elif event == "error" and isinstance(data, dict):
                if data.get("code") == "fell_behind" and reconnects < RECONNECTS:
                    reconnects += 1
                    break
                raise ClientError(str(data.get("detail") or "the stream ended"),
                                  hint=f"execution #{eid} goes on on the server: `opsroom execution {eid} --follow`"
                                  , exit_code=UNREACHABLE)
        else:
            raise ClientError(f"the server closed the stream of execution #{eid} before its end",
                              hint=f"follow it again: `opsroom execution {eid} --follow`", exit_code=UNREACHABLE)


def _final(api: Client, eid: int, fmt: Format, say: TextIO) -> None:
    """Print the ended run (its detail from the API) and exit with its outcome."""
    row = expect(api.get(f"/executions/{eid}"), "id", "status")
    status = str(row["status"])
    if fmt is Format.table:
        if row.get("error"):
            write(f"error: {row['error']}", stream=sys.stderr)
        write(f"execution #{eid}: {status}", stream=say)
    else:
        show(row, fmt)
    raise typer.Exit(0 if status == "succeeded" else NOT_OK)


@runbook_app.command("run")
def runbook_run(name: str, params: Annotated[list[str] | None, typer.Argument(help="key=value")] = None,
                server: ServerOpt = None, token: TokenOpt = None, profile: ProfileOpt = None,
                output: OutputOpt = None,
                no_wait: Annotated[bool, typer.Option("--no-wait", help="print the execution and return")] = False,
                timeout: Annotated[float | None, typer.Option(min=0, help="seconds to wait for the end (default: "
                                                                          "until it ends)")] = None) -> None:
    """Run a runbook as your user; waits for its approval if it needs one, shows its output live and
    exits with its outcome (0 succeeded, 1 not)."""
    fmt = output_format(output)
    say = sys.stdout if fmt is Format.table else sys.stderr  # stdout stays parseable with -o json|yaml
    given = _params(name, params or [])
    deadline = time.monotonic() + timeout if timeout is not None else None
    with calling(), api_client(server, token, profile) as api:
        row = expect(api.post(f"/runbooks/{path_part(name)}/run", {"params": given}), "id", "status")
        eid = row["id"]
        if not isinstance(eid, int):
            raise ClientError("the server's answer is not what this opsroom CLI expects (execution id)")
        if row.get("status") == "awaiting_approval":
            _asked(api, row, say)
        if no_wait:
            if fmt is Format.table:
                if row.get("status") != "awaiting_approval":
                    write(f"execution #{eid}: {row.get('status')}")
            else:
                show(row, fmt)
            return
        try:
            follow(api, eid, say=say, deadline=deadline)
        except KeyboardInterrupt:
            error(f"stopped following execution #{eid}; it goes on on the server",
                  f"follow it with `opsroom execution {eid} --follow`, stop it with `opsroom cancel {eid}`")
            raise typer.Exit(130) from None
        _final(api, eid, fmt, say)


@app.command()
def executions(server: ServerOpt = None, token: TokenOpt = None, profile: ProfileOpt = None,
               output: OutputOpt = None,
               status: Annotated[str | None, typer.Option(help="only runs in this status, e.g. running")] = None,
               limit: Annotated[int, typer.Option(min=1, max=500, help="at most this many")] = 50) -> None:
    """Recent executions, newest first."""
    query = f"/executions?limit={limit}" + (f"&status={path_part(status)}" if status else "")
    listing(query, output, server, token, profile, [
        ("id", "id"), ("runbook", "runbook"), ("status", "status"), ("environment", "environment"),
        ("requested by", "requested_by"), ("created", lambda r: when(r.get("created_at"))),
        ("summary", "summary")])


@app.command()
def execution(number: Annotated[int, typer.Argument(min=1, help="the execution's number")],
              server: ServerOpt = None, token: TokenOpt = None, profile: ProfileOpt = None,
              output: OutputOpt = None,
              follow_: Annotated[bool, typer.Option("--follow", "-f", help="stream its output until it ends")]
              = False) -> None:
    """One execution: its status, the catalog version it ran under, its output; exit 1 when it ended
    other than succeeded. With --follow, its output live until it ends."""
    fmt = output_format(output)
    say = sys.stdout if fmt is Format.table else sys.stderr
    with calling(), api_client(server, token, profile) as api:
        if follow_:
            try:
                follow(api, number, say=say, deadline=None)
            except KeyboardInterrupt:
                raise typer.Exit(130) from None
            _final(api, number, fmt, say)
        row = expect(api.get(f"/executions/{number}"), "id", "status")
    status = str(row["status"])
    show(row, fmt, text=lambda r: fields(r, [
        "id", "runbook", "status", "environment", "requested_by", "door", "rule", "approval_id", "catalog_hash",
        "created_at", "started_at", "finished_at", "error", "summary"]) + (
        f"output:\n{r['output']}" + ("" if str(r["output"]).endswith("\n") else "\n") if r.get("output") else ""))
    raise typer.Exit(0 if status in ACTIVE or status == "succeeded" else NOT_OK)


@app.command("cancel")
def cancel(number: Annotated[int, typer.Argument(min=1, help="the execution's number")],
           server: ServerOpt = None, token: TokenOpt = None, profile: ProfileOpt = None,
           output: OutputOpt = None) -> None:
    """Cancel an execution: its process gets SIGTERM, then SIGKILL after a grace period."""
    with calling(), api_client(server, token, profile) as api:
        row = expect(api.post(f"/executions/{number}/cancel"), "id", "status")
    status = str(row.get("status"))
    show(row, output_format(output), text=lambda _r: f"execution #{number}: {status}" + (
        "" if status == "cancelled" else " (its process is being stopped)") + "\n")
    raise typer.Exit(0 if status == "cancelled" else NOT_OK)
