"""The web door's own defences: response headers, body limits, cookie policy, decision tokens.

None of these decide what a person may do (the service layer does); they make sure that what
reaches the service layer came from that person's deliberate act and that bad input is refused
before anything parses it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opsroom.access.identity import Actor
from opsroom.approvals import service as approvals
from opsroom.audit import service as audit
from opsroom.config import Settings
from opsroom.errors import OpsroomError, PermissionDenied
from opsroom.runtime import Runtime

# No inline script or style anywhere, nothing from other origins: a string that slips past
# escaping still cannot run. connect-src 'self' covers the room's same-origin ws:/wss: socket
# (CSP level 3; tests/e2e/test_browser.py sees the room go live in chromium under it).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
MAX_FRAME_CHARS = 64 * 1024
# What uvicorn itself accepts (bytes) before the room sees a frame: room.py answers frames between
# the two with a clear error; anything larger is cut off by the protocol (close 1009) unread.
WS_MAX_FRAME = 4 * MAX_FRAME_CHARS
MAX_REASON_CHARS = 2000


class SecurityHeaders:
    """Every HTTP answer (pages, API, errors, static files) carries the headers above; pages and
    API answers are never cached (they hold session-specific data), static files revalidate."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in HEADERS if k not in present]
                if scope.get("scheme") == "https" and b"strict-transport-security" not in present:
                    extra.append((b"strict-transport-security", b"max-age=31536000"))
                if b"cache-control" not in present:
                    extra.append((b"cache-control", b"no-cache" if static else b"no-store"))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


