"""What the built-in alert source kinds share: JSON read with limits, RFC 3339 times, errors that
name the JSON field (`alerts[3].startsAt`), and the one HMAC check with a bounded replay memory
that Grafana and the signed webhook both use.

Hand validation over `json.loads`, not a pydantic model per alert: the endpoint takes thousands of
alerts a second and every alert passes through here.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from opsroom.alerts.base import Status
from opsroom.errors import Invalid, TooManyAttempts, Unauthenticated

MAX_BODY = 16 << 20  # 1,000 alerts with large annotations fit well inside
MAX_ALERTS = 1000  # per request; Alertmanager's max_alerts and Grafana's Max Alerts cap the sender
MAX_LABELS = 128  # labels, and annotations, of one alert
MAX_KEY = 256  # a label or annotation name
MAX_LABEL_VALUE = 2048
MAX_ANNOTATION_VALUE = 16384  # descriptions and runbook text are long
MAX_TEXT = 4096  # fingerprint, groupKey, a URL
ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time.Time: Alertmanager's "not set"

_NAIVE_EPOCH = datetime(1970, 1, 1)  # naive: fields are read as UTC, offsets applied by hand
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,12}))?(?:[Zz]|([+-])(\d\d):(\d\d))\Z")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}\Z")
_UNIX_SECONDS = re.compile(r"\d{1,12}\Z")
HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}\Z")
TIME_HINT = "write times as RFC 3339, e.g. 2024-01-02T03:04:05Z or 2024-01-02T05:04:05.123+02:00"


class FieldInvalid(Invalid):
    """A field of the payload is missing or wrong; `path` says which (`alerts[3].startsAt`)."""

    def __init__(self, path: str, problem: str, *, hint: str | None = None) -> None:
        super().__init__(f"{path}: {problem}" if path else problem, hint=hint)
        self.path = path


def kind_of(value: Any) -> str:
    """How an error names what it found, in JSON's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return f"a string ({show(value)})"
    return "a list" if isinstance(value, list) else "an object"


