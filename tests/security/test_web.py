"""Web door security: cookie flags, CSRF on forms and cookie-authenticated API calls, WebSocket origin,
decision tokens, sockets that end with their session, docs behind a login."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from opsroom.access import service as access
from opsroom.access.secrets import token_hash
from opsroom.chat.fake import FakeAdapter
from opsroom.config import Settings
from opsroom.events import AccessChanged
from opsroom.runtime import Runtime
from opsroom.web.room import WebAdapter, _Conn
from opsroom.web.security import cookie_policy, secure_cookie
from tests.e2e.harness import DEMO_PASSWORDS, Demo, RoomClient, cli, join, login, start_demo

pytestmark = pytest.mark.e2e
Running = tuple[Runtime, FakeAdapter]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    server = start_demo(tmp_path_factory.mktemp("websec"), interval="5s")
    yield server
    server.stop()


def test_session_cookie_is_httponly_and_samesite(demo: Demo) -> None:
    with httpx.Client(base_url=demo.base) as c:
        page = c.get("/login")
        csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        resp = c.post("/login", data={"username": "dev", "password": DEMO_PASSWORDS["dev"], "csrf": csrf})
        cookie = resp.headers["set-cookie"]
    assert "opsroom_session=" in cookie
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie


def test_login_without_csrf_token_is_refused(demo: Demo) -> None:
    with httpx.Client(base_url=demo.base) as c:
        resp = c.post("/login", data={"username": "dev", "password": DEMO_PASSWORDS["dev"], "csrf": "forged"})
        assert resp.status_code == 303 and "form+expired" in resp.headers["location"]
        assert "opsroom_session" not in c.cookies


def test_wrong_password_is_refused_without_saying_which_part(demo: Demo) -> None:
    with httpx.Client(base_url=demo.base) as c:
        csrf = c.get("/login").text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        resp = c.post("/login", data={"username": "dev", "password": "nope", "csrf": csrf})
        assert "wrong+user+name+or+password" in resp.headers["location"]
        csrf = c.get("/login").text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        resp = c.post("/login", data={"username": "nobody", "password": "nope", "csrf": csrf})
        assert "wrong+user+name+or+password" in resp.headers["location"]


async def test_cookie_api_calls_need_the_csrf_header(demo: Demo) -> None:
    http = await login(demo.base, "boss", DEMO_PASSWORDS["boss"])
    body = {"decision": "approve"}
    refused = await http.post("/api/v1/approvals/999/decision", json=body)
    assert refused.status_code == 403 and "X-CSRF-Token" in refused.json()["detail"]
    page = (await http.get("/rooms/ops")).text
    csrf = page.split('<meta name="csrf" content="', 1)[1].split('"', 1)[0]
    allowed = await http.post("/api/v1/approvals/999/decision", json=body, headers={"X-CSRF-Token": csrf})
    assert allowed.status_code == 404  # past CSRF: the request simply does not exist
    assert (await http.get("/api/v1/systems")).status_code == 200  # reads need no header
    await http.aclose()


async def test_websocket_refuses_other_origins_and_anonymous(demo: Demo) -> None:
    http = await login(demo.base, "dev", DEMO_PASSWORDS["dev"])
    cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
    url = demo.base.replace("http", "ws") + "/rooms/ops/ws"
    with pytest.raises(InvalidStatus):
        async with connect(url, additional_headers={"Cookie": cookie, "Origin": "http://evil.example"}) as ws:
            await ws.recv()
    with pytest.raises(InvalidStatus):
        async with connect(url) as ws:
            await ws.recv()
    async with connect(url, additional_headers={"Cookie": cookie, "Origin": demo.base}) as ws:
        assert '"type"' in await ws.recv()
    await http.aclose()


def test_open_redirect_after_login_is_refused(demo: Demo) -> None:
    with httpx.Client(base_url=demo.base) as c:
        csrf = c.get("/login").text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        resp = c.post("/login", data={"username": "dev", "password": DEMO_PASSWORDS["dev"], "csrf": csrf,
                                      "next": "//evil.example/x"})
        assert resp.headers["location"] == "/"


def test_logout_ends_the_session(demo: Demo, tmp_path: Path) -> None:
    with httpx.Client(base_url=demo.base) as c:
        csrf = c.get("/login").text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        c.post("/login", data={"username": "dev", "password": DEMO_PASSWORDS["dev"], "csrf": csrf})
        page = c.get("/rooms/ops").text
        token = page.split('<meta name="csrf" content="', 1)[1].split('"', 1)[0]
        stolen = c.cookies["opsroom_session"]
        c.post("/logout", data={"csrf": token})
    reused = httpx.get(demo.base + "/api/v1/systems", cookies={"opsroom_session": stolen})
    assert reused.status_code == 401


# --- issue 9, findings 1, 5, 17, 18 ----------------------------------------------------------------

def _csrf_of(page: str) -> str:
    return page.split('<meta name="csrf" content="', 1)[1].split('"', 1)[0]


def _ws_url(demo: Demo, room: str = "ops") -> str:
    return demo.base.replace("http", "ws") + f"/rooms/{room}/ws"


def _cookie_header(http: httpx.AsyncClient) -> str:
    return "; ".join(f"{k}={v}" for k, v in http.cookies.items())


async def _prod_request(demo: Demo) -> tuple[RoomClient, int]:
    """`you` (operator) asks for a production change; the request number."""
    you = await join(demo, "you")
    asked = await you.ask("start service-b", "needs approval")
    found = re.search(r"Request #(\d+)", asked["text"])
    assert found, asked
    return you, int(found.group(1))


async def _frames_until(ws: ClientConnection, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            if predicate(frame):
                return frame


async def _status_of(http: httpx.AsyncClient, request: int) -> str:
    status: str = (await http.get(f"/api/v1/approvals/{request}")).json()["status"]
    return status


async def test_decide_frame_without_the_decision_token_is_refused_and_audited(demo: Demo) -> None:
    you, request = await _prod_request(demo)
    boss = await login(demo.base, "boss", DEMO_PASSWORDS["boss"])
    async with connect(_ws_url(demo), additional_headers={"Cookie": _cookie_header(boss)}) as ws:
        shown = await _frames_until(ws, lambda f: f["type"] == "approvals")
        card = next(a for a in shown["items"] if a["id"] == request)
        assert card["can_decide"] and len(card["token"]) == 32
        # The old frame (what a script that only knows the number sends), a wrong token, and the
        # chat form typed into the web room: each refused, nothing decided.
        for frame in ({"type": "decide", "id": request, "decision": "approve"},
                      {"type": "decide", "id": request, "decision": "approve", "token": "0" * 32},
                      {"type": "say", "text": f"approve {request}"},
                      {"type": "say", "text": f"deny #{request} because"}):
            await ws.send(json.dumps(frame))
            error = await _frames_until(ws, lambda f: f["type"] == "error")
            assert "decision token" in error["text"], (frame, error)
        assert await _status_of(boss, request) == "open"
        # The page's own button press carries the token and decides.
        await ws.send(json.dumps({"type": "decide", "id": request, "decision": "deny", "reason": "not now",
                                  "token": card["token"]}))
        await _frames_until(ws, lambda f: f["type"] == "message" and f"request #{request} denied" in f["text"])
    assert await _status_of(boss, request) == "denied"
    await boss.aclose()
    await you.close()
    with sqlite3.connect(demo.data / "opsroom.db") as db:
        refused = db.execute("SELECT details FROM audit_records WHERE target = ? AND outcome = 'refused'",
                             (f"approval:{request}",)).fetchall()
    reasons = sorted(json.loads(r[0])["reason"] for r in refused)
    assert reasons == ["missing decision token", "missing decision token", "missing decision token",
                       "wrong decision token"], reasons


async def test_cookie_api_decision_needs_the_decision_token_and_a_bearer_token_does_not(demo: Demo) -> None:
    you, first = await _prod_request(demo)
    boss = await login(demo.base, "boss", DEMO_PASSWORDS["boss"])
    csrf = _csrf_of((await boss.get("/rooms/ops")).text)
    body = {"decision": "deny", "reason": "checked"}
    refused = await boss.post(f"/api/v1/approvals/{first}/decision", json=body, headers={"X-CSRF-Token": csrf})
    assert refused.status_code == 403 and "decision token" in refused.json()["detail"]
    async with connect(_ws_url(demo), additional_headers={"Cookie": _cookie_header(boss)}) as ws:
        shown = await _frames_until(ws, lambda f: f["type"] == "approvals")
    token = next(a["token"] for a in shown["items"] if a["id"] == first)
    allowed = await boss.post(f"/api/v1/approvals/{first}/decision", json=body,
                              headers={"X-CSRF-Token": csrf, "X-Decision-Token": token})
    assert allowed.status_code == 200 and allowed.json()["status"] == "denied"
    await boss.aclose()
    # A bearer token is the approver's own deliberate credential: no page token needed.
    second = int(re.search(r"Request #(\d+)",  # type: ignore[union-attr]
                           (await you.ask("start service-b", "needs approval"))["text"]).group(1))
    bearer = cli("token", "create", "boss", "--data", str(demo.data), env=demo.env)
    assert bearer.returncode == 0, bearer.stderr
    resp = httpx.post(f"{demo.base}/api/v1/approvals/{second}/decision", json=body,
                      headers={"Authorization": f"Bearer {bearer.stdout.strip()}"})
    assert resp.status_code == 200 and resp.json()["status"] == "denied", resp.text
    await you.close()


async def test_logout_closes_that_sessions_socket_at_once(demo: Demo) -> None:
    boss = await login(demo.base, "boss", DEMO_PASSWORDS["boss"])
    other = await login(demo.base, "boss", DEMO_PASSWORDS["boss"])  # a second device stays logged in
    csrf = _csrf_of((await boss.get("/rooms/ops")).text)
    async with connect(_ws_url(demo), additional_headers={"Cookie": _cookie_header(boss)}) as ws, \
            connect(_ws_url(demo), additional_headers={"Cookie": _cookie_header(other)}) as kept:
        await _frames_until(ws, lambda f: f["type"] == "approvals")
        await _frames_until(kept, lambda f: f["type"] == "approvals")
        assert (await boss.post("/logout", data={"csrf": csrf})).status_code == 303
        with pytest.raises(ConnectionClosed) as closed:
            await _frames_until(ws, lambda f: False)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        await kept.send(json.dumps({"type": "say", "text": "who"}))
        await _frames_until(kept, lambda f: f["type"] == "message" and f["kind"] == "bot")
    await boss.aclose()
    await other.aclose()


async def test_a_socket_whose_session_ended_elsewhere_acts_no_more(demo: Demo) -> None:
    """The session ends in the store (expired, or ended by another process): the next frame is
    checked against it, refused and the socket closed, not run with the actor it opened with."""
    dev = await login(demo.base, "dev", DEMO_PASSWORDS["dev"])
    async with connect(_ws_url(demo), additional_headers={"Cookie": _cookie_header(dev)}) as ws:
        await _frames_until(ws, lambda f: f["type"] == "approvals")
        with sqlite3.connect(demo.data / "opsroom.db") as db:
            db.execute("UPDATE web_sessions SET expires_at = 0 WHERE token_hash = ?",
                       (hashlib.sha256(dev.cookies["opsroom_session"].encode()).hexdigest(),))
        await ws.send(json.dumps({"type": "say", "text": "canary-after-expiry"}))
        with pytest.raises(ConnectionClosed) as closed:
            await _frames_until(ws, lambda f: False)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    with sqlite3.connect(demo.data / "opsroom.db") as db:
        said = db.execute("SELECT count(*) FROM room_messages WHERE text LIKE '%canary-after-expiry%'").fetchone()
    assert said == (0,)
    await dev.aclose()


def test_logout_with_a_wrong_csrf_token_keeps_the_session_and_its_cookie(demo: Demo) -> None:
    with httpx.Client(base_url=demo.base) as c:
        csrf = c.get("/login").text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        c.post("/login", data={"username": "dev", "password": DEMO_PASSWORDS["dev"], "csrf": csrf})
        forged = c.post("/logout", data={"csrf": "forged"})
        assert forged.status_code == 403 and "still logged in" in forged.text
        assert "opsroom_session" not in forged.headers.get("set-cookie", "")
        assert c.get("/rooms/ops").status_code == 200  # the session still works
        missing = c.post("/logout", data={})
        assert missing.status_code == 403 and "opsroom_session" not in missing.headers.get("set-cookie", "")


def test_api_docs_and_schema_need_a_login(demo: Demo) -> None:
    with httpx.Client(base_url=demo.base) as c:
        assert c.get("/openapi.json").status_code == 401
        for path in ("/docs", "/redoc"):
            resp = c.get(path, follow_redirects=True)
            assert resp.url.path == "/login" and 'name="password"' in resp.text, path
        csrf = c.get("/login").text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        c.post("/login", data={"username": "dev", "password": DEMO_PASSWORDS["dev"], "csrf": csrf})
        schema = c.get("/openapi.json")
        assert schema.status_code == 200 and "/api/v1/approvals" in str(schema.json()["paths"])
        docs = c.get("/docs")
        assert docs.status_code == 200 and "/api/v1/approvals/{approval_id}/decision" in docs.text
        assert "<script" not in docs.text  # no CDN Swagger UI: the CSP allows no foreign script


def test_session_cookie_is_secure_over_https_and_the_start_says_so(demo: Demo) -> None:
    """Loopback demo: Secure follows the request's scheme (uvicorn trusts X-Forwarded-Proto from
    127.0.0.1, as from a TLS proxy on the host)."""
    with httpx.Client(base_url=demo.base, headers={"X-Forwarded-Proto": "https"}) as c:
        page = c.get("/login")
        assert "; secure" in page.headers["set-cookie"].lower()
        assert page.headers["strict-transport-security"] == "max-age=31536000"
    with httpx.Client(base_url=demo.base) as c:
        assert "; secure" not in c.get("/login").headers["set-cookie"].lower()
    assert "session cookies: Secure when the request came over https" in demo.output()


def test_cookie_policy_is_automatic_off_loopback_and_forced_by_the_setting() -> None:
    auto_lan = Settings(host="0.0.0.0", secure_cookies=None)
    assert secure_cookie(auto_lan, "http") and "not loopback" in cookie_policy(auto_lan)[1]
    auto_local = Settings(host="127.0.0.1", secure_cookies=None)
    assert not secure_cookie(auto_local, "http") and secure_cookie(auto_local, "https")
    assert not secure_cookie(Settings(host="::1", secure_cookies=None), "http")
    assert not secure_cookie(Settings(host="0.0.0.0", secure_cookies=False), "https")
    assert secure_cookie(Settings(host="127.0.0.1", secure_cookies=True), "http")


def test_a_backslash_next_cannot_bounce_the_login_off_site(demo: Demo) -> None:
    # Browsers read `/\evil.example` as `//evil.example`.
    with httpx.Client(base_url=demo.base) as c:
        csrf = c.get("/login").text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        resp = c.post("/login", data={"username": "dev", "password": DEMO_PASSWORDS["dev"], "csrf": csrf,
                                      "next": "/\\evil.example/x"})
        assert resp.headers["location"] == "/"


async def test_joining_a_room_over_the_socket_is_audited(demo: Demo) -> None:
    dev = await login(demo.base, "dev", DEMO_PASSWORDS["dev"])
    with sqlite3.connect(demo.data / "opsroom.db") as db:
        before = db.execute("SELECT count(*) FROM audit_records WHERE action = 'room.join' AND actor = 'dev'"
                            ).fetchone()[0]
    async with connect(_ws_url(demo), additional_headers={"Cookie": _cookie_header(dev)}) as ws:
        await _frames_until(ws, lambda f: f["type"] == "approvals")
    with sqlite3.connect(demo.data / "opsroom.db") as db:
        rows = db.execute("SELECT door, target, outcome FROM audit_records WHERE action = 'room.join' "
                          "AND actor = 'dev'").fetchall()
    assert len(rows) == before + 1 and rows[-1] == ("web", "room:ops", "ok")
    await dev.aclose()


async def test_a_listening_socket_closes_when_its_session_ends_elsewhere(demo: Demo) -> None:
    """No frame sent: the socket only receives the room. A session ended outside this server
    process (here: expired in the store) still closes it, so it stops reading the room."""
    dev = await login(demo.base, "dev", DEMO_PASSWORDS["dev"])
    async with connect(_ws_url(demo), additional_headers={"Cookie": _cookie_header(dev)}) as ws:
        await _frames_until(ws, lambda f: f["type"] == "approvals")
        with sqlite3.connect(demo.data / "opsroom.db") as db:
            db.execute("UPDATE web_sessions SET expires_at = 0 WHERE token_hash = ?",
                       (hashlib.sha256(dev.cookies["opsroom_session"].encode()).hexdigest(),))
        with pytest.raises(ConnectionClosed) as closed:
            await _frames_until(ws, lambda f: False)  # the room's sweep (every 10 s) closes it
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    await dev.aclose()


class _Socket:
    """Stands in for the network end of a room socket: records how the server closed it."""

    def __init__(self) -> None:
        self.closed: tuple[int, str] | None = None

    async def close(self, code: int, reason: str = "") -> None:
        self.closed = (code, reason)


async def test_access_changes_close_the_right_sockets_with_the_right_code(running: Running) -> None:
    rt, _fake = running
    adapter = WebAdapter(rt)
    await adapter.start(_nothing, _nobody)
    boss = await access.actor_by_name(rt, name="boss", door="web")
    dev = await access.actor_by_name(rt, name="dev", door="web")
    socks = {name: _Socket() for name in ("boss-a", "boss-b", "dev")}
    conns = {"boss-a": _Conn(socks["boss-a"], boss, "csrf", "token-a"),  # type: ignore[arg-type]
             "boss-b": _Conn(socks["boss-b"], boss, "csrf", "token-b"),  # type: ignore[arg-type]
             "dev": _Conn(socks["dev"], dev, "csrf", "token-c")}  # type: ignore[arg-type]
    for c in conns.values():
        adapter.conns["ops"].add(c)
    assert boss.user_id is not None

    async def changed(reason: str, session_hash: str | None = None) -> None:
        await adapter._access_changed(AccessChanged(user_id=boss.user_id or 0, user="boss", reason=reason,
                                                    session_hash=session_hash))

    await changed("token_revoked")  # API tokens open no sockets
    assert all(s.closed is None for s in socks.values())
    await changed("logout", token_hash("token-a"))  # that session only
    assert socks["boss-a"].closed is not None and socks["boss-a"].closed[0] == 4401
    assert socks["boss-b"].closed is None and socks["dev"].closed is None
    await changed("roles")  # still logged in: reconnect as the person now is
    assert socks["boss-b"].closed == (4001, "your roles changed") and socks["dev"].closed is None
    await adapter.stop()


async def _nothing(_message: Any) -> None:
    return None


async def _nobody(_room: str, _person: Any, _here: bool) -> None:
    return None
