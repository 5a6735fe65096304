"""What every JSON API response shares: times as ISO 8601 in UTC, and cursor paging.

Paging, decided once for every list (executions, audit, alerts, approvals, room messages): the
body stays a JSON array of the items; when more follow, the answer carries `X-Next-Cursor` (an
opaque string to pass back as `?cursor=`) and a `Link: </api/v1/...?cursor=...>; rel="next"` header. No header: the
last page. A cursor names its list, so one list's cursor given to another is refused (422).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Query, Request, Response
from pydantic import BeforeValidator

from opsroom.errors import Invalid

MAX_KEY = 2**31 - 1  # the store's integer ids: a larger one would overflow PostgreSQL's int4 parameter
T = TypeVar("T")


def _utc(value: Any) -> Any:
    """The store keeps epoch seconds; responses give an instant with its zone (UTC)."""
    if isinstance(value, bool):
        return value  # refused by the datetime validator, never read as 0/1 seconds
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


UtcTime = Annotated[dt.datetime, BeforeValidator(_utc)]

Cursor = Annotated[str | None, Query(max_length=256, pattern=r"^[A-Za-z0-9_-]+$",
                                     description="opaque: the X-Next-Cursor of the previous page")]


def limit_query(default: int, most: int) -> Any:
    return Query(default, ge=1, le=most, description=f"items per page (1-{most})")


# Declared on each paged operation so the OpenAPI document (and /docs) shows the headers.
PAGED: dict[int | str, dict[str, Any]] = {200: {"headers": {
    "X-Next-Cursor": {"description": "present when another page follows: pass it as `?cursor=`",
                      "schema": {"type": "string"}},
    "Link": {"description": "`<URL of the next page>; rel=\"next\"` when another page follows",
             "schema": {"type": "string"}},
}}}


def encode_cursor(resource: str, key: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{resource}:{key}".encode()).decode().rstrip("=")


def decode_cursor(resource: str, cursor: str | None) -> int | None:
    """The position a cursor of `resource` stands for; anything else is a clear 422."""
    if cursor is None:
        return None
    bad = Invalid(f"cursor {cursor[:40]!r} is not one this list gave",
                  hint="start again without `cursor` and pass back each X-Next-Cursor as it comes")
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise bad from None
    version, _, rest = text.partition(":")
    name, _, key = rest.rpartition(":")
    if version != "v1" or name != resource or not key.isdigit() or len(key) > 10 or int(key) > MAX_KEY:
        raise bad
    return int(key)


def page(request: Request, response: Response, *, resource: str, rows: Sequence[T], limit: int,
         key: Callable[[T], int]) -> list[T]:
    """The first `limit` of `rows` (fetched as limit + 1 to know whether more follow), with the
    next-page headers set when they do."""
    items = list(rows[:limit])
    if len(rows) > limit and items:
        cursor = encode_cursor(resource, key(items[-1]))
        response.headers["X-Next-Cursor"] = cursor
        # Relative (RFC 8288): a Host header a proxy passed on, or a client forged, names no other server.
        following = request.url.include_query_params(cursor=cursor)
        response.headers["Link"] = f'<{following.path}?{following.query}>; rel="next"'
    return items