def show(value: str, limit: int = 40) -> str:
    """A value quoted for an error, cut short: errors must not echo megabytes back."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def wrong(path: str, expected: str, value: Any, hint: str | None = None) -> NoReturn:
    raise FieldInvalid(path, f"expected {expected}, got {kind_of(value)}", hint=hint)


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def load_json(body: bytes, *, sender: str) -> Any:
    """The body as JSON, or Invalid saying why it is not (never a decoder traceback)."""
    hint = f"send the {sender} JSON payload as the request body"
    if len(body) > MAX_BODY:
        raise FieldInvalid("", f"body is {len(body)} bytes; at most {MAX_BODY} are read", hint="send fewer alerts")
    try:
        return json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        raise FieldInvalid("", "body is JSON nested too deeply", hint=hint) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of 5,000 digits
        raise FieldInvalid("", f"body is not JSON: {exc}", hint=hint) from None


def obj(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        wrong(path, "an object", value)
    return value


def text(d: dict[str, Any], key: str, path: str, *, required: bool = False, limit: int = MAX_TEXT) -> str | None:
    """A string field; missing or null is None (or an error when required)."""
    value = d.get(key)
    if value is None:
        if required:
            raise FieldInvalid(f"{path}.{key}" if path else key, "missing", hint=f"the payload must have `{key}`")
        return None
    if type(value) is not str:
        wrong(f"{path}.{key}" if path else key, "a string", value)
    if len(value) > limit:
        raise FieldInvalid(f"{path}.{key}" if path else key, f"{len(value)} characters; at most {limit}")
    return value


def str_map(d: dict[str, Any], key: str, path: str, *, value_limit: int) -> dict[str, str]:
    """A labels/annotations object: string names to string values, bounded in count and size."""
    value = d.get(key)
    where = f"{path}.{key}" if path else key
    if value is None:
        return {}
    if not isinstance(value, dict):
        wrong(where, "an object of string values", value)
    if len(value) > MAX_LABELS:
        raise FieldInvalid(where, f"{len(value)} entries; at most {MAX_LABELS}")
    for k, v in value.items():
        if type(v) is not str:  # numbers are refused, not coerced: 1 and "1.0" must not collide
            wrong(f"{where}.{k}" if len(k) <= MAX_KEY else where, "a string", v,
                  hint="label and annotation values are strings; quote numbers in the sender's template")
        if len(v) > value_limit or len(k) > MAX_KEY or not k:
            raise FieldInvalid(f"{where}.{show(k)}", f"name of {len(k)} or value of {len(v)} characters; names are "
                               f"1 to {MAX_KEY} characters, values at most {value_limit}")
    return value


def alert_list(value: Any, path: str) -> list[Any]:
    if value is None:
        raise FieldInvalid(path, "missing", hint="the payload carries its alerts in a list")
    if not isinstance(value, list):
        wrong(path, "a list of alerts", value)
    if len(value) > MAX_ALERTS:
        raise FieldInvalid(path, f"{len(value)} alerts in one request; at most {MAX_ALERTS}",
                           hint="lower the sender's max_alerts (Alertmanager) or Max Alerts (Grafana)")
    return value


def status(value: Any, path: str) -> Status:
    if value == "firing" or value == "resolved":
        return value  # type: ignore[no-any-return]
    raise FieldInvalid(path, f"expected 'firing' or 'resolved', got {kind_of(value)}")


def http_url(value: str | None, path: str) -> str | None:
    """A link shown to people: http(s) only (a javascript: URL would be a click away from XSS)."""
    if not value:
        return None
    if not value.startswith(("http://", "https://", "HTTP://", "HTTPS://")):
        raise FieldInvalid(path, f"{show(value)} is not an http(s) URL")
    return value


def parse_time(value: Any, path: str) -> float:
    """An RFC 3339 time (nanosecond fractions, any offset) as epoch seconds."""
    if not isinstance(value, str):
        wrong(path, "an RFC 3339 time string", value, hint=TIME_HINT)
    m = _RFC3339.match(value) if len(value) <= 40 else None
    if m is None:
        raise FieldInvalid(path, f"{show(value)} is not an RFC 3339 time", hint=TIME_HINT)
    year, month, day, hour, minute, second, frac, sign, off_h, off_m = m.groups()
    sec = int(second)
    try:  # the datetime checks the calendar (no 31 April, no hour 24); a leap second 60 is kept
        when = datetime(int(year), int(month), int(day), int(hour), int(minute), min(sec, 59))
    except ValueError as exc:
        raise FieldInvalid(path, f"{show(value)} is not a valid time: {exc}", hint=TIME_HINT) from None
    t = (when - _NAIVE_EPOCH).total_seconds() + (sec == 60)
    if frac:
        t += int(frac) / 10 ** len(frac)
    if sign:
        if int(off_h) > 23 or int(off_m) > 59:
            raise FieldInvalid(path, f"{show(value)} has an offset out of range", hint=TIME_HINT)
        offset = int(off_h) * 3600 + int(off_m) * 60
        t -= offset if sign == "+" else -offset
    return t


def label_fingerprint(name: str, labels: Mapping[str, str]) -> str:
    """An alert identity for senders that give none: same name and labels, same fingerprint."""
    canon = json.dumps([name, sorted(labels.items())], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:32]


# --- signatures -------------------------------------------------------------------------------


def hmac_hex(secret: str, message: bytes) -> str:
    """Hex HMAC-SHA256, as both Grafana and our signed webhook send it."""
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class ReplayMemory:
    """Signatures accepted within the replay window, so the same request is refused twice.

    Only signatures that verified are remembered, so a stranger cannot fill it. It is pruned by
    age and capped; when full it refuses (429 with Retry-After) rather than forgetting early:
    forgetting a signature still inside the window would let that exact request be replayed,
    while a refusal only slows a sender already past `capacity / max_age` requests a second,
    which retries. Per process: a cluster's other nodes keep their own.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._seen: set[str] = set()
        self._expiry: list[tuple[float, str]] = []  # heap of (last moment it can be replayed, signature)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def remember(self, signature: str, *, until: float, now: float, source: str) -> None:
        with self._lock:
            heap = self._expiry
            while heap and heap[0][0] < now:
                self._seen.discard(heapq.heappop(heap)[1])
            if signature in self._seen:
                raise Unauthenticated(f"alert source {source!r}: this signed request was already received",
                                      hint="a replayed request is refused; sign each request with a new timestamp")
            if len(self._seen) >= self.capacity:
                raise TooManyAttempts(f"alert source {source!r}: more signed requests than it can tell from "
                                      "replays", retry_after=max(1, math.ceil(heap[0][0] - now)),
                                      hint="send fewer, larger requests or raise `replay_capacity`")
            self._seen.add(signature)
            heapq.heappush(heap, (until, signature))


