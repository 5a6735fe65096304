"""The API's new inputs, attacked: forged and foreign paging cursors (parameter tampering), reading
or speaking in rooms without the right to (IDOR / broken access control), impersonation through
extra body fields (mass assignment), oversize text and control characters (terminal escape and
NUL injection), cross-site posting with a session cookie (CSRF), and a token's value leaking."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from tests.e2e.api_server import DEV_PASSWORD, Api, api_server
from tests.e2e.harness import login

pytestmark = pytest.mark.e2e
LISTS = ["/executions", "/audit", "/alerts", "/approvals", "/rooms/ops/messages"]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with api_server(tmp_path_factory.mktemp("apisec")) as running:
        yield running


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_forged_cursors_are_refused_not_obeyed_or_crashed_on(api: Api) -> None:
    forged = ["garbage", "!!!", "a" * 300, _b64("v1:executions:-1"), _b64("v1:executions:99999999999"),
              _b64("v1:executions:1 OR 1=1"), _b64("v1:executions:\u0661\u0662"), _b64("v2:executions:5"),
              _b64("v1:executions:" + "9" * 40), base64.urlsafe_b64encode(b"\xff\xfe:1").decode().rstrip("="),
              _b64("v1:room:ops:1:2x")]
    with api.api("root-admin") as c:
        for path in LISTS:
            for cursor in forged:
                resp = c.get(path, params={"cursor": cursor})
                assert resp.status_code == 422, (path, cursor, resp.status_code, resp.text[:200])
                assert resp.json()["code"] == "invalid", (path, cursor)
        # One list's cursor is no key to another: executions' cursor on the audit log, one room's on another.
        assert c.get("/audit", params={"cursor": _b64("v1:executions:5")}).status_code == 422
        refused = c.get("/rooms/ops/messages", params={"cursor": _b64("v1:room:opsprod:1")})
        assert refused.status_code == 422 and "hint" in refused.json()


def test_rooms_are_closed_to_whoever_may_not_read_status(api: Api) -> None:
    """`aud` holds audit.read only: no room, no message, no line said, whatever the path or cursor."""
    with api.api("root-admin") as admin:
        assert admin.post("/rooms/ops/messages", json={"text": "secret plan"}).status_code == 201
    with api.api("aud") as c:
        assert c.get("/rooms").status_code == 403
        for room in ("ops", "opsprod", "nope"):
            read = c.get(f"/rooms/{room}/messages", params={"after": 0})
            assert read.status_code == 403 and "secret plan" not in read.text, read.text
            said = c.post(f"/rooms/{room}/messages", json={"text": "status"})
            assert said.status_code == 403, said.text
        assert c.get("/rooms/ops/messages", params={"cursor": _b64("v1:room:ops:0")}).status_code == 403
        assert c.get("/executions").status_code == 403
    with api.api("root-admin") as admin:
        authors = {m["author"] for m in admin.get("/rooms/ops/messages", params={"limit": 500}).json()}
        assert "aud" not in authors
        refused = admin.get("/audit", params={"action": "room.read"}).json()
        assert not [r for r in refused if r["actor"] == "aud" and r["outcome"] == "ok"]


def test_a_line_is_said_as_the_caller_only(api: Api) -> None:
    with api.api("dev") as c:
        forged = c.post("/rooms/ops/messages", json={"text": "approve 1", "author": "root-admin"})
        assert forged.status_code == 422  # no field but text: nobody speaks as another
        said = c.post("/rooms/ops/messages", json={"text": "whoami"}).json()["messages"]
        assert ("dev", "whoami") in [(m["author"], m["text"]) for m in said]


@pytest.mark.parametrize("text", ["", "   ", "x" * 2001, "\x1b[31mred\x1b[0m", "nul\x00byte", "c1\u0085line",
                                  "bell\x07", "\x7f"])
def test_oversize_blank_and_control_text_is_refused(api: Api, text: str) -> None:
    with api.api("dev") as c:
        before = c.get("/rooms/opsprod/messages", params={"limit": 1}).json()
        resp = c.post("/rooms/opsprod/messages", json={"text": text})
        assert resp.status_code == 422, resp.text
        assert resp.json()["code"] == "invalid"
        assert c.get("/rooms/opsprod/messages", params={"limit": 1}).json() == before  # nothing was said


def test_the_longest_line_and_tabs_and_newlines_pass(api: Api) -> None:
    with api.api("dev") as c:
        assert c.post("/rooms/opsprod/messages", json={"text": "y" * 2000}).status_code == 201
        assert c.post("/rooms/opsprod/messages", json={"text": "a\tb\nc"}).status_code == 201


async def test_a_session_cookie_posts_only_with_its_csrf_header(api: Api) -> None:
    http = await login(api.base, "dev", DEV_PASSWORD)
    try:
        forged = await http.post("/api/v1/rooms/ops/messages", json={"text": "status"})
        assert forged.status_code == 403 and "X-CSRF-Token" in forged.json()["detail"]
        page = (await http.get("/rooms/ops")).text
        csrf = page.split('<meta name="csrf" content="', 1)[1].split('"', 1)[0]
        allowed = await http.post("/api/v1/rooms/ops/messages", json={"text": "status"},
                                  headers={"X-CSRF-Token": csrf})
        assert allowed.status_code == 201, allowed.text
        minted = await http.post("/api/v1/tokens", json={"name": "from-a-page"})
        assert minted.status_code == 403  # another site's script cannot mint a token off the cookie
    finally:
        await http.aclose()


def test_tokens_are_minted_for_oneself_and_never_listed(api: Api) -> None:
    with api.api("dev") as c:
        assert c.post("/tokens", json={"name": "x", "user": "root-admin"}).status_code == 403
        assert c.post("/tokens", json={"name": "bad\nname"}).status_code == 422
        assert c.post("/tokens", json={"name": "x" * 65}).status_code == 422
        made = c.post("/tokens", json={"name": "mine"}).json()
        assert made["token"] not in c.get("/tokens").text
    with api.api("root-admin") as admin:
        for_dev = admin.post("/tokens", json={"name": "issued", "user": "dev"})
        assert for_dev.status_code == 201 and for_dev.json()["user"] == "dev"
        assert admin.post("/tokens", json={"name": "ghost", "user": "nobody"}).status_code == 404
