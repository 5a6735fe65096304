"""Server-rendered pages: login, logout, the room, the API index. No front-end build.

Every HTML answer is an autoescaping Jinja2 template (no HTML from f-strings): a room name,
error text or query value is always text on the page, never markup. Scripts and styles are
static files, so the CSP (web/security.py) forbids every inline one.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from opsroom.access import links, oidc
from opsroom.access import service as access
from opsroom.access.identity import Actor
from opsroom.errors import NotFound, OpsroomError, TooManyAttempts, Unauthenticated
from opsroom.rooms import service as rooms
from opsroom.web import apidoc
from opsroom.web.deps import SESSION_COOKIE, RuntimeDep, WebSession
from opsroom.web.security import secure_cookie, signer

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "ui" / "templates"))
STATIC = Path(__file__).parent / "ui" / "static"
LOGIN_CSRF = "opsroom_login_csrf"
OIDC_PENDING = "opsroom_oidc"  # the signed sign-in in progress (access/oidc.py), sent to /login/oidc only


def _safe_next(target: str | None) -> str:
    # Only local paths: an attacker's link must not bounce a fresh login off-site.
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def _login_url(next_path: str, error: str | None = None) -> str:
    query = {"next": _safe_next(next_path)}
    if error:
        query["error"] = error
    return "/login?" + urlencode(query)


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int | None = None,
            path: str = "/") -> None:
    response.set_cookie(name, value, httponly=True, samesite="lax", max_age=max_age,
                        secure=secure_cookie(request.app.state.rt.settings, request.url.scheme), path=path)


def page_error(request: Request, status: int, title: str, message: str, hint: str | None = None) -> Response:
    return templates.TemplateResponse(request, "error.html", {"title": title, "message": message, "hint": hint},
                                      status_code=status)


@router.get("/login")
async def login_form(request: Request, next: str | None = None, error: str | None = None) -> Response:
    token = secrets.token_urlsafe(24)
    settings = request.app.state.rt.settings
    sso = settings.oidc_provider_name if oidc.enabled(settings) else None
    resp = templates.TemplateResponse(request, "login.html", {"csrf": token, "next": _safe_next(next),
                                                               "error": error, "demo": request.app.state.demo,
                                                               "sso": sso})
    _cookie(resp, request, LOGIN_CSRF, token, 3600)
    return resp


@router.post("/login")
async def login(request: Request, rt: RuntimeDep, username: Annotated[str, Form(max_length=64)],
                password: Annotated[str, Form(max_length=1024)], csrf: Annotated[str, Form()],
                next: Annotated[str, Form()] = "/") -> Response:
    if not hmac.compare_digest(csrf.encode(), request.cookies.get(LOGIN_CSRF, "").encode()):
        return RedirectResponse(_login_url(next, "form expired, try again"), status_code=303)
    try:
        result = await access.login(rt, name=username.strip(), password=password,
                                    address=request.client.host if request.client else None)
    except TooManyAttempts as exc:
        return RedirectResponse(_login_url(next, f"too many failed logins, try again in {exc.retry_after} s"),
                                status_code=303)
    except Unauthenticated:
        return RedirectResponse(_login_url(next, "wrong user name or password"), status_code=303)
    resp = RedirectResponse(_safe_next(next), status_code=303)
    _cookie(resp, request, SESSION_COOKIE, result.session_token, int(rt.settings.session_hours * 3600))
    resp.delete_cookie(LOGIN_CSRF, path="/")
    return resp


@router.get("/login/oidc")
async def login_oidc(request: Request, rt: RuntimeDep, next: str | None = None) -> Response:
    """Off to the single sign-on provider, carrying state, nonce and PKCE verifier in a signed cookie."""
    if not oidc.enabled(rt.settings):
        return page_error(request, 404, "no single sign-on", "Single sign-on is not configured on this server.",
                          hint="log in with your user name and password")
    target = _safe_next(next)
    try:
        url, pending = await oidc.begin(rt, next_path=target)
    except OpsroomError as exc:
        return RedirectResponse(_login_url(target, exc.message + (f" ({exc.hint})" if exc.hint else "")),
                                status_code=303)
    resp = RedirectResponse(url, status_code=303)
    _cookie(resp, request, OIDC_PENDING, pending, oidc.PENDING_TTL_S, path="/login/oidc")
    return resp


@router.get("/login/oidc/callback")
async def login_oidc_callback(request: Request, rt: RuntimeDep) -> Response:
    """The provider's redirect back: every refusal ends on the login page with its reason."""
    if not oidc.enabled(rt.settings):
        return page_error(request, 404, "no single sign-on", "Single sign-on is not configured on this server.")
    params = {k: v[:4096] for k, v in request.query_params.items()}
    try:
        result, target = await oidc.finish(rt, cookie=request.cookies.get(OIDC_PENDING), params=params,
                                           address=request.client.host if request.client else None)
    except OpsroomError as exc:
        resp = RedirectResponse(_login_url("/", exc.message + (f" ({exc.hint})" if exc.hint else "")),
                                status_code=303)
    else:
        resp = RedirectResponse(_safe_next(target), status_code=303)
        _cookie(resp, request, SESSION_COOKIE, result.session_token, int(rt.settings.session_hours * 3600))
    resp.delete_cookie(OIDC_PENDING, path="/login/oidc")  # one sign-in, one callback
    return resp


