"""Alertmanager's API v2 silences, for `silence` from a room: create, read, list and expire.

A small aiohttp client (aiohttp is already a dependency; Alertmanager's own Python client is
generated code we would carry for four calls). Every failure is an OpsroomError that names the
Alertmanager URL and what it said (status and an excerpt of the body), so a person sees why a
silence did not happen and never a traceback. Responses are read up to MAX_BODY bytes.

Matchers are API v2 dicts: {"name": ..., "value": ..., "isRegex": bool, "isEqual": bool}.
Times are epoch seconds here and RFC3339 UTC on the wire.
"""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

import aiohttp
from yarl import URL

from opsroom.alerts.matchers import Matcher
from opsroom.errors import Conflict, Invalid, NotFound

MAX_BODY = 4 << 20  # a list of a few thousand silences; anything larger is not an Alertmanager
EXCERPT = 300
HINT = "check the Alertmanager URL in the catalog and that Alertmanager runs and answers on it"


class AlertmanagerError(Conflict):
    """Alertmanager could not be reached or answered something we cannot use."""

    code = "alertmanager"

    def __init__(self, message: str, *, url: str, status: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.url, self.status = url, status


class SilenceRejected(AlertmanagerError, Invalid):
    """Alertmanager refused the silence as invalid (HTTP 400): the request needs fixing."""

    code = "alertmanager_rejected"


class SilenceNotFound(AlertmanagerError, NotFound):
    code = "not_found"


def rfc3339(ts: float) -> str:
    """Epoch seconds as Alertmanager writes times: RFC3339, UTC, milliseconds."""
    when = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """Alertmanager's RFC3339 (nanoseconds, Z) -> epoch seconds; Python 3.11 reads it whole."""
    return datetime.datetime.fromisoformat(text).timestamp()


def api_matchers(matchers: tuple[Matcher, ...] | list[Matcher]) -> list[dict[str, Any]]:
    """Our parsed matchers (opsroom.alerts.matchers) as API v2 matcher dicts."""
    return [{"name": m.label, "value": m.value, "isRegex": m.is_regex, "isEqual": m.is_equal} for m in matchers]


def _excerpt(raw: bytes) -> str:
    text = raw[:EXCERPT].decode("utf-8", "replace").strip()
    return text + ("…" if len(raw) > EXCERPT else "")


class AlertmanagerApi:
    """One Alertmanager: `AlertmanagerApi("http://am:9093")`; close() when done."""

    def __init__(self, base_url: str, *, timeout_s: float = 5.0,
                 session: aiohttp.ClientSession | None = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise Invalid(f"Alertmanager URL {base_url[:200]!r} is not an http(s) URL",
                          hint="write it as http://HOST:9093 (the address Alertmanager listens on)")
        self.base_url = base_url.rstrip("/")
        # What messages show: the URL without any user:password in it.
        self.shown_url = str(URL(self.base_url).with_user(None))
        self.timeout_s = timeout_s
        self._session = session
        self._own_session = session is None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers={"User-Agent": "opsroom"})
            self._own_session = True
        return self._session

    async def close(self) -> None:
        """Close the session if we opened it; a session the caller gave stays theirs."""
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def _call(self, method: str, path: str, *, body: Any = None) -> tuple[int, Any, bytes]:
        """(status, decoded JSON or None, raw body); raises only when Alertmanager cannot be reached."""
        url = self.base_url + path
        try:
            async with self._http().request(method, url, json=body,
                                            timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as resp:
                status, buf = resp.status, bytearray()
                # read(n) returns what has arrived, up to n: loop to the end or just past the bound.
                while len(buf) <= MAX_BODY and (chunk := await resp.content.read(MAX_BODY + 1 - len(buf))):
                    buf += chunk
                raw = bytes(buf)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = f"no answer within {self.timeout_s:g}s" if isinstance(exc, TimeoutError) else str(exc)
            raise AlertmanagerError(f"could not reach Alertmanager at {self.shown_url}: {reason or type(exc).__name__}",
                                    url=self.shown_url, hint=HINT) from None
        if len(raw) > MAX_BODY:
            raise AlertmanagerError(f"Alertmanager at {self.shown_url} answered {method} {path} with more than "
                                    f"{MAX_BODY} bytes", url=self.shown_url, status=status, hint=HINT)
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        return status, data, raw

    def _failed(self, what: str, status: int, raw: bytes) -> AlertmanagerError:
        said = f"HTTP {status}: {_excerpt(raw) or '(no body)'}"
        message = f"Alertmanager at {self.shown_url} refused to {what}: {said}"
        if 200 <= status < 300:
            return AlertmanagerError(f"Alertmanager at {self.shown_url} did not {what}: it answered {said}, not "
                                     "Alertmanager's JSON", url=self.shown_url, status=status, hint=HINT)
        if status in (400, 422):
            return SilenceRejected(message, url=self.shown_url, status=status,
                                   hint="check the matchers and that the end time is after the start")
        if status == 404:
            return SilenceNotFound(message, url=self.shown_url, status=status,
                                   hint="list silences to see the ids Alertmanager has")
        return AlertmanagerError(message, url=self.shown_url, status=status,
                                 hint=HINT if status >= 500 or status in (401, 403) else None)

    async def create_silence(self, *, matchers: list[dict[str, Any]], starts_at: float, ends_at: float,
                             created_by: str, comment: str) -> str:
        """POST /api/v2/silences; the new silence's id."""
        body = {"matchers": matchers, "startsAt": rfc3339(starts_at), "endsAt": rfc3339(ends_at),
                "createdBy": created_by, "comment": comment}
        status, data, raw = await self._call("POST", "/api/v2/silences", body=body)
        if status != 200:
            raise self._failed("create a silence", status, raw)
        sid = data.get("silenceID") if isinstance(data, dict) else None
        if not isinstance(sid, str) or not sid:
            raise AlertmanagerError(f"Alertmanager at {self.shown_url} created a silence but sent no silenceID: "
                                    f"{_excerpt(raw)}", url=self.shown_url, status=status)
        return sid

    async def get_silence(self, silence_id: str) -> dict[str, Any]:
        """GET /api/v2/silence/{id}: id, status.state, matchers, startsAt, endsAt, createdBy, comment."""
        status, data, raw = await self._call("GET", f"/api/v2/silence/{_silence_id(silence_id)}")
        if status != 200 or not isinstance(data, dict):
            raise self._failed(f"show silence {silence_id}", status, raw)
        return data

    async def list_silences(self) -> list[dict[str, Any]]:
        """GET /api/v2/silences: every silence Alertmanager still keeps, expired ones included."""
        status, data, raw = await self._call("GET", "/api/v2/silences")
        if status != 200 or not isinstance(data, list):
            raise self._failed("list silences", status, raw)
        return [s for s in data if isinstance(s, dict)]

    async def expire_silence(self, silence_id: str) -> bool:
        """DELETE /api/v2/silence/{id}; True if it expired now, False if unknown or already expired."""
        # Alertmanager 0.25 answers 200 to a DELETE of an expired silence and 500 "silence not
        # found" to an unknown id, so ask first what the silence is and expire only a live one.
        path = f"/api/v2/silence/{_silence_id(silence_id)}"
        status, data, raw = await self._call("GET", path)
        if status == 404:
            return False
        if status != 200 or not isinstance(data, dict):
            raise self._failed(f"show silence {silence_id}", status, raw)
        if (data.get("status") or {}).get("state") == "expired":
            return False
        status, _data, raw = await self._call("DELETE", path)
        if status == 200:
            return True
        if status in (404, 500) and b"not found" in raw:
            return False  # removed between the two calls
        raise self._failed(f"expire silence {silence_id}", status, raw)


def _silence_id(silence_id: str) -> str:
    """Alertmanager's silence ids are UUIDs; anything else is refused before a request is made."""
    try:
        return str(uuid.UUID(silence_id))
    except (ValueError, TypeError, AttributeError):
        shown = silence_id[:40] if isinstance(silence_id, str) else type(silence_id).__name__
        raise Invalid(f"{shown!r} is not a silence id",
                      hint="Alertmanager's silence ids look like 4c1c1c5e-8f0c-4a8b-9d59-6b2b0d5c3f10") from None
