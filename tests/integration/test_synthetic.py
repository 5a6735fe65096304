"""Synthetic transactions against a real local shop (aiohttp on 127.0.0.1): login -> cart -> checkout."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from opsroom.catalog.schema import SyntheticCheck
from opsroom.checks.probes import ProbeContext, ProbeResult, get_probe

PASSWORD = "pa55-" + secrets.token_hex(8)


class Shop:
    def __init__(self) -> None:
        self.base = ""
        self.fail_cart = False
        self.checkout_delay = 0.0
        self.tokens: set[str] = set()
        self.seen: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/login", self.login)
        app.router.add_post("/cart", self.cart)
        app.router.add_get("/checkout", self.checkout)
        app.router.add_route("*", "/echo", self.echo)
        app.router.add_get("/go", self.go)
        return app

    async def login(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("user") != "alice" or body.get("password") != PASSWORD:
            return web.json_response({"error": f"bad password {body.get('password')}"}, status=401)
        token = "tok-" + secrets.token_hex(8)
        self.tokens.add(token)
        resp = web.json_response({"data": {"token": token, "items": [{"sku": "A1"}, {"sku": "B2"}]}},
                                 headers={"X-Request-Id": "rid-777"})
        resp.set_cookie("session", "sess-" + token)
        return resp

    async def cart(self, request: web.Request) -> web.Response:
        token = request.headers.get("X-Token", "")
        if token not in self.tokens or request.cookies.get("session") != "sess-" + token:
            return web.Response(status=403, text="no session")
        if self.fail_cart:
            return web.Response(status=500, text=f"cart exploded for {token} (password was {PASSWORD})")
        form = await request.text()
        return web.Response(text=f"added {form}; order id=4242; rid={request.headers.get('X-Rid')}")

    async def checkout(self, request: web.Request) -> web.Response:
        if request.cookies.get("session") is None:
            return web.Response(status=403, text="no session")
        await asyncio.sleep(self.checkout_delay)
        return web.Response(text=f"checked out order {request.query.get('order')}")

    async def echo(self, request: web.Request) -> web.Response:
        self.seen.append({"headers": dict(request.headers), "body": await request.text(),
                          "query": dict(request.query), "cookies": dict(request.cookies)})
        return web.json_response({"value": request.query.get("v", "{{ 7*7 }}"), "n": 3})

    async def go(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])


@pytest.fixture
async def shop() -> AsyncIterator[Shop]:
    s = Shop()
    runner = web.AppRunner(s.app(), shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    s.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield s
    finally:
        await runner.cleanup()


def transaction(shop: Shop, **extra: Any) -> SyntheticCheck:
    data: dict[str, Any] = {
        "name": "buy", "type": "synthetic", "system": "shop", "timeout": 5,
        "variables": {"user": "alice", "password": PASSWORD},
        "steps": [
            {"name": "login", "method": "POST", "url": shop.base + "/login",
             "json_body": {"user": "{{ vars.user }}", "password": "{{ vars.password }}"},
             "extract": {"token": "json:$.data.token", "sku": "json:$.data.items[1].sku",
                         "rid": "header:X-Request-Id"}},
            {"name": "add to cart", "method": "POST", "url": shop.base + "/cart",
             "headers": {"X-Token": "{{ vars.token }}", "X-Rid": "{{ vars.rid }}"},
             "body": "sku={{ vars.sku }}", "body_match": "added sku=B2",
             "extract": {"order": r"regex:order id=(\d+)"}},
            {"name": "checkout", "url": shop.base + "/checkout?order={{ vars.order }}",
             "body_match": "checked out order 4242", "latency_warning_ms": 300},
        ],
    }
    data.update(extra)
    return SyntheticCheck.model_validate(data)


async def run(check: SyntheticCheck) -> ProbeResult:
    ctx = ProbeContext()
    try:
        return await get_probe("synthetic").run(check, ctx)
    finally:
        await ctx.close()


def no_secret(result: ProbeResult, *values: str) -> None:
    text = result.output + "\n" + result.long_output + "\n" + repr(result.perfdata)
    for v in (PASSWORD, *values):
        assert v not in text, (v, text)


async def test_three_steps_ok_with_cookies_and_extracted_variables(shop: Shop) -> None:
    result = await run(transaction(shop))
    assert result.state == "OK", result.output
    assert result.output.startswith("3 steps OK in ") and result.output.endswith(" ms")
    assert set(result.perfdata) == {"step_login_ms", "step_add_to_cart_ms", "step_checkout_ms", "total_ms"}
    assert result.perfdata["total_ms"] >= result.perfdata["step_login_ms"]
    assert result.latency_ms == pytest.approx(result.perfdata["total_ms"], abs=1)
    no_secret(result, *shop.tokens)


async def test_failure_in_step_two_is_critical_and_named(shop: Shop) -> None:
    shop.fail_cart = True
    result = await run(transaction(shop))
    assert result.state == "CRITICAL"
    assert result.output.startswith("step 2 (add to cart) failed: HTTP 500 in "), result.output
    assert result.output.endswith("ms (expected 200)")
    assert "step_add_to_cart_ms" in result.perfdata and "step_checkout_ms" not in result.perfdata
    assert "cart exploded" in result.long_output  # the error page says why
    no_secret(result, *shop.tokens)  # ... but not the token or password it echoed
    assert not result.down


async def test_slow_step_three_is_warning_by_its_latency(shop: Shop) -> None:
    shop.checkout_delay = 0.4
    result = await run(transaction(shop))
    assert result.state == "WARNING", result.output
    assert result.output.startswith("step 3 (checkout) slow: ")
    assert "(warning above 300 ms)" in result.output
    assert result.perfdata["step_checkout_ms"] >= 400


async def test_step_latency_critical(shop: Shop) -> None:
    shop.checkout_delay = 0.3
    check = transaction(shop)
    steps = [s.model_dump() for s in check.steps]
    steps[2]["latency_critical_ms"] = 200
    result = await run(transaction(shop, steps=steps))
    assert result.state == "CRITICAL" and result.output.startswith("step 3 (checkout) failed: took ")


async def test_budget_exceeded_is_warning(shop: Shop) -> None:
    shop.checkout_delay = 0.15
    result = await run(transaction(shop, budget_ms=100))
    assert result.state == "WARNING", result.output
    assert "3 steps in " in result.output and "over the budget of 100 ms" in result.output


async def test_timeout_names_the_step(shop: Shop) -> None:
    shop.checkout_delay = 3
    result = await run(transaction(shop, timeout=1))
    assert result.state == "CRITICAL"
    assert result.output.startswith("step 3 (checkout) timed out after "), result.output
    assert "the check's timeout is 1s" in result.output
    assert result.latency_ms < 1500


async def test_secret_variable_never_in_result(shop: Shop) -> None:
    # Wrong user: the shop answers 401 with the password in its error page.
    bad = transaction(shop, variables={"user": "mallory", "password": PASSWORD})
    result = await run(bad)
    assert result.state == "CRITICAL" and result.output.startswith("step 1 (login) failed: HTTP 401")
    assert "****" in result.long_output
    no_secret(result)


async def test_secret_in_url_of_unreachable_host_is_redacted() -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    check = SyntheticCheck.model_validate({
        "name": "x", "type": "synthetic", "system": "s", "timeout": 3, "variables": {"password": PASSWORD},
        "steps": [{"name": "login", "url": f"http://127.0.0.1:{port}/?p={{{{ vars.password }}}}"}]})
    result = await run(check)
    assert result.state == "CRITICAL" and "connection refused" in result.output and result.down
    no_secret(result)


async def test_header_and_regex_extraction_flow(shop: Shop) -> None:
    check = SyntheticCheck.model_validate({
        "name": "x", "type": "synthetic", "system": "s",
        "steps": [
            {"name": "login", "method": "POST", "url": shop.base + "/login",
             "json_body": {"user": "alice", "password": PASSWORD},
             "extract": {"rid": "header:x-request-id", "tok": r'regex:"token": "(tok-[0-9a-f]+)"'}},
            {"name": "echo", "method": "PUT", "url": shop.base + "/echo?rid={{ vars.rid }}",
             "headers": {"X-Tok": "{{ vars.tok }}"},
             "json_body": {"list": ["{{ vars.rid }}", 5, True], "nested": {"t": "{{ vars.tok }}"}}},
        ]})
    result = await run(check)
    assert result.state == "OK", result.output
    seen = shop.seen[-1]
    assert seen["query"]["rid"] == "rid-777"
    assert seen["headers"]["X-Tok"] in shop.tokens
    import json
    assert json.loads(seen["body"]) == {"list": ["rid-777", 5, True], "nested": {"t": seen["headers"]["X-Tok"]}}
    assert seen["cookies"]["session"] == "sess-" + seen["headers"]["X-Tok"]  # the cookie from step 1


async def test_cookies_are_never_shared_between_runs(shop: Shop) -> None:
    check = SyntheticCheck.model_validate({
        "name": "x", "type": "synthetic", "system": "s",
        "steps": [{"name": "echo", "url": shop.base + "/echo"}]})
    await run(transaction(shop))
    ctx = ProbeContext()
    try:
        await get_probe("synthetic").run(transaction(shop), ctx)
        assert (await get_probe("synthetic").run(check, ctx)).state == "OK"
    finally:
        await ctx.close()
    assert shop.seen[-1]["cookies"] == {}


async def test_extraction_failures_are_critical(shop: Shop) -> None:
    for source, words in (("json:$.data.nope", "$.data.nope not found"),
                          ("header:X-Nope", "no X-Nope header"),
                          (r"regex:nope=(\d+)", "does not match")):
        check = SyntheticCheck.model_validate({
            "name": "x", "type": "synthetic", "system": "s",
            "steps": [{"name": "login", "method": "POST", "url": shop.base + "/login",
                       "json_body": {"user": "alice", "password": PASSWORD}, "extract": {"v": source}}]})
        result = await run(check)
        assert result.state == "CRITICAL" and words in result.output, result.output
        no_secret(result, *shop.tokens)


async def test_body_not_match_and_undefined_variable(shop: Shop) -> None:
    check = SyntheticCheck.model_validate({
        "name": "x", "type": "synthetic", "system": "s",
        "steps": [{"name": "echo", "url": shop.base + "/echo", "body_not_match": r"\"n\": 3"}]})
    result = await run(check)
    assert result.state == "CRITICAL" and "body matches" in result.output
    check = SyntheticCheck.model_validate({
        "name": "x", "type": "synthetic", "system": "s",
        "steps": [{"name": "echo", "url": shop.base + "/echo?x={{ vars.missing }}"}]})
    result = await run(check)
    assert result.state == "CRITICAL" and result.output.startswith("step 1 (echo) failed: url:")


async def test_same_origin_redirect_is_followed_and_expected_redirect_is_not(shop: Shop) -> None:
    check = SyntheticCheck.model_validate({
        "name": "x", "type": "synthetic", "system": "s",
        "steps": [{"name": "go", "url": shop.base + "/go?to=/echo%3Fv%3Dhere", "body_match": "here"}]})
    result = await run(check)
    assert result.state == "OK", result.output
    check = SyntheticCheck.model_validate({
        "name": "x", "type": "synthetic", "system": "s",
        "steps": [{"name": "go", "url": shop.base + "/go?to=/echo", "expect_status": [302]}]})
    before = len(shop.seen)
    assert (await run(check)).state == "OK"
    assert len(shop.seen) == before


async def test_each_steps_latency_is_kept_in_the_checks_history(shop: Shop, tmp_path: Any) -> None:
    """Through the monitor and the result store, as the server runs it: perfdata rows per run."""
    from sqlalchemy import select

    from opsroom import server
    from opsroom.checks.models import CheckResultRow
    from opsroom.checks.monitor import Monitor
    from opsroom.config import Settings
    from tests.factories import small_catalog

    check = transaction(shop, system="sys").model_dump(mode="json", exclude_defaults=True)
    check["type"] = "synthetic"
    catalog = small_catalog(tmp_path, checks=[check])
    rt = await server.open_runtime(Settings(data=tmp_path / "data", catalog=catalog, check_result_ok_interval=0))
    monitor = Monitor(rt)
    try:
        assert (await monitor.run_check("buy")).state == "OK"
        shop.fail_cart = True
        assert (await monitor.run_check("buy")).state == "CRITICAL"
        await monitor.flush()
        async with rt.read() as s:
            rows = list((await s.execute(select(CheckResultRow).where(CheckResultRow.check == "buy")
                                         .order_by(CheckResultRow.at))).scalars())
        assert [r.state for r in rows] == ["OK", "CRITICAL"]
        assert set(rows[0].perfdata) == {"step_login_ms", "step_add_to_cart_ms", "step_checkout_ms", "total_ms"}
        assert set(rows[1].perfdata) == {"step_login_ms", "step_add_to_cart_ms", "total_ms"}
        assert rows[1].output.startswith("step 2 (add to cart) failed: HTTP 500")
        assert PASSWORD not in rows[1].output
    finally:
        await monitor.stop()
        await rt.close()
