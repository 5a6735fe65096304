"""Commands that act as a person: requests to the running server (DESIGN 8, "the CLI is a client").

No runbook or check runs in this process, and no local catalog is read: the server's catalog,
approvals and audit decide, whatever copy of the catalog the person running the CLI holds.
Where the server and token come from (docs/cli.md): --server/--token, else --profile (or
OPSROOM_PROFILE), else OPSROOM_URL/OPSROOM_TOKEN, else the current profile of `opsroom login`.
Exit codes (cli/client.py): 0 ok, 1 not OK, 2 usage, 3 not allowed, 4 not found, 5 unreachable.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from opsroom.cli import profiles
from opsroom.cli.client import NOT_OK, USAGE, Client, ClientError, path_part
from opsroom.cli.common import OutputOpt, ProfileOpt, ServerOpt, TokenOpt, app, check_app
from opsroom.cli.output import Column, Format, fields, show, table, when
from opsroom.cli.terminal import error, write

CHECK_EXIT = {"OK": 0, "WARNING": 1, "CRITICAL": 2}  # as a Nagios plugin; anything else is 3 (UNKNOWN)
DEFAULT_URL = "http://127.0.0.1:8080"


# The options given before the command (`opsroom -o json status`); the root callback sets them.
GLOBAL: dict[str, Any] = {}


def _root(name: str) -> Any:
    return GLOBAL.get(name)


def output_format(output: Format | None) -> Format:
    return output or _root("output") or Format.table


def _check_token(token: str) -> str:
    token = token.strip()
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ClientError("the token holds characters no opsroom token has (spaces, control or non-ASCII "
                          "characters)", hint="copy the whole token `opsroom token create` printed, and nothing "
                                              "else", exit_code=USAGE)
    return token


def _env_url() -> str:
    from opsroom.config import Settings

    try:
        return Settings().url if os.environ.get("OPSROOM_URL") else DEFAULT_URL
    except ValueError as exc:
        raise ClientError(f"bad OPSROOM_* setting: {str(exc).splitlines()[0]}",
                          hint="fix the environment variable it names", exit_code=USAGE) from None


def _same_server(a: str, b: str) -> bool:
    return a.rstrip("/").lower() == b.rstrip("/").lower()


def resolve(server: str | None, token: str | None, profile: str | None) -> tuple[str, str]:
    """The server and token a command uses. A token goes only to the server it came with, unless
    both are given as options: a profile's token is never sent to another --server."""
    server, token = server or _root("server"), token or _root("token")
    profile = profile or _root("profile")
    env_token, env_url = os.environ.get("OPSROOM_TOKEN"), os.environ.get("OPSROOM_URL")
    pair: tuple[str | None, str | None]
    if profile is not None:
        source = profiles.load(profiles.check_name(profile))
        pair = (source.server, source.token) if source else (None, None)
    elif env_token or env_url:
        pair = (_env_url(), env_token)
    else:
        current = profiles.load(None)
        pair = (current.server, current.token) if current else (None, None)
    if token is None:
        if server is None or (pair[0] is not None and _same_server(server, pair[0])):
            token = pair[1]
        else:
            token = env_token  # never a profile's token to a server that is not the profile's
    url = server or pair[0] or _env_url()
    if not token:
        raise ClientError("this command acts as a user: no token",
                          hint="log in with `opsroom login URL`, or pass --token or set OPSROOM_TOKEN (an admin "
                               "creates one with `opsroom token create USER`)", exit_code=USAGE)
    return url, _check_token(token)


def api_client(server: str | None = None, token: str | None = None, profile: str | None = None, *,
               timeout: float = 60.0) -> Client:
    """The API client every remote command (and `opsroom catalog reload`) gets from its options.
    Raises ClientError (with its exit code) when no server or token can be found."""
    try:
        url, tok = resolve(server, token, profile)
    except profiles.ProfileError as exc:
        raise ClientError(exc.message, hint=exc.hint, exit_code=USAGE) from None
    return Client(url, tok, timeout=timeout)


def _client(server: str | None, token: str | None) -> Client:
    """Kept for the commands written before profiles (they catch ClientError themselves)."""
    return api_client(server, token)


@contextmanager
def calling() -> Iterator[None]:
    """Turn a failed request into one error line, its hint, and its exit code; never a traceback."""
    try:
        yield
    except ClientError as exc:
        error(exc.message, exc.hint)
        raise typer.Exit(exc.exit_code) from None
    except profiles.ProfileError as exc:
        error(exc.message, exc.hint)
        raise typer.Exit(USAGE) from None


