"""While the store is away, answer 503 at once instead of letting each request find out for itself.

The flag is the engine's (store/health.py): tripped by the first failed connect or dropped
connection, cleared by a probe when the database answers again. Liveness (/healthz), /metrics and
static files need no store and keep answering. A request that was already running when the store
went away gets the same 503 instead of a 500 and a traceback.

What the client sees names no host, port, user, database or driver message (those stay in the
server's log, by exception type only): the detail says what, the hint what to do.
"""

from __future__ import annotations

import structlog
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opsroom.store.health import RETRY_AFTER_S, StoreHealth, health_of

log = structlog.get_logger(__name__)

# Paths that need no store: liveness says the store is away instead of failing with it.
NO_STORE = ("/healthz", "/metrics", "/static/")
DETAIL = "the store (database) is unreachable; opsroom keeps running and resumes on its own when it is back"
HINT = (f"retry in {RETRY_AFTER_S} s (Retry-After); if it lasts, check that the database runs and accepts "
        "connections (GET /healthz says when it is back)")
WS_TRY_AGAIN_LATER = 1013


def _store_failure(exc: BaseException, health: StoreHealth) -> bool:
    """Did `exc` come from the store being away (or too busy to hand out a connection)?"""
    if not health.up or isinstance(exc, PoolTimeout):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_store_failure(e, health) for e in exc.exceptions)
    return False


def unavailable(scope: Scope) -> Response:
    headers = {"Retry-After": str(RETRY_AFTER_S), "Cache-Control": "no-store"}
    path: str = scope.get("path", "")
    request = Request(scope)
    if not path.startswith("/api/") and "text/html" in request.headers.get("accept", ""):
        # The person's browser: the autoescaping error page, naming nothing from the request.
        from opsroom.web.ui import page_error

        page = page_error(request, 503, "store unreachable", DETAIL, hint=f"reload in a few seconds; {HINT}")
        page.headers.update(headers)
        return page
    return JSONResponse({"detail": DETAIL, "code": "store_unavailable", "hint": HINT}, status_code=503,
                        headers=headers)


def store_state(app: object) -> dict[str, object]:
    """For /healthz: the process is alive either way; `store` says whether the database answers."""
    rt = getattr(getattr(app, "state", None), "rt", None)
    if rt is None:
        return {"store": "starting"}
    health = health_of(rt.engine)
    if health.up:
        return {"store": "up"}
    return {"store": "away", "store_away_s": round(health.away_for, 1)}


class StoreOutage:
    """ASGI middleware: 503 (JSON for the API and other clients, a page for a browser) with
    Retry-After while the store is away; a WebSocket is closed with 1013 (try again later)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path", "").startswith(NO_STORE):
            await self.app(scope, receive, send)
            return
        engine = getattr(getattr(scope["app"].state, "rt", None), "engine", None)
        if engine is None:  # still starting: nothing to watch yet
            await self.app(scope, receive, send)
            return
        health = health_of(engine)
        if not health.up:
            await self._refuse(scope, receive, send)
            return
        started = False

        async def watch_start(message: Message) -> None:
            nonlocal started
            if message["type"] in ("http.response.start", "websocket.accept", "websocket.close"):
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch_start)
        except Exception as exc:
            if started or not _store_failure(exc, health):
                raise
            # Logged by type: the driver's message may name the host, user or database.
            log.warning("a request failed because the store went away; answered 503", path=scope.get("path"),
                        error=type(exc).__name__)
            await self._refuse(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": WS_TRY_AGAIN_LATER, "reason": "store unreachable"})
            return
        await unavailable(scope)(scope, receive, send)
