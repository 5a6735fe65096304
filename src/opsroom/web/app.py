"""The FastAPI application: boots the runtime in its lifespan and mounts every door."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.routing import Router

from opsroom import __version__, server
from opsroom.access.views import router as access_router
from opsroom.alerts.views import router as alerts_router
from opsroom.approvals.views import router as approvals_router
from opsroom.audit.views import router as audit_router
from opsroom.automation.views import router as rules_router
from opsroom.catalog.catalog import Catalog
from opsroom.catalog.views import router as catalog_router
from opsroom.checks.views import router as checks_router
from opsroom.cluster.views import router as cluster_router
from opsroom.config import Settings
from opsroom.rooms.views import router as rooms_router
from opsroom.runbooks.views import router as runbooks_router
from opsroom.runtime import Runtime
from opsroom.web import errors, metrics, outage, pages, room, security, service_page, streams, ui
from opsroom.web.deps import ApiActor, WebSession

log = structlog.get_logger(__name__)


def _mount_platform_routes(app: FastAPI, rt: Runtime) -> None:
    """What platforms POST to opsroom (button clicks, webhooks) lands at /chat/NAME/…; each
    adapter verifies its platform's signature before anything is acted on."""
    assert rt.rooms is not None
    for name, adapter in rt.rooms.adapters.items():
        routes = adapter.routes()
        if routes:
            app.mount(f"/chat/{name}", Router(routes=routes))


def create_app(settings: Settings, *, catalog: Catalog | None = None, passwords: dict[str, str] | None = None,
               schedule: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = None
        try:
            rt = await server.open_runtime(settings, catalog, migrate=False)
            app.state.rt = rt
            app.state.metrics = metrics.Metrics(rt)
            app.state.web_adapter = room.WebAdapter(rt)
            await server.start(rt, adapters=[app.state.web_adapter], schedule=schedule, passwords=passwords,
                               migrate=True)
            _mount_platform_routes(app, rt)
            log.info(security.cookie_policy(settings)[1])
        except BaseException as exc:
            # Named for StartupRefusal: a failure the person can fix (another server started in
            # the same second got the store, a newer opsroom migrated it) is read as its reason.
            app.state.refused = server.refusal(exc)
            if rt is not None:
                await rt.close()
            raise
        try:
            yield
        finally:
            await server.stop(rt)

    # No Swagger UI or ReDoc: they load scripts from a CDN and run inline script, which the CSP
    # forbids on every page (and which an offline server could not load anyway). /docs is a
    # server-rendered index of the operations and /openapi.json the schema, both behind a login.
    app = FastAPI(title="opsroom", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None,
                  description="ChatOps for production support: checks, runbooks, approvals, audit.")
    app.state.demo = settings.demo
    app.state.refused = None
    app.add_middleware(GZipMiddleware, minimum_size=512)
    app.add_middleware(outage.StoreOutage)  # 503 at once while the database is away
    errors.install(app)
    app.add_middleware(errors.StartupRefusal)
    # Outermost last: every answer, a 413 included, carries the security headers.
    app.add_middleware(security.BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(security.SecurityHeaders)
    app.mount("/static", StaticFiles(directory=ui.STATIC), name="static")
    api = APIRouter(prefix="/api/v1")
    for r in (checks_router, runbooks_router, approvals_router, audit_router, access_router, alerts_router,
              rooms_router, catalog_router, rules_router, streams.router, cluster_router):
        api.include_router(r)
    app.include_router(api)
    app.include_router(ui.router)
    app.include_router(room.router)
    app.include_router(pages.router)
    app.include_router(service_page.router)
    app.include_router(metrics.router)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(_actor: ApiActor) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request, session: WebSession) -> Response:
        if session is None:
            return RedirectResponse("/login?next=/docs", status_code=303)
        return ui.api_index(request, app.openapi())

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> Response:
        return RedirectResponse("/docs", status_code=303)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, object]:
        return {"status": "ok", **outage.store_state(app)}  # alive: 200; `store` says if the database is

    return app