def expect(payload: Any, *keys: str) -> Any:
    """The server's answer as the object it must be; anything else is one clear line."""
    if keys and (not isinstance(payload, dict) or any(k not in payload for k in keys)):
        raise ClientError("the server's answer is not what this opsroom CLI expects",
                          hint="is the server an opsroom of the same version? see `opsroom --version` on both")
    return payload


def rows(payload: Any) -> list[dict[str, Any]]:
    if not isinstance(payload, list):
        raise ClientError("the server's answer is not the list this opsroom CLI expects",
                          hint="is the server an opsroom of the same version? see `opsroom --version` on both")
    return [r for r in payload if isinstance(r, dict)]


def listing(path: str, output: Format | None, server: str | None, token: str | None, profile: str | None,
            columns: list[Column] | None = None, text: Callable[[Any], str] | None = None) -> list[dict[str, Any]]:
    """GET a list and show it: what most remote commands are."""
    with calling(), api_client(server, token, profile) as api:
        items = rows(api.get(path))
    show(items, output_format(output), columns, text)
    return items


# --- profiles -----------------------------------------------------------------------------------

def _read_token(given: str | None) -> str:
    if given:
        return given
    if os.environ.get("OPSROOM_TOKEN"):
        return os.environ["OPSROOM_TOKEN"]
    if not sys.stdin.isatty():
        return sys.stdin.readline()
    return getpass.getpass("API token (`opsroom token create USER` on the server host): ")


@app.command()
def login(url: Annotated[str, typer.Argument(help="the server, e.g. https://opsroom.example.org")],
          profile: Annotated[str | None, typer.Option("--profile", envvar="OPSROOM_PROFILE",
                                                      help="save as this profile (default: 'default')")] = None,
          token: Annotated[str | None, typer.Option(
              "--token", help="the API token; else OPSROOM_TOKEN, else read from stdin or a prompt (not echoed)")]
          = None) -> None:
    """Check a token against a server (GET /api/v1/me) and save both as a profile (mode 0600)."""
    with calling():
        name = profiles.check_name(profile if profile is not None else profiles.DEFAULT)
        tok = _check_token(_read_token(token))
        if not tok:
            raise ClientError("no token given", hint="pass --token, set OPSROOM_TOKEN, or type it at the prompt",
                              exit_code=USAGE)
        with Client(url, tok, timeout=30) as api:
            me = expect(api.get("/me"), "name")
        profiles.save(profiles.Profile(name, api.server, tok, str(me["name"])))
    roles = ", ".join(map(str, me.get("roles") or [])) or "no roles"
    write(f"logged in to {api.server} as {me['name']} ({roles}); profile {name!r} saved in {profiles.path()}")


@app.command()
def logout(profile: ProfileOpt = None) -> None:
    """Forget a saved profile (the current one by default); its token stays valid until revoked."""
    with calling():
        gone = profiles.remove(profiles.check_name(profile) if profile else None)
    if gone is None:
        error(f"there is no profile {profile!r}" if profile else "no profile is saved",
              "see them with `opsroom profiles`")
        raise typer.Exit(4)
    write(f"profile {gone.name!r} ({gone.server}) forgotten; revoke its token on the server if it leaked "
          "(`opsroom token revoke` or DELETE /api/v1/tokens/ID)")


@app.command("profiles")
def list_profiles(output: OutputOpt = None) -> None:
    """The saved profiles (never their tokens); * marks the current one."""
    with calling():
        current, saved = profiles.listing()
    items = [{"name": p.name, "server": p.server, "user": p.user, "current": p.name == current} for p in saved]
    show(items, output_format(output), [("", lambda r: "*" if r["current"] else ""), ("name", "name"),
                                        ("server", "server"), ("user", "user")])


# --- status, checks, alerts, runbooks --------------------------------------------------------------

@app.command()
def status(server: ServerOpt = None, token: TokenOpt = None, profile: ProfileOpt = None,
           output: OutputOpt = None) -> None:
    """Every system's health; exit 1 when one is not healthy."""
    systems = listing("/systems", output, server, token, profile, [
        ("system", "system"), ("environment", "environment"), ("healthy", "healthy"),
        ("failing", lambda r: [f"{f.get('check')} {f.get('state')}" for f in r.get("failing") or []]),
        ("alerts", lambda r: len(r.get("alerts") or []))])
    raise typer.Exit(0 if all(s.get("healthy") for s in systems) else NOT_OK)


@app.command()
def health(system: Annotated[str, typer.Argument(help="a system's name")], server: ServerOpt = None,
           token: TokenOpt = None, profile: ProfileOpt = None, output: OutputOpt = None) -> None:
    """One system's services and their checks; exit 1 when it is not healthy."""
    with calling(), api_client(server, token, profile) as api:
        view = expect(api.get(f"/systems/{path_part(system)}/health"), "system", "healthy")
    checks = [{**c, "service": s.get("service")} for s in view.get("services") or [] for c in s.get("checks") or []]
    header = f"{view['system']} ({view.get('environment')}): {'healthy' if view['healthy'] else 'NOT healthy'}\n"
    show(view, output_format(output), text=lambda _v: header + _check_table(checks))
    raise typer.Exit(0 if view["healthy"] else NOT_OK)


