"""Synthetic checks against hostile responses and hostile catalogs, by attack class.

Every server here is a real aiohttp app on 127.0.0.1; nothing of opsroom is mocked."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from opsroom.catalog.errors import CatalogError
from opsroom.catalog.loader import load_catalog
from opsroom.catalog.schema import SyntheticCheck
from opsroom.checks.probes import ProbeContext, ProbeResult, get_probe
from opsroom.checks.probes.http import MAX_BODY
from opsroom.checks.synthetic_check import (
    compile_safe_regex,
    is_missing,
    json_lookup,
    parse_json_path,
    synthetic_problems,
)
from tests.factories import write_catalog

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Server:
    def __init__(self) -> None:
        self.seen: list[web.Request] = []
        self.bodies: list[str] = []
        self.sent = 0
        self.base = ""


SRV = web.AppKey("srv", Server)  # the test server, for handlers that stream


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[dict[str, Handler]], Awaitable[Server]]]:
    runners: list[web.AppRunner] = []

    async def start(routes: dict[str, Handler]) -> Server:
        srv = Server()
        app = web.Application()

        def wrap(h: Handler) -> Handler:
            async def handler(request: web.Request) -> web.StreamResponse:
                srv.seen.append(request)
                srv.bodies.append(await request.text())
                return await h(request)
            return handler

        for path, h in routes.items():
            app.router.add_route("*", path, wrap(h))
        app[SRV] = srv
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        srv.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return srv

    try:
        yield start
    finally:
        for r in runners:
            await r.cleanup()


def synthetic(steps: list[dict[str, Any]], **extra: Any) -> SyntheticCheck:
    return SyntheticCheck.model_validate({"name": "t", "type": "synthetic", "system": "s", "timeout": 5,
                                          "steps": steps, **extra})


async def run(check: SyntheticCheck) -> ProbeResult:
    ctx = ProbeContext()
    try:
        return await get_probe("synthetic").run(check, ctx)
    finally:
        await ctx.close()


def problems(check: SyntheticCheck) -> list[str]:
    return [p.message for p in synthetic_problems(check)]


class TestTemplateInjection:
    async def test_extracted_template_text_is_sent_as_data_not_evaluated(self, serve: Any) -> None:
        async def evil(request: web.Request) -> web.Response:
            return web.json_response({"v": "{{ 7*7 }}{% for x in range(3) %}x{% endfor %}",
                                      "cls": "{{ vars.__class__ }}"})

        async def sink(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        srv = await serve({"/evil": evil, "/sink": sink})
        result = await run(synthetic([
            {"name": "a", "url": srv.base + "/evil", "extract": {"v": "json:$.v", "c": "json:$.cls"}},
            {"name": "b", "method": "POST", "url": srv.base + "/sink", "headers": {"X-V": "{{ vars.v }}"},
             "body": "{{ vars.v }}|{{ vars.c }}", "json_body": None},
        ]))
        assert result.state == "OK", result.output
        last = srv.seen[-1]
        assert last.headers["X-V"] == "{{ 7*7 }}{% for x in range(3) %}x{% endfor %}"
        assert srv.bodies[-1] == "{{ 7*7 }}{% for x in range(3) %}x{% endfor %}|{{ vars.__class__ }}"
        assert "49" not in srv.bodies[-1]

    def test_private_attributes_in_step_templates_refused_at_load(self) -> None:
        check = synthetic([{"name": "a", "url": "http://127.0.0.1:1/{{ vars.__class__.__mro__ }}"}])
        assert any("private attribute" in m for m in problems(check))

    async def test_private_attributes_refused_at_run_time_too(self) -> None:
        result = await run(synthetic([{"name": "a", "url": "http://127.0.0.1:1/{{ vars.__class__ }}"}]))
        assert result.state == "CRITICAL" and result.output.startswith("step 1 (a) failed: url:")

    def test_names_other_than_vars_refused_at_load(self) -> None:
        check = synthetic([{"name": "a", "url": "http://x/{{ cycler.__init__ }}{{ params.p }}"}])
        messages = problems(check)
        assert any("'params'" in m for m in messages)


class TestServerSideRequestForgery:
    """Policy: redirects are followed within the run's session to the same origin only (or http to
    https on the same host), at most 5 hops; a redirect elsewhere fails the step unfollowed."""

    async def test_redirect_to_another_origin_is_not_followed(self, serve: Any) -> None:
        async def internal(request: web.Request) -> web.Response:
            return web.Response(text="metadata: secret")

        other = await serve({"/latest/meta-data": internal})

        async def bounce(request: web.Request) -> web.Response:
            raise web.HTTPFound(other.base + "/latest/meta-data")

        srv = await serve({"/login": bounce})
        result = await run(synthetic([{"name": "login", "url": srv.base + "/login"}]))
        assert result.state == "CRITICAL"
        assert "redirects to another origin" in result.output and "not followed" in result.output
        assert other.seen == []

    async def test_redirect_loop_is_bounded(self, serve: Any) -> None:
        async def loop(request: web.Request) -> web.Response:
            raise web.HTTPFound("/loop")

        srv = await serve({"/loop": loop})
        result = await run(synthetic([{"name": "l", "url": srv.base + "/loop"}]))
        assert result.state == "CRITICAL" and "more than 5 redirects" in result.output
        assert len(srv.seen) == 6


class TestResourceExhaustion:
    async def test_huge_response_body_is_read_bounded(self, serve: Any) -> None:
        async def huge(request: web.Request) -> web.StreamResponse:
            srv = request.app[SRV]
            resp = web.StreamResponse()
            await resp.prepare(request)
            chunk = b"x" * 65536
            try:
                for _ in range(50 * 16):  # up to 50 MB
                    await resp.write(chunk)
                    srv.sent += len(chunk)
            except (ConnectionError, asyncio.CancelledError):
                pass
            return resp

        srv = await serve({"/huge": huge})
        start = time.perf_counter()
        result = await run(synthetic([{"name": "big", "url": srv.base + "/huge", "body_match": "needle"}]))
        assert result.state == "CRITICAL" and "body does not match" in result.output
        assert time.perf_counter() - start < 3
        await asyncio.sleep(0.2)
        assert srv.sent < 50 * 1024 * 1024  # the probe stopped reading at MAX_BODY and hung up
        assert len(result.long_output) < 2000
        assert MAX_BODY == 1 << 20


class TestJsonPathAttributeAccess:
    @pytest.mark.parametrize("path", ["$.__class__", "$.a.__globals__", "$['__init__']", "$..a", "$[*]",
                                      "$.a[?(@.b)]", "$.a()", "a.b", "$" + ".a" * 40])
    def test_refused_at_load(self, path: str) -> None:
        check = synthetic([{"name": "a", "url": "http://127.0.0.1:1/", "extract": {"v": "json:" + path}}])
        assert any("extract v:" in m for m in problems(check)), path
        with pytest.raises(ValueError):
            parse_json_path(path)

    def test_lookup_reads_json_only(self) -> None:
        doc = {"a": [{"b": "c"}], "items": "x"}
        assert json_lookup(doc, parse_json_path("$.a[0].b")) == "c"
        assert json_lookup(doc, parse_json_path("$.a[-1]['b']")) == "c"
        # A str has no keys, a list no names: a name that is a method in Python reads nothing.
        assert is_missing(json_lookup(doc, parse_json_path("$.items.upper")))
        assert is_missing(json_lookup(doc, parse_json_path("$.a.append")))
        assert is_missing(json_lookup(doc, parse_json_path("$.a[5]")))


class TestRegexDenialOfService:
    @pytest.mark.parametrize("pattern", [r"(a+)+b", r"(\w*)*x", r"((ab)*)+c", r"(\d+)x", r".*token=(\w+)"])
    def test_catastrophic_patterns_refused_at_load(self, pattern: str) -> None:
        check = synthetic([{"name": "a", "url": "http://127.0.0.1:1/", "extract": {"v": "regex:" + pattern}}])
        assert any("extract v:" in m for m in problems(check)), pattern
        with pytest.raises(ValueError):
            compile_safe_regex(pattern)

    def test_body_match_patterns_checked_too(self) -> None:
        check = synthetic([{"name": "a", "url": "http://127.0.0.1:1/", "body_match": "(x+)+y"}])
        assert any("nested" in m or "repeats a repeated group" in m for m in problems(check))

    async def test_extraction_reads_a_bounded_prefix(self, serve: Any) -> None:
        async def body(request: web.Request) -> web.Response:
            return web.Response(text="a" * 200_000 + "token=abc123")

        srv = await serve({"/b": body})
        result = await run(synthetic([{"name": "b", "url": srv.base + "/b",
                                       "extract": {"t": r"regex:token=(\w+)"}}]))
        assert result.state == "CRITICAL" and "does not match" in result.output


class TestHeaderInjection:
    async def test_extracted_value_with_crlf_refused_in_headers(self, serve: Any) -> None:
        async def give(request: web.Request) -> web.Response:
            return web.json_response({"t": "abc\r\nX-Admin: 1"})

        async def sink(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        srv = await serve({"/give": give, "/sink": sink})
        result = await run(synthetic([
            {"name": "give", "url": srv.base + "/give", "extract": {"t": "json:$.t"}},
            {"name": "use", "url": srv.base + "/sink", "headers": {"X-Token": "{{ vars.t }}"}},
        ]))
        assert result.state == "CRITICAL"
        assert re.fullmatch(r"step 2 \(use\) failed: header X-Token would contain a line break or NUL "
                            r"\(from a variable\); refused after \d+ ms", result.output), result.output
        assert len(srv.seen) == 1 and all("X-Admin" not in r.headers for r in srv.seen)

    async def test_extracted_value_with_crlf_refused_in_url(self, serve: Any) -> None:
        async def give(request: web.Request) -> web.Response:
            return web.json_response({"p": "x HTTP/1.1\r\nHost: evil\r\n\r\nGET /"})

        srv = await serve({"/give": give})
        result = await run(synthetic([
            {"name": "give", "url": srv.base + "/give", "extract": {"p": "json:$.p"}},
            {"name": "use", "url": srv.base + "/{{ vars.p }}"},
        ]))
        assert result.state == "CRITICAL" and "line break" in result.output
        assert len(srv.seen) == 1


class TestSecretExposure:
    async def test_secret_from_the_catalog_and_extracted_token_never_in_results(
            self, serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        secret = "hunter2-" + "7f3a9c"
        monkeypatch.setenv("SHOP_PASSWORD_T", secret)

        async def login(request: web.Request) -> web.Response:
            return web.json_response({"session": "sess-9d8e7f6a5b"}, headers={"X-Echo": secret})

        async def fail(request: web.Request) -> web.Response:
            return web.Response(status=500, text=f"boom {request.headers.get('Authorization')} "
                                                 f"{request.query.get('pw')}")

        srv = await serve({"/login": login, "/fail": fail})
        write_catalog(tmp_path, {
            "environments": [{"name": "test"}], "systems": [{"name": "shop", "environment": "test"}],
            "checks": [{"name": "buy", "type": "synthetic", "system": "shop",
                        "variables": {"password": "${secret:SHOP_PASSWORD_T}"},
                        "steps": [{"name": "login", "method": "POST", "url": srv.base + "/login",
                                   "json_body": {"password": "{{ vars.password }}"},
                                   "extract": {"session": "json:$.session", "echo": "header:X-Echo"}},
                                  {"name": "pay", "url": srv.base + "/fail?pw={{ vars.password }}",
                                   "headers": {"Authorization": "Bearer {{ vars.session }}"}}]}]})
        catalog = load_catalog(tmp_path)
        result = await run(catalog.checks["buy"])  # type: ignore[arg-type]
        assert result.state == "CRITICAL" and result.output.startswith("step 2 (pay) failed: HTTP 500")
        everything = result.output + result.long_output + json.dumps(result.perfdata)
        assert secret not in everything and "sess-9d8e7f6a5b" not in everything
        assert "boom Bearer **** ****" in result.long_output


class TestCatalogLoadErrors:
    def test_bad_templates_are_file_line_errors(self, tmp_path: Path) -> None:
        write_catalog(tmp_path, """\
            environments: [{name: test}]
            systems: [{name: shop, environment: test}]
            checks:
              - name: buy
                type: synthetic
                system: shop
                variables: {user: alice}
                steps:
                  - name: login
                    url: "http://127.0.0.1:1/login?u={{ vars.usr }}"
                    extract: {token: "json:$.data.token"}
                  - name: cart
                    url: "http://127.0.0.1:1/cart/{{ vars.cart_id }}"
                    headers: {X-Token: "{{ vars.token }"}
                    extract: {cart_id: "regex:(a+)+"}
            """)
        with pytest.raises(CatalogError) as refused:  # `catalog validate` and the server refuse it
            load_catalog(tmp_path)
        by_message = {p.message: (p.location, p.hint) for p in refused.value.problems}
        usr = next(m for m in by_message if "vars.usr" in m)
        loc, hint = by_message[usr]
        assert usr.startswith("check 'buy': steps[0].url: uses vars.usr")
        assert loc is not None and loc.file.endswith("catalog.yaml") and loc.line == 10
        assert "did you mean 'user'" in hint
        later = next(m for m in by_message if "vars.cart_id" in m)
        assert "which step 2 extracts from its own response" in later
        assert any("does not compile" in m for m in by_message)
        assert any("extract cart_id" in m for m in by_message)
        assert by_message[later][0] is not None and by_message[later][0].line == 13  # type: ignore[union-attr]