def _json_answer(status: int, body: dict[str, Any]) -> list[Message]:
    data = json.dumps(body).encode()
    return [{"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                         (b"connection", b"close")]},
            {"type": "http.response.body", "body": data}]


# After a refusal mid-body, what is still read (and dropped) before the connection closes.
LINGER_S = 2.0
LINGER_BYTES = 8 * 1024 * 1024


async def _refuse_and_linger(status: int, body: dict[str, Any], receive: Receive, send: Send) -> None:
    """Answer at once, then read and drop what the client is still sending (bounded) before closing.

    Closing a socket that holds unread data makes the kernel send a reset, and a client still
    writing its body then loses the answer it had not read yet: it sees "connection reset", never
    the 413. So the whole answer goes out first (its Content-Length tells the client it is
    complete), the rest of the body is read for at most LINGER_S seconds or LINGER_BYTES bytes
    (nginx's lingering close), and only then does the response end and the connection close.
    """
    start, answer = _json_answer(status, body)
    await send(start)
    await send({**answer, "more_body": True})
    dropped = 0
    try:
        async with asyncio.timeout(LINGER_S):
            while dropped <= LINGER_BYTES:
                message = await receive()
                if message["type"] != "http.request":
                    break
                dropped += len(message.get("body", b""))
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        pass  # a client that keeps sending gets the reset after all: the answer went out first
    await send({"type": "http.response.body", "body": b""})


def lone_surrogate(value: Any, where: str = "body") -> str | None:
    """Where a decoded JSON value holds half of a UTF-16 pair (`"\\ud800"`): no store or encoder
    can write that as text, so it is refused at the door instead of failing deep inside."""
    if isinstance(value, str):
        if any("\ud800" <= ch <= "\udfff" for ch in value):
            return where
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            found = lone_surrogate(k, f"{where} key") or lone_surrogate(v, f"{where}.{k}")
            if found:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = lone_surrogate(v, f"{where}[{i}]")
            if found:
                return found
    return None


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class BodyLimit:
    """Refuse a request body over `limit` bytes with 413 before anything reads it whole.

    A declared Content-Length over the limit is refused without reading a byte; a chunked body is
    counted as it arrives and refused at the first chunk past the limit. Bodies within the limit
    are buffered here (at most `limit` bytes) and replayed, which also lets JSON bodies holding a
    lone surrogate get a clear 422 instead of a 500 from the encoder that meets it later.
    """

    def __init__(self, app: ASGIApp, limit: int = 1024 * 1024) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict((k.lower(), v) for k, v in scope.get("headers", []))
        declared = headers.get(b"content-length")
        too_big = {"detail": f"request body too large: the limit is {self.limit} bytes",
                   "code": "too_large", "hint": "send less; big inputs belong in files the runbook reads"}
        if declared is not None and not declared.isdigit():
            for m in _json_answer(400, {"detail": "bad Content-Length header", "code": "invalid"}):
                await send(m)
            return
        if declared is not None and int(declared) > self.limit:
            # Refused before a byte of it is kept; what the client sends anyway is dropped.
            await _refuse_and_linger(413, too_big, receive, send)
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS") and b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body to hold (nothing here reads one)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # The client left before sending it all: nothing to answer.
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _refuse_and_linger(413, too_big, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if b"json" in headers.get(b"content-type", b"") and _SURROGATE_ESCAPE.search(body):
            try:
                where = lone_surrogate(json.loads(body))
            except ValueError:
                where = None  # not JSON: the route's own validation says so
            if where is not None:
                for m in _json_answer(422, {
                        "detail": f"{where} holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text",
                        "code": "invalid", "hint": "send valid Unicode; escape a character outside the "
                                                   "BMP as a surrogate pair or send it as UTF-8"}):
                    await send(m)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cookie_policy(settings: Settings) -> tuple[bool | None, str]:
    """(forced Secure flag or None for per-request, the sentence said once at start)."""
    if settings.secure_cookies is not None:
        state = "on" if settings.secure_cookies else "off"
        return settings.secure_cookies, f"session cookies: Secure {state} (OPSROOM_SECURE_COOKIES)"
    if not _loopback(settings.host):
        return True, (f"session cookies: Secure on (listening on {settings.host}, not loopback; "
                      "set OPSROOM_SECURE_COOKIES=false only behind a plain-http proxy you trust)")
    return None, ("session cookies: Secure when the request came over https (listening on loopback "
                  f"{settings.host or 'localhost'}); OPSROOM_SECURE_COOKIES=true forces it")


def secure_cookie(settings: Settings, scheme: str) -> bool:
    forced, _ = cookie_policy(settings)
    return forced if forced is not None else scheme in ("https", "wss")


# --- decisions -----------------------------------------------------------------------------------

def decision_token(csrf: str, approval_id: int, binding: str) -> str:
    """What the Approve/Deny button carries: proof the decider's page showed this request, in this
    version (the binding hash changes with the parameters), to this session."""
    msg = f"opsroom-decision:{approval_id}:{binding}".encode()
    return hmac.new(csrf.encode(), msg, hashlib.sha256).hexdigest()[:32]


def signer(csrf: str) -> Callable[[int, str], str]:
    return lambda approval_id, binding: decision_token(csrf, approval_id, binding)


# `approve 12` / `deny 12 why` typed into the web room decide too (the chat grammar's builtins).
DECISION_TEXT = re.compile(r"^\s*[!/]?\s*(approve|deny)\s+#?(\d{1,10})\b", re.IGNORECASE)


def decision_in_text(text: str) -> int | None:
    m = DECISION_TEXT.match(text)
    return int(m.group(2)) if m else None


async def require_decision_token(rt: Runtime, *, actor: Actor, csrf: str, approval_id: int,
                                 token: object, verb: str) -> None:
    """Refuse (and audit) a browser-session decision without its page's token.

    A request the decider never saw (a guessed id in a forged frame or API call) or whose
    parameters changed since the page showed it is refused. What `approvals.decide` would refuse
    anyway (unknown id, own request, no permission, already decided) is left to it, so the person
    reads the reason that matters and the refusal is audited once.
    """
    try:
        row = await approvals.get(rt, actor=actor, approval_id=approval_id)
    except OpsroomError:
        return  # not found / may not read: decide() says so in its own words
    if row.status != "open" or row.requester == actor.name or not actor.can_somewhere("approval.decide"):
        return  # decide() refuses these anyway, with the reason that matters to the person
    reason = None
    if not isinstance(token, str) or not token:
        reason = "missing decision token"
    elif not hmac.compare_digest(token.encode(), decision_token(csrf, approval_id, row.binding_hash).encode()):
        reason = "wrong decision token"
    if reason is None:
        return
    await audit.append_alone(rt, actor=actor, action=f"approval.{verb}", target=f"approval:{approval_id}",
                             outcome="refused", details={"reason": reason})
    raise PermissionDenied(f"{reason} for request #{approval_id}",
                           hint="decide with the Approve/Deny buttons of the room page (reload it if the "
                                "request changed), or with an API token")
