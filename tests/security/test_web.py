"""Web door security: cookie flags, CSRF on forms and cookie-authenticated API calls, WebSocket origin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.e2e.harness import DEMO_PASSWORDS, Demo, login, start_demo

pytestmark = pytest.mark.e2e


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
