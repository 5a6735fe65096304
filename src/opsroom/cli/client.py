"""The CLI's side of the JSON API: one request, one clear answer or one clear error line.

The server answers errors as {"detail", "code", "hint"}; every failure a person can meet here
(no server, a wrong token, an unknown name, a refusal) becomes a `ClientError` with a hint and an
exit code, and every string the server sent is cleaned before it reaches the terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from opsroom import __version__
from opsroom.cli.terminal import clean, write

# Exit codes (docs/cli.md): each a different answer a script can act on.
OK, NOT_OK, USAGE, FORBIDDEN, NOT_FOUND, UNREACHABLE = 0, 1, 2, 3, 4, 5
FORBIDDEN_EXIT = FORBIDDEN


class ClientError(Exception):
    def __init__(self, message: str, *, hint: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = clean(message)
        self.hint = clean(hint) if hint else None
        self.exit_code = exit_code


def path_part(name: str) -> str:
    """A name as one path segment: `a/b` or `..` must not reach another route."""
    return quote(name, safe="")


def _detail(body: Any) -> tuple[str | None, str | None]:
    """(detail, hint) from the API's error body; a 422's list of field errors as one line."""
    if not isinstance(body, dict):
        return None, None
    detail, hint = body.get("detail"), body.get("hint")
    if isinstance(detail, list):
        parts = []
        for item in detail[:5]:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
        detail = "; ".join(parts) or None
    return (str(detail) if detail is not None else None), (str(hint) if hint else None)


class Client:
    """A synchronous client for one server and one token (the CLI does one thing at a time)."""

    def __init__(self, server: str, token: str, *, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout
        try:
            url = httpx.URL(self.server)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ClientError(f"{self.server!r} is not a usable server address: {exc}",
                              hint="pass --server http://HOST:PORT or set OPSROOM_URL", exit_code=2) from None
        if url.scheme not in {"http", "https"}:
            raise ClientError(f"{self.server!r} is not an http:// or https:// address",
                              hint="pass --server http://HOST:PORT or set OPSROOM_URL", exit_code=2)
        if url.scheme == "http" and url.host not in {"127.0.0.1", "localhost", "::1"}:
            # A bearer token over plain http to another host can be read on the way.
            write(f"warning: the token goes to {url.host} over plain http; use https:// outside this host",
                  stream=sys.stderr)
        self._http = httpx.Client(base_url=self.server + "/api/v1", timeout=timeout,
                                  headers={"Authorization": f"Bearer {token}",
                                           "User-Agent": f"opsroom-cli/{__version__}"})

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._http.close()

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._request("POST", path, body)

    def _unreachable(self, exc: httpx.HTTPError) -> ClientError:
        if isinstance(exc, httpx.TimeoutException):
            return ClientError(f"the opsroom server at {self.server} did not answer in time",
                               hint="it may be overloaded or stuck; see its log", exit_code=UNREACHABLE)
        return ClientError(f"cannot reach the opsroom server at {self.server} ({type(exc).__name__})",
                           hint=f"is `opsroom serve` running at {self.server}? log in to it with `opsroom login "
                                "URL`, or pass --server", exit_code=UNREACHABLE)

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        unreachable = (f"is `opsroom serve` running at {self.server}? set --server or OPSROOM_URL "
                       "to the server's address")
        try:
            resp = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        try:
            payload = resp.json()
        except ValueError:
            payload = None
        if resp.is_success:
            if payload is None:
                raise ClientError(f"{self.server} answered {method} {path} with something that is not JSON",
                                  hint=f"is {self.server} an opsroom server? {unreachable}", exit_code=UNREACHABLE)
            return payload
        raise self._error(resp.status_code, payload)

    def stream(self, path: str) -> Iterator[tuple[str, Any]]:
        """The (event, data) of a Server-Sent Events stream as they arrive; pings are skipped.
        No read timeout: a quiet run sends a ping every 15 s, and a person ends the wait with ^C."""
        timeout = httpx.Timeout(self.timeout, read=None)
        try:
            with self._http.stream("GET", path, timeout=timeout, headers={"Accept": "text/event-stream"}) as resp:
                if not resp.is_success:
                    resp.read()
                    try:
                        payload = resp.json()
                    except ValueError:
                        payload = None
                    raise self._error(resp.status_code, payload)
                name, data = "message", list[str]()
                for line in resp.iter_lines():
                    if line == "":
                        if data:
                            yield name, json.loads("\n".join(data))
                        name, data = "message", []
                    elif line.startswith(":"):
                        yield "ping", None  # the caller may check its own deadline
                    elif line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        except ValueError:
            raise ClientError(f"{self.server} sent a stream event that is not JSON",
                              hint="is the server an opsroom of the same version?", exit_code=UNREACHABLE) from None

    def _error(self, status: int, payload: Any) -> ClientError:
        detail, hint = _detail(payload)
        if detail is None:  # not opsroom's JSON: another program answers at that address
            return ClientError(f"{self.server} answered HTTP {status}, not as an opsroom server would",
                               hint=f"is `opsroom serve` running at {self.server}? set --server or OPSROOM_URL",
                               exit_code=UNREACHABLE)
        if status == 401:
            return ClientError(detail, hint="pass a valid token with --token or OPSROOM_TOKEN, or log in again with "
                                            "`opsroom login URL`; an admin creates one on the server host with "
                                            "`opsroom token create USER`", exit_code=FORBIDDEN)
        if status == 403:
            return ClientError(detail, hint=hint, exit_code=FORBIDDEN)
        if status == 404:
            return ClientError(detail, hint=hint, exit_code=NOT_FOUND)
        if status in (400, 422):
            return ClientError(detail, hint=hint, exit_code=USAGE)
        if status >= 500:
            return ClientError(f"the server failed: {detail}", hint=hint or "see the opsroom server's log",
                               exit_code=UNREACHABLE if status in (502, 503, 504) else NOT_OK)
        return ClientError(detail, hint=hint)
