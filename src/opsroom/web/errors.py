"""Map service-layer errors to HTTP answers: clear JSON, never a traceback."""

from __future__ import annotations

import math
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opsroom.errors import (
    Conflict,
    Invalid,
    NotFound,
    OpsroomError,
    PermissionDenied,
    TooManyAttempts,
    Unauthenticated,
)
from opsroom.web.ui import page_error

log = structlog.get_logger(__name__)
STATUS = {NotFound: 404, Invalid: 422, PermissionDenied: 403, Unauthenticated: 401, Conflict: 409,
          TooManyAttempts: 429}


def _safe(value: Any, depth: int = 0) -> Any:
    """An echo of bad input that is valid JSON and small: never a second error while reporting one."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str | int | float | bool) or value is None:
        return value[:200] if isinstance(value, str) else value
    if depth > 3:
        return "…"
    if isinstance(value, dict):
        return {str(k)[:100]: _safe(v, depth + 1) for k, v in list(value.items())[:20]}
    if isinstance(value, list | tuple):
        return [_safe(v, depth + 1) for v in list(value)[:20]]
    return repr(value)[:200]


def install(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        # A person's browser gets a page (from the autoescaping template, naming no input); any
        # other client and the API keep JSON.
        if "text/html" in request.headers.get("accept", "") and not request.url.path.startswith("/api/"):
            return page_error(request, exc.status_code, "not found" if exc.status_code == 404 else "error",
                              "There is no such page." if exc.status_code == 404 else str(exc.detail),
                              hint="rooms are under /rooms/NAME; the API index is at /docs")
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", ""),
                   "input": _safe(e.get("input"))} for e in exc.errors()[:20]]
        first = detail[0] if detail else {"loc": [], "msg": ""}
        where = ".".join(str(p) for p in first["loc"]) or "the request"
        hint = (f"fix {where}: {first['msg']}" + (f" (and {len(detail) - 1} more, listed in detail)"
                                                  if len(detail) > 1 else "")
                + "; /docs shows each operation's parameters and body")
        return JSONResponse({"detail": detail, "code": "invalid", "hint": hint}, status_code=422)

    @app.exception_handler(OpsroomError)
    async def _opsroom_error(_request: Request, exc: OpsroomError) -> JSONResponse:
        status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 400)
        body = {"detail": exc.message, "code": exc.code}
        if exc.hint:
            body["hint"] = exc.hint
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if isinstance(exc, TooManyAttempts):
            headers = {"Retry-After": str(exc.retry_after)}
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", path=request.url.path)
        return JSONResponse({"detail": "internal error; see the opsroom log", "code": "internal"}, status_code=500)


class StartupRefusal:
    """uvicorn logs a failed startup's message as it is, and Starlette makes that message the
    traceback. A refusal the lifespan explained (`app.state.refused`, from `server.refusal`: the
    store held by another server or unreachable, or migrated by a newer opsroom) reaches the
    operator as its reason and hint instead."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_reason(message: Message) -> None:
            refused = getattr(scope["app"].state, "refused", None)
            if message["type"] == "lifespan.startup.failed" and refused:
                message = {"type": message["type"], "message": f"error: {refused}"}
            await send(message)

        await self.app(scope, receive, send_reason)
