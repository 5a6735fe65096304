"""The part of the Matrix client-server API the adapter uses, on aiohttp (already one of
opsroom's dependencies): login, whoami, join, /sync, send, profile, joined members.

Not matrix-nio: the adapter needs eight endpoints and no end-to-end encryption, and nio brings
its own stack (h2, jsonschema, pycryptodome, aiofiles, ...) into a process whose idle size is
budgeted. Errors come out as two kinds the adapter acts on: `Unreachable` (the homeserver is
away, a timeout, a 5xx: try again later) and `MatrixError` (the homeserver said no).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp

API = "/_matrix/client/v3"


class Unreachable(Exception):
    """The homeserver did not answer (connection refused or cut, timeout) or answered 5xx."""


class MatrixError(Exception):
    """The homeserver refused a request: HTTP status, Matrix errcode, and for M_LIMIT_EXCEEDED
    how long it asks us to wait."""

    def __init__(self, status: int, errcode: str, error: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {errcode}: {error}")
        self.status, self.errcode, self.error, self.retry_after = status, errcode, error, retry_after


def q(part: str) -> str:
    """One path segment (room ids and user ids contain ! : @ #)."""
    return quote(part, safe="")


class MatrixClient:
    def __init__(self, homeserver: str, *, access_token: str | None = None, timeout_s: float = 20.0) -> None:
        self.base = homeserver.rstrip("/")
        self.access_token = access_token
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # A small pool: one long-poll /sync and one send at a time is all the adapter does.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8),
                                                  headers={"User-Agent": "opsroom"})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, *, body: dict[str, Any] | None = None,
                      params: dict[str, str] | None = None, timeout_s: float | None = None,
                      auth: bool = True) -> dict[str, Any]:
        headers = {}
        if auth and self.access_token:
            headers["Authorization"] = f"Bearer {self.access_token}"
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s)
        try:
            async with self.session().request(method, self.base + path, json=body, params=params,
                                              headers=headers, timeout=timeout) as resp:
                raw = await resp.read()
                status = resp.status
                retry_header = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unreachable(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        if status >= 500:
            raise Unreachable(f"{method} {path}: HTTP {status}")
        if status >= 400:
            retry = data.get("retry_after_ms")
            retry_after = retry / 1000 if isinstance(retry, (int, float)) else _seconds(retry_header)
            raise MatrixError(status, str(data.get("errcode", "M_UNKNOWN")), str(data.get("error", ""))[:300],
                              retry_after if status == 429 else None)
        return data

    # --- the calls ---------------------------------------------------------

    async def login(self, user_id: str, password: str, device_id: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id},
                                "password": password, "initial_device_display_name": "opsroom"}
        if device_id:
            body["device_id"] = device_id
        got = await self.request("POST", f"{API}/login", body=body, auth=False)
        self.access_token = str(got["access_token"])
        return got

    async def whoami(self) -> str:
        return str((await self.request("GET", f"{API}/account/whoami"))["user_id"])

    async def join(self, room: str) -> str:
        """Join a room by id or alias (accepting an invite is the same call); its room id."""
        return str((await self.request("POST", f"{API}/join/{q(room)}", body={}))["room_id"])

    async def sync(self, *, since: str | None, timeout_ms: int, filter_json: str) -> dict[str, Any]:
        params = {"timeout": str(timeout_ms), "filter": filter_json}
        if since:
            params["since"] = since
        # The long poll may hold the request for timeout_ms: the client waits that and some.
        return await self.request("GET", f"{API}/sync", params=params, timeout_s=timeout_ms / 1000 + 15)

    async def send(self, room_id: str, txn_id: str, content: dict[str, Any]) -> str:
        path = f"{API}/rooms/{q(room_id)}/send/m.room.message/{q(txn_id)}"
        return str((await self.request("PUT", path, body=content))["event_id"])

    async def displayname(self, user_id: str) -> str | None:
        got = await self.request("GET", f"{API}/profile/{q(user_id)}/displayname")
        name = got.get("displayname")
        return name if isinstance(name, str) else None

    async def joined_members(self, room_id: str) -> dict[str, Any]:
        joined = (await self.request("GET", f"{API}/rooms/{q(room_id)}/joined_members")).get("joined")
        return joined if isinstance(joined, dict) else {}


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
