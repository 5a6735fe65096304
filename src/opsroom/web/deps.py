"""FastAPI dependencies as Annotated aliases: the runtime and who is calling."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi import Path as FastAPIPath
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from opsroom.access import service as access
from opsroom.access.identity import Actor
from opsroom.errors import PermissionDenied, Unauthenticated
from opsroom.runtime import Runtime
from opsroom.web.security import require_decision_token

SESSION_COOKIE = "opsroom_session"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def get_runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.rt
    return rt


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


# Declared through FastAPI's security dependency so every operation that needs a caller lists the
# scheme in the OpenAPI document (and /docs); auto_error=False: the session cookie is the other way in.
bearer = HTTPBearer(auto_error=False, scheme_name="bearer",
                    description="an API token: `opsroom token create USER` on the server host, "
                                "or POST /api/v1/tokens")
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def api_actor(request: Request, rt: RuntimeDep, credentials: BearerCredentials) -> Actor:
    """A bearer token, or a browser session plus its CSRF header on unsafe methods."""
    if credentials is not None:
        return await access.authenticate_token(rt, token=credentials.credentials.strip(), door="api")
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        actor, csrf = await access.session_actor(rt, session_token=cookie, door="api")
        if request.method not in SAFE_METHODS:
            sent = request.headers.get("x-csrf-token", "")
            if not hmac.compare_digest(sent, csrf):
                raise PermissionDenied("missing or wrong X-CSRF-Token header",
                                       hint="send the token from the page's csrf meta tag")
        return actor
    raise Unauthenticated("authentication required",
                          hint="send `Authorization: Bearer <token>`; create one with `opsroom token create USER`")


ApiActor = Annotated[Actor, Depends(api_actor)]

# Ids fit the store's integer columns: anything larger is a 422, never an overflow (500) inside.
MAX_ID = 2**31 - 1
PathId = Annotated[int, FastAPIPath(ge=1, le=MAX_ID)]
QueryId = Annotated[int | None, Query(ge=0, le=MAX_ID)]


async def decision_actor(request: Request, rt: RuntimeDep, credentials: BearerCredentials,
                         approval_id: PathId) -> Actor:
    """The API caller of a decision. A browser session must also send the request's decision token
    (X-Decision-Token, from the room page's approvals) so a script riding the cookie cannot decide
    a request its page never showed; a bearer token is a deliberate credential and needs none."""
    actor = await api_actor(request, rt, credentials)
    if credentials is not None:
        return actor
    try:
        verb = "deny" if (await request.json()).get("decision") == "deny" else "approve"
    except Exception:  # not JSON: the body's own validation reports it after this refusal
        verb = "approve"
    _, csrf = await access.session_actor(rt, session_token=request.cookies.get(SESSION_COOKIE, ""), door="api")
    await require_decision_token(rt, actor=actor, csrf=csrf, approval_id=approval_id,
                                 token=request.headers.get("x-decision-token"), verb=verb)
    return actor


DecisionActor = Annotated[Actor, Depends(decision_actor)]


async def optional_web_session(request: Request, rt: RuntimeDep) -> tuple[Actor, str] | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    try:
        return await access.session_actor(rt, session_token=cookie, door="web")
    except Unauthenticated:
        return None


WebSession = Annotated[tuple[Actor, str] | None, Depends(optional_web_session)]