@dataclass(frozen=True)
class Signing:
    """How one source signs: HMAC-SHA256 hex of [timestamp + separator +] body in a header."""

    secret: str
    signature_header: str  # lower-case, as the headers mapping has them
    timestamp_header: str | None  # None: the body alone is signed (no freshness, no replay check)
    separator: bytes = b"."
    prefix: str = ""  # "sha256=" for ours, none for Grafana
    max_age: float = 300.0
    replay: ReplayMemory | None = None


def verify_signature(signing: Signing, headers: Mapping[str, str], body: bytes, *, now: float, source: str) -> None:
    """Raise Unauthenticated unless the signature is right, fresh and new (TooManyAttempts when
    the replay memory is full)."""
    sig_name = signing.signature_header
    sent = headers.get(sig_name)
    if sent is None:
        raise Unauthenticated(f"alert source {source!r}: no {sig_name} header",
                              hint=f"sign the request and send the signature in {sig_name}")
    sent = sent.strip()
    if signing.prefix:
        if sent[: len(signing.prefix)].lower() != signing.prefix:
            raise Unauthenticated(f"alert source {source!r}: {sig_name} must read {signing.prefix}<hex>",
                                  hint=f"send {sig_name}: {signing.prefix}<hex HMAC-SHA256>")
        sent = sent[len(signing.prefix):]
    stamp = 0
    message = body
    if signing.timestamp_header is not None:
        raw = headers.get(signing.timestamp_header, "").strip()
        if not _UNIX_SECONDS.match(raw):
            raise Unauthenticated(f"alert source {source!r}: {signing.timestamp_header} missing or not unix seconds",
                                  hint=f"send {signing.timestamp_header}: <unix seconds> and sign it with the body")
        stamp = int(raw)
        message = raw.encode() + signing.separator + body
    # Checked as ASCII hex first: compare_digest refuses non-ASCII str, and a header may hold anything.
    if not _HEX64.match(sent) or not hmac.compare_digest(hmac_hex(signing.secret, message), sent.lower()):
        raise Unauthenticated(f"alert source {source!r}: the signature does not match",
                              hint="sign exactly the bytes sent, with the source's secret (see docs/alerts.md)")
    if signing.timestamp_header is None:
        return
    age = now - stamp
    if age > signing.max_age or age < -signing.max_age:
        raise Unauthenticated(f"alert source {source!r}: timestamp is {abs(age):.0f} s in the "
                              f"{'past' if age > 0 else 'future'}; at most {signing.max_age:.0f} s are allowed",
                              hint="sign each request when sending it, and keep the sender's clock in time (NTP)")
    if signing.replay is not None:
        signing.replay.remember(sent.lower(), until=stamp + signing.max_age, now=now, source=source)


def header_name(value: str) -> str:
    """A configured header name, checked at load and kept lower-case as `headers` has them."""
    if not HEADER_NAME.match(value):
        raise ValueError(f"{value!r} is not an HTTP header name (letters, digits and '-')")
    return value.lower()