def _check_table(items: list[dict[str, Any]]) -> str:
    return table(items, [("check", "check"), ("service", "service"), ("state", "state"),
                         ("since", lambda r: when(r.get("since"))), ("output", "output")])


@app.command()
def checks(server: ServerOpt = None, token: TokenOpt = None, profile: ProfileOpt = None,
           output: OutputOpt = None) -> None:
    """Every check and its state."""
    listing("/checks", output, server, token, profile, text=_check_table)


@check_app.command("run")
def check_run(name: str, server: ServerOpt = None, token: TokenOpt = None, profile: ProfileOpt = None,
              output: OutputOpt = None,
              nagios: Annotated[bool, typer.Option("--nagios", help="exit 0/1/2/3 by state, as a Nagios plugin "
                                                                    "(any failure to ask is 3, UNKNOWN)")] = False
              ) -> None:
    """Ask the server to run one check now; exit 0 when OK, else 1 (with --nagios: 0-3 by state)."""
    try:
        with calling(), api_client(server, token, profile) as api:
            view = expect(api.post(f"/checks/{path_part(name)}/run"), "check", "state")
    except typer.Exit as exc:
        raise typer.Exit(3 if nagios else exc.exit_code) from None
    state = str(view.get("state"))
    show(view, output_format(output), text=lambda v: f"{v['check']}: {state} {v.get('output') or ''}\n")
    if nagios:
        raise typer.Exit(CHECK_EXIT.get(state, 3))
    raise typer.Exit(0 if state == "OK" else NOT_OK)


@app.command()
def alerts(server: ServerOpt = None, token: TokenOpt = None, profile: ProfileOpt = None,
           output: OutputOpt = None) -> None:
    """Alerts from Alertmanager and webhooks, newest first."""
    listing("/alerts", output, server, token, profile, [
        ("id", "id"), ("name", "name"), ("status", "status"), ("severity", "severity"), ("system", "system"),
        ("since", lambda r: when(r.get("since"))), ("summary", "summary")])


@app.command()
def runbooks(server: ServerOpt = None, token: TokenOpt = None, profile: ProfileOpt = None,
             output: OutputOpt = None) -> None:
    """The runbooks the server's catalog offers, with their parameters."""
    listing("/runbooks", output, server, token, profile, [
        ("name", "name"), ("approval", "approval"), ("parameters", lambda r: list(r.get("parameters") or {})),
        ("title", "title")])


# --- approvals --------------------------------------------------------------------------------------

@app.command()
def approvals(server: ServerOpt = None, token: TokenOpt = None, profile: ProfileOpt = None,
              output: OutputOpt = None) -> None:
    """Open approval requests, the one that expires soonest first."""
    listing("/approvals", output, server, token, profile, [
        ("id", "id"), ("execution", "execution_id"), ("requester", "requester"), ("asked", "roles"),
        ("expires", lambda r: when(r.get("expires_at"))), ("summary", "summary")])


def _decide(approval: int, decision: str, reason: str | None, server: str | None, token: str | None,
            profile: str | None, output: Format | None) -> None:
    with calling(), api_client(server, token, profile) as api:
        row = expect(api.post(f"/approvals/{approval}/decision", {"decision": decision, "reason": reason}),
                     "id", "status")
    show(row, output_format(output), text=lambda r: f"request #{r['id']}: {r['status']} "
                                                    f"(execution #{r.get('execution_id')})\n")


@app.command()
def approve(approval: Annotated[int, typer.Argument(min=1, help="the request's number")],
            reason: Annotated[str | None, typer.Argument(help="why (optional)")] = None,
            server: ServerOpt = None, token: TokenOpt = None, profile: ProfileOpt = None,
            output: OutputOpt = None) -> None:
    """Approve a request (not your own): its run starts."""
    _decide(approval, "approve", reason, server, token, profile, output)


@app.command()
def deny(approval: Annotated[int, typer.Argument(min=1, help="the request's number")],
         reason: Annotated[str, typer.Argument(help="why: the requester reads it")],
         server: ServerOpt = None, token: TokenOpt = None, profile: ProfileOpt = None,
         output: OutputOpt = None) -> None:
    """Deny a request, saying why."""
    _decide(approval, "deny", reason, server, token, profile, output)


def approval_text(row: dict[str, Any]) -> str:
    return fields(row, ["id", "status", "requester", "roles", "expires_at", "summary"])
