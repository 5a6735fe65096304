"""Every page the server answers: security headers on each, and no input reflected as markup
(issue 9, finding 1 and acceptance 2). The route list comes from the app itself, so a new page
without a probe here fails the first test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from html.parser import HTMLParser
from urllib.parse import quote

import httpx
import pytest
from starlette.routing import BaseRoute, Mount, Route

from opsroom.config import Settings
from opsroom.web import svgplot
from opsroom.web.app import create_app
from opsroom.web.security import CSP
from tests.e2e.harness import DEMO_PASSWORDS, Demo, join, start_demo

pytestmark = pytest.mark.e2e
PROBE = '"><svg onload=alert(1)>'
Q = quote(PROBE, safe="")
# Every GET route outside the JSON API, with the URLs that exercise it (probe in path and query).
PAGES: dict[str, list[str]] = {
    "/login": ["/login", f"/login?next={Q}&error={Q}", f"/login?next=/rooms/{Q}"],
    "/login/oidc": ["/login/oidc", f"/login/oidc?next={Q}"],
    "/login/oidc/callback": ["/login/oidc/callback", f"/login/oidc/callback?state={Q}&code={Q}&error={Q}"],
    "/": ["/", f"/?q={Q}"],
    "/rooms/{room}": ["/rooms/ops", f"/rooms/{Q}", f"/rooms/ops?x={Q}"],
    "/me/links": ["/me/links", f"/me/links?x={Q}"],
    "/executions/{execution_id}": ["/executions/1", f"/executions/{Q}", f"/executions/1?x={Q}", "/executions/0"],
    "/services/{name}": ["/services/service-b", f"/services/{Q}", f"/services/service-b?x={Q}",
                         "/services/Service%20B"],
    "/docs": ["/docs", f"/docs?x={Q}"],
    "/redoc": ["/redoc"],
    "/openapi.json": ["/openapi.json"],
    "/healthz": ["/healthz"],
    "/metrics": ["/metrics"],
}
EXTRA = [f"/{Q}", "/no/such/page", "/static/room.js", "/static/opsroom.css", "/api/v1/systems",
         f"/api/v1/executions/{Q}"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    server = start_demo(tmp_path_factory.mktemp("pages"), interval="5s")
    yield server
    server.stop()


def _client(demo: Demo, user: str | None) -> httpx.Client:
    c = httpx.Client(base_url=demo.base, timeout=10)
    if user:
        csrf = c.get("/login").text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        assert c.post("/login", data={"username": user, "password": DEMO_PASSWORDS[user],
                                      "csrf": csrf}).status_code == 303
    return c


class _Markup(HTMLParser):
    """What in a page could run: svg elements, inline scripts, on* handler attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {k for k, _ in attrs}
        # The SVGs a page draws itself (the service page's plot and its legend keys) carry the
        # server's own viewBox; an injected one would not. Handlers are refused on every element.
        own_svg = tag == "svg" and dict(attrs).get("viewbox") in ("0 0 12 4", f"0 0 {svgplot.W:g} {svgplot.H:g}")
        if (tag == "svg" and not own_svg) or (tag == "script" and "src" not in names
                                               and ("type", "application/json") not in attrs):
            self.found.append(tag)
        self.found += [f"{tag}[{k}]" for k in names if k.startswith("on")]

    @classmethod
    def of(cls, page: str) -> list[str]:
        parser = cls()
        parser.feed(page)
        return parser.found


def _check(resp: httpx.Response) -> None:
    where = f"{resp.request.method} {resp.request.url} -> {resp.status_code}"
    assert resp.status_code < 500, where
    h = resp.headers
    assert h.get("content-security-policy") == CSP, where
    assert "script-src 'self'" in CSP and "'unsafe-inline'" not in CSP
    assert h.get("x-frame-options") == "DENY" and h.get("x-content-type-options") == "nosniff", where
    assert h.get("referrer-policy") == "same-origin", where
    static = resp.request.url.path.startswith("/static/")
    assert h.get("cache-control") == ("no-cache" if static else "no-store"), where
    body = resp.text
    if "text/html" in h.get("content-type", ""):
        # Markup from the input would start with "<svg onload": escaped, it reads "&lt;svg". (A
        # page may draw an SVG of its own, the service page's plot: never with a handler.)
        assert "<svg onload" not in body.lower() and PROBE not in body, where
        # Parsed as a browser would: no injected element, no inline script or handler at all
        # (the CSP would refuse them, so the pages carry none).
        assert _Markup.of(body) == [], where
    elif PROBE in body:
        # An echo in a JSON error is data; nosniff keeps a browser from reading it as a page.
        assert h.get("content-type", "").startswith("application/json"), where
    assert PROBE not in h.get("location", ""), where


def _routes(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, set[str]]]:
    """(path, methods) of every route, walking into included routers (FastAPI includes them lazily)."""
    for r in routes:
        if isinstance(r, Route):
            yield prefix + r.path, set(r.methods or ())
        inner = getattr(r, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes, prefix + r.include_context.prefix)  # type: ignore[attr-defined]


def test_every_page_route_is_probed() -> None:
    app = create_app(Settings(catalog=None))
    gets = {path for path, methods in _routes(app.routes) if "GET" in methods and not path.startswith("/api/")}
    assert gets == set(PAGES), "add the new page to PAGES with URLs that put the probe in it"
    assert [r.path for r in app.routes if isinstance(r, Mount)] == ["/static"]


@pytest.mark.parametrize("user", [None, "dev"])
def test_headers_and_no_reflection_on_every_page(demo: Demo, user: str | None) -> None:
    with closing(_client(demo, user)) as c:
        for url in [u for urls in PAGES.values() for u in urls] + EXTRA:
            _check(c.get(url))
            _check(c.get(url, headers={"Accept": "text/html"}))  # as a browser asks: pages, 404s too
        missing = c.get("/no/such/page", headers={"Accept": "text/html"})
        assert missing.status_code == 404 and "There is no such page." in missing.text
        assert c.get("/no/such/page").json() == {"detail": "Not Found"}
        if user:
            page = c.get(f"/rooms/{Q}")
            assert page.status_code == 404 and "&lt;svg onload=alert(1)&gt;" in page.text
            assert c.get("/rooms/ops").text.count("<script") == 2  # room.js and the JSON data block
            assert '<script type="application/json" id="room-data">' in c.get("/rooms/ops").text


def test_form_fields_are_never_reflected(demo: Demo) -> None:
    with closing(_client(demo, None)) as c:
        csrf = c.get("/login").text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        for data in ({"username": PROBE, "password": PROBE, "csrf": csrf, "next": PROBE},
                     {"username": "dev", "password": "nope", "csrf": PROBE, "next": f"/rooms/{PROBE}"}):
            resp = c.post("/login", data=data)
            _check(resp)
            _check(c.get(resp.headers["location"]))
    with closing(_client(demo, "dev")) as c:
        _check(c.post("/logout", data={"csrf": PROBE}))
        _check(c.post("/login", data={"username": "x"}))  # missing fields: 422 JSON


async def test_what_people_say_renders_as_text(demo: Demo) -> None:
    """A chat line is stored and shown to everyone on the server-rendered page: text, never markup."""
    dev = await join(demo, "dev")
    await dev.say(PROBE)
    await dev.wait_for(lambda f: f["type"] == "message" and f["text"] == PROBE)
    await dev.close()
    with closing(_client(demo, "dev")) as c:
        page = c.get("/rooms/ops")
        _check(page)
        assert "&#34;&gt;&lt;svg onload=alert(1)&gt;" in page.text or "&quot;&gt;&lt;svg" in page.text
