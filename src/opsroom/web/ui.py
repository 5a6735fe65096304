"""Server-rendered pages: login, logout, the room. No front-end build; one inline script."""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from opsroom.access import service as access
from opsroom.errors import NotFound, Unauthenticated
from opsroom.rooms import service as rooms
from opsroom.web.deps import SESSION_COOKIE, RuntimeDep, WebSession

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "ui" / "templates"))
LOGIN_CSRF = "opsroom_login_csrf"


def _safe_next(target: str | None) -> str:
    # Only local paths: an attacker's link must not bounce a fresh login off-site.
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return "/"


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(name, value, httponly=True, samesite="lax", max_age=max_age,
                        secure=request.app.state.rt.settings.secure_cookies, path="/")


@router.get("/login")
async def login_form(request: Request, next: str | None = None, error: str | None = None) -> Response:
    token = secrets.token_urlsafe(24)
    resp = templates.TemplateResponse(request, "login.html", {"csrf": token, "next": _safe_next(next),
                                                               "error": error, "demo": request.app.state.demo})
    _cookie(resp, request, LOGIN_CSRF, token, 3600)
    return resp


@router.post("/login")
async def login(request: Request, rt: RuntimeDep, username: Annotated[str, Form(max_length=64)],
                password: Annotated[str, Form(max_length=1024)], csrf: Annotated[str, Form()],
                next: Annotated[str, Form()] = "/") -> Response:
    if not hmac.compare_digest(csrf, request.cookies.get(LOGIN_CSRF, "")):
        return RedirectResponse(f"/login?error=form+expired,+try+again&next={_safe_next(next)}", status_code=303)
    try:
        result = await access.login(rt, name=username.strip(), password=password)
    except Unauthenticated:
        return RedirectResponse(f"/login?error=wrong+user+name+or+password&next={_safe_next(next)}",
                                status_code=303)
    resp = RedirectResponse(_safe_next(next), status_code=303)
    _cookie(resp, request, SESSION_COOKIE, result.session_token, int(rt.settings.session_hours * 3600))
    resp.delete_cookie(LOGIN_CSRF, path="/")
    return resp


@router.post("/logout")
async def logout(request: Request, rt: RuntimeDep, session: WebSession, csrf: Annotated[str, Form()]) -> Response:
    if session is not None and hmac.compare_digest(csrf, session[1]):
        await access.logout(rt, actor=session[0], session_token=request.cookies.get(SESSION_COOKIE, ""))
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


@router.get("/")
async def home(rt: RuntimeDep, session: WebSession) -> Response:
    if session is None:
        return RedirectResponse("/login", status_code=303)
    first = next(iter(rt.catalog.rooms), None)
    if first is None:
        return HTMLResponse("<p>No rooms are configured in the catalog.</p>")
    return RedirectResponse(f"/rooms/{first}", status_code=303)


@router.get("/rooms/{room}")
async def room_page(room: str, request: Request, rt: RuntimeDep, session: WebSession) -> Response:
    if session is None:
        return RedirectResponse(f"/login?next=/rooms/{room}", status_code=303)
    actor, csrf = session
    try:
        view = await rooms.open_room(rt, actor=actor.via("web"), room=room)
    except NotFound as exc:
        return HTMLResponse(f"<p>{exc.message}</p>", status_code=404)
    return templates.TemplateResponse(request, "room.html", {"view": view, "me": actor.name, "csrf": csrf,
                                                              "roles": sorted(actor.roles)})
