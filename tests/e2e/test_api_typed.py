"""Acceptance 3 (issue 13): a complete, typed API. The OpenAPI document declares a bearer scheme on
every operation and types every JSON response body; times are ISO 8601 with a zone; lists page
with a cursor that walks everything once; bad filters are refused naming what is allowed; /docs
renders in chromium from the server alone (every request that is not loopback is blocked)."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.async_api import Request, Route, async_playwright, expect

from opsroom.domain.execution import TRANSITIONS
from opsroom.runbooks.schemas import ExecutionStatus
from tests.e2e.api_server import DEV_PASSWORD, Api, api_server

pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with api_server(tmp_path_factory.mktemp("typed")) as running:
        yield running


def _openapi(api: Api) -> dict[str, Any]:
    resp = httpx.get(api.base + "/openapi.json", headers={"Authorization": f"Bearer {api.tokens['root-admin']}"})
    assert resp.status_code == 200
    doc: dict[str, Any] = resp.json()
    return doc


def _typed(schema: dict[str, Any], schemas: dict[str, Any]) -> bool:
    """A body schema names its fields: a model with properties, or a list of such."""
    if "$ref" in schema:
        target = schemas[schema["$ref"].rsplit("/", 1)[-1]]
        return bool(target.get("properties"))
    if schema.get("type") == "array":
        return _typed(schema.get("items", {}), schemas)
    return False


def test_openapi_has_a_bearer_scheme_and_no_untyped_bodies(api: Api) -> None:
    doc = _openapi(api)
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    untyped, unsecured = [], []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            label = f"{method.upper()} {path}"
            # The one operation without it: alert senders authenticate with their own token or signature.
            if path != "/api/v1/alerts/{source}" and {"bearer": []} not in op.get("security", []):
                unsecured.append(label)
            for status, reply in op["responses"].items():
                body = reply.get("content", {}).get("application/json")
                if status.startswith("2") and body and not _typed(body["schema"], doc["components"]["schemas"]):
                    untyped.append(f"{label} {status}")
    assert not untyped, untyped
    assert not unsecured, unsecured
    # The new operations are there.
    for path in ("/api/v1/me", "/api/v1/services", "/api/v1/rules", "/api/v1/rooms", "/api/v1/rooms/{room}/messages",
                 "/api/v1/tokens"):
        assert path in doc["paths"], path
    assert "post" in doc["paths"]["/api/v1/rooms/{room}/messages"] and "post" in doc["paths"]["/api/v1/tokens"]
    paged = doc["paths"]["/api/v1/executions"]["get"]["responses"]["200"]["headers"]
    assert {"X-Next-Cursor", "Link"} <= set(paged)


def test_the_status_filter_lists_every_execution_status() -> None:
    assert set(ExecutionStatus.__args__) == set(TRANSITIONS)


def _utc(text: Any) -> dt.datetime:
    assert isinstance(text, str), f"{text!r} is not an ISO 8601 string"
    at = dt.datetime.fromisoformat(text)
    assert at.utcoffset() == dt.timedelta(0), text
    assert abs((dt.datetime.now(dt.UTC) - at).total_seconds()) < 3600, text
    return at


def test_times_are_iso_8601_with_a_zone(api: Api) -> None:
    with api.api("root-admin") as c:
        ran = c.post("/runbooks/noop/run", json={"params": {"n": 500}, "room": "ops"})
        assert ran.status_code == 202, ran.text
        _utc(ran.json()["created_at"])
        _utc(c.get(f"/executions/{ran.json()['id']}").json()["created_at"])
        asked = c.post("/runbooks/guarded/run", json={"params": {"n": 501}})
        assert asked.json()["status"] == "awaiting_approval"
        approval = c.get(f"/approvals/{asked.json()['approval_id']}").json()
        assert _utc(approval["expires_at"]) > _utc(approval["created_at"])
        checked = c.post("/checks/svc-tcp/run").json()
        assert _utc(checked["checked_at"]) >= _utc(checked["since"])
        assert all(_utc(r["at"]) for r in c.get("/audit", params={"limit": 5}).json())
        assert all(_utc(t["created_at"]) for t in c.get("/tokens").json())
        said = c.post("/rooms/ops/messages", json={"text": "status"})
        assert said.status_code == 201, said.text
        assert all(_utc(m["at"]) for m in said.json()["messages"])
        assert c.get(f"/executions/{asked.json()['id']}").json()["catalog_hash"]  # the run's catalog version


def _walk(c: httpx.Client, path: str, **params: Any) -> tuple[list[Any], int]:
    """Every item of a list, page by page: odd pages through `?cursor=` (X-Next-Cursor), even
    ones by following the relative Link header; both must name the same next page."""
    items, pages = [], 0
    resp = c.get(path, params=params)
    while True:
        assert resp.status_code == 200, resp.text
        items.extend(resp.json())
        pages += 1
        cursor = resp.headers.get("x-next-cursor")
        if cursor is None:
            assert "link" not in resp.headers
            return items, pages
        link = resp.headers["link"]
        assert link.startswith(f"</api/v1{path}?") and f"cursor={cursor}" in link and link.endswith('>; rel="next"')
        if pages % 2:
            resp = c.get(path, params={**params, "cursor": cursor})
        else:
            resp = c.get(c.base_url.join(link[1:link.index(">")]))


def test_paging_walks_every_item_once(api: Api) -> None:
    with api.api("root-admin") as c:
        for n in range(1, 8):
            assert c.post("/runbooks/noop/run", json={"params": {"n": n}}).status_code == 202
        for i in range(5):
            assert c.post("/rooms/opsprod/messages", json={"text": f"note {i}"}).status_code == 201
        whole = [e["id"] for e in c.get("/executions", params={"limit": 500}).json()]
        walked, pages = _walk(c, "/executions", limit=3)
        assert [e["id"] for e in walked] == whole and pages == -(-len(whole) // 3)
        assert len(whole) >= 7 and whole == sorted(whole, reverse=True)

        seqs = [r["seq"] for r in _walk(c, "/audit", limit=7, action="runbook.run")[0]]
        assert len(seqs) == len(set(seqs)) >= 7 and seqs == sorted(seqs, reverse=True)
        assert seqs == [r["seq"] for r in c.get("/audit", params={"limit": 1000, "action": "runbook.run"}).json()]

        messages, _ = _walk(c, "/rooms/opsprod/messages", after=0, limit=2)
        ids = [m["id"] for m in messages]
        assert ids == sorted(set(ids)) and [m["text"] for m in messages if m["author"] == "root-admin"] == \
            [f"note {i}" for i in range(5)]
        # Without `after`: the newest page, oldest first, and nothing follows it.
        newest = c.get("/rooms/opsprod/messages", params={"limit": 2})
        assert [m["id"] for m in newest.json()] == ids[-2:] and "x-next-cursor" not in newest.headers

        for n in range(600, 603):
            assert c.post("/runbooks/guarded/run", json={"params": {"n": n}}).status_code == 202
        open_ids = [a["id"] for a in c.get("/approvals", params={"limit": 500}).json()]
        assert [a["id"] for a in _walk(c, "/approvals", limit=1)[0]] == open_ids and len(open_ids) >= 3


def test_bad_filters_and_rooms_are_refused_with_what_is_allowed(api: Api) -> None:
    with api.api("root-admin") as c:
        bogus = c.get("/executions", params={"status": "bogus"})
        assert bogus.status_code == 422 and bogus.json()["code"] == "invalid"
        allowed = bogus.json()["detail"][0]["msg"]
        assert "'awaiting_approval'" in allowed and "'cancelled'" in allowed
        nope = c.post("/runbooks/noop/run", json={"params": {"n": 700}, "room": "opz"})
        assert nope.status_code == 404 and nope.json()["hint"] == "did you mean 'ops'?"
        assert not [e for e in c.get("/executions").json() if e["params"] == {"n": 700}]  # nothing was started
        assert c.get("/executions", params={"limit": 0}).status_code == 422
        assert c.get("/executions", params={"limit": 501}).status_code == 422
        assert c.get("/audit", params={"action": "x; drop"}).status_code == 422
        assert c.get("/rooms/nope/messages").json()["code"] == "not_found"


def test_me_services_rules_rooms_and_a_new_token(api: Api) -> None:
    with api.api("dev") as c:
        assert c.get("/me").json() == {"name": "dev", "roles": ["viewer"],
                                        "permissions": ["approval.read", "check.run", "execution.read", "status.read"]}
        services = {s["service"]: s for s in c.get("/services").json()}
        assert services["svc"]["checks"] == ["svc-tcp"] and services["web"]["protected"] is True
        assert services["svc"]["state"] in {"PENDING", "CRITICAL"}
        rules = c.get("/rules").json()
        assert rules[0]["name"] == "kick" and rules[0]["runbook"] == "noop" and rules[0]["when"]["check"] == "svc-tcp"
        rooms = {r["name"]: r for r in c.get("/rooms").json()}
        assert rooms["ops"]["title"] == "Operations" and rooms["opsprod"]["protected"] == ["prod"]
        made = c.post("/tokens", json={"name": "laptop"})
        assert made.status_code == 201 and made.json()["user"] == "dev"
        assert c.post("/tokens", json={"name": "x", "user": "root-admin"}).status_code == 403
    fresh = httpx.get(api.base + "/api/v1/me", headers={"Authorization": f"Bearer {made.json()['token']}"})
    assert fresh.json()["name"] == "dev"
    with api.api("dev") as c:
        assert "laptop" in [t["name"] for t in c.get("/tokens").json()]


def test_a_command_posted_to_a_room_is_answered_as_the_caller(api: Api) -> None:
    with api.api("dev") as c:
        said = c.post("/rooms/ops/messages", json={"text": "run noop n=900"})
        assert said.status_code == 201
        texts = [(m["author"], m["text"]) for m in said.json()["messages"]]
        assert ("dev", "run noop n=900") in texts
        # dev is a viewer: the command is answered, and refused, with dev's permissions.
        assert any(a != "dev" and "may not" in t for a, t in texts), texts
    with api.api("root-admin") as c:
        refused = c.get("/audit", params={"action": "runbook.run", "limit": 5}).json()
        assert any(r["actor"] == "dev" and r["outcome"] == "refused" for r in refused)


async def test_docs_render_in_chromium_with_the_network_blocked(api: Api) -> None:
    assert os.path.exists(CHROMIUM), "make test installs Debian's chromium"
    left: list[str] = []

    async def loopback_only(route: Route, request: Request) -> None:
        host = httpx.URL(request.url).host
        if host in {"127.0.0.1", "localhost", "::1"}:
            await route.continue_()
        else:
            left.append(request.url)
            await route.abort()

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        context = await browser.new_context()
        await context.route("**/*", loopback_only)
        page = await context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        await page.goto(f"{api.base}/docs")
        await expect(page).to_have_url(re.compile(r"/login"))
        await page.fill("#username", "dev")
        await page.fill("#password", DEV_PASSWORD)
        await page.click("button[type=submit]")
        await expect(page).to_have_url(re.compile(r"/docs$"))
        await expect(page.locator("h1")).to_contain_text("opsroom API")
        op = page.locator("#get-api-v1-executions")
        await expect(op).to_contain_text("GET")
        await expect(op).to_contain_text("/api/v1/executions")
        await expect(op).to_contain_text("status (query)")  # its parameters
        await expect(op).to_contain_text("X-Next-Cursor")  # its paging header
        await expect(op).to_contain_text("auth: bearer")
        await expect(page.locator("#post-api-v1-rooms-room-messages")).to_contain_text("SayRequest")
        await expect(page.locator("#schema-ExecutionOut")).to_contain_text("catalog_hash")
        await expect(page.locator("#auth")).to_contain_text("http bearer")
        # The stylesheets came from the server: the method is styled, not default text.
        weight = await page.locator("#get-api-v1-executions .method").evaluate("e => getComputedStyle(e).fontWeight")
        assert weight in {"700", "bold"}
        count = await page.locator("article.op").count()
        await browser.close()
    assert not left, left
    assert not errors, errors
    assert count >= 35