@router.post("/logout")
async def logout(request: Request, rt: RuntimeDep, session: WebSession,
                 csrf: Annotated[str, Form()] = "") -> Response:
    if session is None:
        # Nothing to end (expired or never logged in): clearing a dead cookie harms no one.
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp
    if not hmac.compare_digest(csrf.encode(), session[1].encode()):
        # A forged logout (another site's form) must not end the session, nor seem to: the cookie
        # stays, and the person reads why.
        return page_error(request, 403, "log out refused",
                          "The log out form expired or came from another page; you are still logged in.",
                          hint="go back, reload the room and press log out again")
    await access.logout(rt, actor=session[0], session_token=request.cookies.get(SESSION_COOKIE, ""))
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


@router.get("/")
async def home(request: Request, rt: RuntimeDep, session: WebSession) -> Response:
    if session is None:
        return RedirectResponse("/login", status_code=303)
    first = next(iter(rt.catalog.rooms), None)
    if first is None:
        return page_error(request, 404, "no rooms", "No rooms are configured in the catalog.",
                          hint="add one under `rooms:` in the catalog")
    return RedirectResponse(f"/rooms/{quote(first, safe='')}", status_code=303)


@router.get("/rooms/{room}")
async def room_page(room: str, request: Request, rt: RuntimeDep, session: WebSession) -> Response:
    if session is None:
        return RedirectResponse(_login_url(f"/rooms/{quote(room, safe='')}"), status_code=303)
    actor, csrf = session
    try:
        view = await rooms.open_room(rt, actor=actor.via("web"), room=room)
        view["approvals"] = await rooms.approval_views(rt, actor=actor, sign=signer(csrf))
    except NotFound as exc:
        return page_error(request, 404, "not found", exc.message, exc.hint)
    except OpsroomError as exc:
        return page_error(request, 403, "not allowed", exc.message, exc.hint)
    return templates.TemplateResponse(request, "room.html", {"view": view, "me": actor.name, "csrf": csrf,
                                                              "roles": sorted(actor.roles)})


async def _links_page(request: Request, rt: RuntimeDep, session: tuple[Actor, str], *, status: int = 200,
                      **extra: Any) -> Response:
    actor, csrf = session
    found = await links.list_links(rt, actor=actor, user=actor.name)
    shown = [{"platform": i.platform, "account_id": i.account_id, "display_name": i.display_name,
              "since": _utc(i.created_at)} for i in found]
    return templates.TemplateResponse(request, "links.html", {
        "me": actor.name, "csrf": csrf, "links": shown, "minutes": round(links.CODE_TTL_S / 60), **extra},
        status_code=status)


def _utc(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _form_ok(session: tuple[Actor, str], csrf: str) -> bool:
    return hmac.compare_digest(csrf.encode(), session[1].encode())


@router.get("/me/links")
async def links_page(request: Request, rt: RuntimeDep, session: WebSession) -> Response:
    """One's chat accounts: get a one-time link code, see and remove links."""
    if session is None:
        return RedirectResponse(_login_url("/me/links"), status_code=303)
    return await _links_page(request, rt, session)


@router.post("/me/links/code")
async def links_code(request: Request, rt: RuntimeDep, session: WebSession,
                     csrf: Annotated[str, Form(max_length=128)] = "") -> Response:
    if session is None:
        return RedirectResponse(_login_url("/me/links"), status_code=303)
    if not _form_ok(session, csrf):
        return await _links_page(request, rt, session, status=403,
                                 error="the form expired or came from another page; no code was made — try again")
    # Shown in this answer only (never in a URL, a redirect or a log); the page is sent no-store.
    code, expires = await links.issue_link_code(rt, actor=session[0].via("web"))
    return await _links_page(request, rt, session, code=code, expires=_utc(expires))


@router.post("/me/links/remove")
async def links_remove(request: Request, rt: RuntimeDep, session: WebSession,
                       platform: Annotated[str, Form(max_length=64)], account_id: Annotated[str, Form(max_length=255)],
                       csrf: Annotated[str, Form(max_length=128)] = "") -> Response:
    if session is None:
        return RedirectResponse(_login_url("/me/links"), status_code=303)
    if not _form_ok(session, csrf):
        return await _links_page(request, rt, session, status=403,
                                 error="the form expired or came from another page; nothing was removed — try again")
    actor = session[0].via("web")
    try:
        await links.unlink(rt, actor=actor, platform=platform, account_id=account_id, user=actor.name)
    except OpsroomError as exc:
        return await _links_page(request, rt, session, status=404, error=exc.message)
    return await _links_page(request, rt, session, notice=f"{platform} account {account_id} is no longer linked")


def api_index(request: Request, openapi: dict[str, Any]) -> Response:
    """The API reference, rendered here from the OpenAPI document (web/apidoc.py): no CDN, no script."""
    return templates.TemplateResponse(request, "docs.html", {"ref": apidoc.reference(openapi)})
