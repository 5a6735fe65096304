"""Map service-layer errors to HTTP answers: clear JSON, never a traceback."""

from __future__ import annotations

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from opsroom.errors import Conflict, Invalid, NotFound, OpsroomError, PermissionDenied, Unauthenticated

log = structlog.get_logger(__name__)
STATUS = {NotFound: 404, Invalid: 422, PermissionDenied: 403, Unauthenticated: 401, Conflict: 409}


def install(app: FastAPI) -> None:
    @app.exception_handler(OpsroomError)
    async def _opsroom_error(_request: Request, exc: OpsroomError) -> JSONResponse:
        status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 400)
        body = {"detail": exc.message, "code": exc.code}
        if exc.hint:
            body["hint"] = exc.hint
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", path=request.url.path)
        return JSONResponse({"detail": "internal error; see the opsroom log", "code": "internal"}, status_code=500)
