"""Issue 12, point 4 and acceptance 4: /services/NAME shows a service's state, its last day as an
SVG plot, its firing alerts and the runbooks run on it; small on first load; drawn in chromium at
390 px with its plot and no sideways scroll.

A real server in-process (uvicorn on loopback); the day of history goes through the monitor's own
record() and result writer with past times, alerts through the real Alertmanager endpoint,
executions through the API."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import async_playwright, expect

from opsroom.checks.probes.base import ProbeResult
from opsroom.runtime import Runtime
from tests.chat.harness import Served, serve
from tests.e2e.harness import login
from tests.factories import PASSWORDS, token_for

pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
AM_TOKEN = "service-page-am-token-0123456789"
FIRST_LOAD_LIMIT = 30 * 1024


def catalog(tmp: Path) -> dict[str, Any]:
    """`web` (prod, two checks, alias `frontend`) and `db` (test); one Alertmanager source; a
    runbook with a service parameter."""
    ok = [sys.executable, "-c", "print('OK - fine')"]
    return {
        "systems": [{"name": "shop", "title": "Shop", "environment": "prod"},
                    {"name": "lab", "title": "Lab", "environment": "test"}],
        "services": [{"name": "web", "system": "shop", "title": "Web front", "aliases": ["frontend"]},
                     {"name": "db", "system": "lab"}],
        "checks": [{"name": "web-http", "type": "command", "service": "web", "interval": "60s", "argv": ok},
                   {"name": "web-tcp", "type": "command", "service": "web", "interval": "60s", "argv": ok},
                   {"name": "db-cmd", "type": "command", "service": "db", "interval": "60s", "argv": ok}],
        "alert_sources": [{"name": "prometheus", "kind": "alertmanager", "token": AM_TOKEN,
                           "service": "{{ labels.service }}"}],
        "runbooks": [{"name": "kick", "approval": "none", "environment": "test",
                      "parameters": {"service": {"type": "service"}},
                      "steps": [{"command": [sys.executable, "-c", "import sys; print('kicked', sys.argv[1])",
                                             "{{ params.service }}"]}]}],
        "aliases": [],
        "rules": [],
    }


@asynccontextmanager
async def site(tmp: Path, **over: Any) -> AsyncIterator[Served]:
    async with serve(tmp, None, **{**catalog(tmp), **over}) as served:
        yield served


async def feed(rt: Runtime, check: str, points: list[tuple[float, str, float, str]]) -> None:
    """(time, state, latency ms, output) results through the monitor, as its schedule would record
    them at those times, then stored by its writer."""
    assert rt.monitor is not None
    for at, state, latency, output in sorted(points):
        rt.monitor.record(check, ProbeResult(state=state, output=output, latency_ms=latency), now=at)
    await rt.monitor.flush()


def day(now: float, *, step: float = 600.0, latency: Callable[[int], float] = lambda i: 20.0 + i % 5,
        state: Callable[[int], str] = lambda i: "OK", output: str = "OK - fine") -> list[tuple[float, str, float, str]]:
    n = int(86400 // step)
    return [(now - 86400 + 60 + i * step, state(i), latency(i), output) for i in range(n)]


async def post_alert(base: str, *, service: str, name: str = "HighLatency", summary: str = "p99 above 500 ms",
                     labels: dict[str, str] | None = None, url: str = "http://prometheus.test/graph",
                     fingerprint: str = "f00d") -> httpx.Response:
    alert = {"status": "firing", "labels": {"alertname": name, "service": service, "severity": "page",
                                            **(labels or {})},
             "annotations": {"summary": summary}, "startsAt": "2026-11-30T04:59:39.968Z",
             "endsAt": "0001-01-01T00:00:00Z", "generatorURL": url, "fingerprint": fingerprint}
    body = {"receiver": "opsroom", "status": "firing", "alerts": [alert], "version": "4", "groupLabels": {},
            "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://127.0.0.1:9093",
            "groupKey": "{}", "truncatedAlerts": 0}
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(f"{base}/api/v1/alerts/prometheus", json=body,
                                 headers={"Authorization": f"Bearer {AM_TOKEN}"})


async def run_kick(served: Served, service: str) -> int:
    token = await token_for(served.rt, "you")
    async with httpx.AsyncClient(base_url=served.base, timeout=10,
                                 headers={"Authorization": f"Bearer {token}"}) as api:
        started = await api.post("/api/v1/runbooks/kick/run", json={"params": {"service": service}})
        assert started.status_code == 202, started.text
        number: int = started.json()["id"]
        async with asyncio.timeout(20):
            while (await api.get(f"/api/v1/executions/{number}")).json()["status"] not in ("succeeded", "failed"):
                await asyncio.sleep(0.1)
    return number


async def first_load(client: httpx.AsyncClient, path: str) -> tuple[int, int, httpx.Response]:
    """(bytes of HTML + every stylesheet it links, as decoded; the same as sent on the wire)."""
    page = await client.get(path, headers={"Accept-Encoding": "gzip"})
    assert page.status_code == 200, page.text
    size, wire = len(page.content), page.num_bytes_downloaded
    sheets = re.findall(r'<link rel="stylesheet" href="([^"]+)"', page.text)
    assert sheets, "the page loads its stylesheet"
    for href in sheets:
        css = await client.get(href, headers={"Accept-Encoding": "gzip"})
        assert css.status_code == 200
        size, wire = size + len(css.content), wire + css.num_bytes_downloaded
    # Nothing else loads: no script, no image, no font.
    assert "<script" not in page.text and "<img" not in page.text and "@import" not in page.text
    return size, wire, page


async def test_a_viewer_sees_state_plot_alerts_and_runs_in_under_30_kb(tmp_path: Path) -> None:
    async with site(tmp_path) as served:
        now = time.time()
        # web-http: a day of 10-minute results, CRITICAL for an hour at 06:00 ago, one slow answer.
        await feed(served.rt, "web-http", day(now, state=lambda i: "CRITICAL" if 108 <= i < 114 else "OK",
                                               latency=lambda i: 4000.0 if i == 60 else 20.0 + i % 5))
        await feed(served.rt, "web-tcp", day(now, step=300, latency=lambda i: 1.0 + i % 3))
        await feed(served.rt, "db-cmd", day(now))
        assert (await post_alert(served.base, service="web")).status_code == 200
        assert (await post_alert(served.base, service="db", name="DiskFull", fingerprint="d1")).status_code == 200
        mine, other = await run_kick(served, "web"), await run_kick(served, "db")

        dev = await login(served.base, "dev", PASSWORDS["dev"])  # a viewer: read-only
        try:
            size, wire, page = await first_load(dev, "/services/web")
            html = page.text
            assert "text/html" in page.headers["content-type"]
            assert "PRODUCTION · PROD" in html and "<title>[PROD] web" in html
            assert "Web front" in html and 'class="status OK"' in html and "CRITICAL" in html  # alert: CRITICAL
            # The plot: one inline SVG, a polyline per check with points, a state band with the outage.
            svg = re.search(r"<svg xmlns=\"http://www.w3.org/2000/svg\".*?</svg>", html, re.S)
            assert svg, html
            lines = re.findall(r'<polyline points="([^"]+)"', svg.group(0))
            assert len(lines) == 2 and all(len(pts.split()) >= 100 for pts in lines), lines
            assert 'fill="#c62828"><title>CRITICAL</title>' in svg.group(0)
            assert 'role="img"' in svg.group(0) and "web: latency and state over the last 24 h" in svg.group(0)
            # Open alerts of this service only; runs on this service only, linked to their page.
            assert "#1 HighLatency" in html and "p99 above 500 ms" in html and "DiskFull" not in html
            assert f'href="/executions/{mine}"' in html and f'href="/executions/{other}"' not in html
            assert "kick" in html and "succeeded" in html
            assert size <= FIRST_LOAD_LIMIT, f"first load is {size} bytes"
            print(f"\nfirst load of /services/web: {size} bytes decoded, {wire} bytes on the wire")
            # An alias finds it, at one address; an unknown name says what it might be.
            alias = await dev.get("/services/frontend")
            assert alias.status_code == 303 and alias.headers["location"] == "/services/web"
            unknown = await dev.get("/services/wbe")
            assert unknown.status_code == 404 and "did you mean &#39;web&#39;?" in unknown.text, unknown.text
            assert "text/html" in unknown.headers["content-type"]
            # A test service is not marked production.
            db = await dev.get("/services/db")
            assert db.status_code == 200 and "PRODUCTION" not in db.text and "DiskFull" in db.text
        finally:
            await dev.aclose()


async def test_not_logged_in_goes_to_the_login_page_and_comes_back(tmp_path: Path) -> None:
    async with site(tmp_path) as served, httpx.AsyncClient(base_url=served.base, timeout=10) as anonymous:
        resp = await anonymous.get("/services/web")
        assert resp.status_code == 303 and resp.headers["location"] == "/login?next=%2Fservices%2Fweb"
        assert "web-http" not in resp.text


async def test_check_output_with_markup_is_text_on_the_page(tmp_path: Path) -> None:
    async with site(tmp_path) as served:
        now = time.time()
        await feed(served.rt, "web-http", [(now - 120, "OK", 5.0, "OK"),
                                           (now - 60, "CRITICAL", 9.0, "CRITICAL - <script>alert(1)</script>")])
        dev = await login(served.base, "dev", PASSWORDS["dev"])
        try:
            page = await dev.get("/services/web")
            assert page.status_code == 200
            assert "<script" not in page.text
            assert "CRITICAL - &lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        finally:
            await dev.aclose()


async def test_the_page_renders_at_390_px_in_chromium_with_its_plot(tmp_path: Path) -> None:
    """Acceptance 4."""
    assert os.path.exists(CHROMIUM), "make test installs Debian's chromium"
    async with site(tmp_path) as served:
        now = time.time()
        await feed(served.rt, "web-http", day(now, state=lambda i: "WARNING" if 40 <= i < 50 else "OK"))
        await feed(served.rt, "web-tcp", day(now, latency=lambda i: 3.0 + i % 4))
        assert (await post_alert(served.base, service="web", summary="a rather long summary " * 8)).status_code == 200
        await run_kick(served, "web")
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            try:
                page = await browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
                errors: list[str] = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                await page.goto(f"{served.base}/services/web")
                await expect(page).to_have_url(re.compile(r"/login"))
                await page.fill("#username", "dev")
                await page.fill("#password", PASSWORDS["dev"])
                await page.click("button[type=submit]")
                await expect(page).to_have_url(re.compile(r"/services/web$"))
                plot = page.locator("figure.plot svg")
                await expect(plot).to_be_visible()
                await expect(page.locator(".prod")).to_contain_text("PRODUCTION")
                await expect(page.locator("figure.plot svg polyline")).to_have_count(2)
                box = await plot.bounding_box()
                assert box is not None and box["width"] >= 300 and box["height"] >= 120, box
                assert box["x"] >= 0 and box["x"] + box["width"] <= 390, box
                # Nothing on the page is wider than the phone: no sideways scroll.
                width = await page.evaluate("document.documentElement.scrollWidth")
                assert width <= 390, width
                # The axis labels are drawn, at a size a person can read (>= 8 px).
                label = page.locator("figure.plot svg text", has_text="now")
                text_box = await label.bounding_box()
                assert text_box is not None and text_box["height"] >= 8, text_box
                assert not [e for e in errors if "Content Security Policy" in e], errors
                ARTIFACTS.mkdir(exist_ok=True)
                shot = tmp_path / "service-web-390.png"
                await page.screenshot(path=str(shot), full_page=True)
                await page.screenshot(path=str(ARTIFACTS / "service-web-390x844.png"), full_page=True)
                assert shot.stat().st_size > 10_000
            finally:
                await browser.close()


@pytest.mark.parametrize("store_rt", ["sqlite", "postgresql"], indirect=True)
async def test_history_is_downsampled_by_the_store_keeping_the_worst(store_rt: Runtime) -> None:
    """A day of results every 20 s (4,320) comes back as at most points_per_check buckets, each with
    its worst state and slowest answer: one CRITICAL result and one 9 s answer are not averaged away."""
    from opsroom.access.identity import Actor, permissions_for
    from opsroom.checks.history import points_per_check, service_history
    from opsroom.checks.monitor import Monitor

    rt = store_rt
    rt.settings.check_result_ok_interval = 0  # keep every result, as a busy check's would be
    rt.settings.check_result_retention = 10_000
    rt.monitor = Monitor(rt)
    now = time.time()
    spike, outage = now - 7200, now - 3600
    points = [(now - 86400 + 10 + i * 20, "OK", 10.0 + i % 7, "OK") for i in range(4320)]
    points += [(spike, "OK", 9000.0, "OK - slow"), (outage, "CRITICAL", 12.0, "CRITICAL - down")]
    await feed(rt, "svc-cmd", points)
    viewer = Actor("dev", "web", frozenset({"viewer"}), permissions_for(["viewer"]))
    view = await service_history(rt, actor=viewer, service="svc")
    got = view["history"]["svc-cmd"]
    assert 250 <= len(got) <= points_per_check(1) == 300, len(got)
    assert sum(p["results"] for p in got) == 4322  # every result counted, none lost to the grouping
    assert [p["at"] for p in got] == sorted(p["at"] for p in got)
    assert max(p["latency_ms"] for p in got) == 9000.0
    assert [p["state"] for p in got].count("CRITICAL") == 1
    crit = next(p for p in got if p["state"] == "CRITICAL")
    assert abs(crit["at"] - outage) <= view["bucket_s"]
    assert view["state"] in ("OK", "CRITICAL") and view["checks"][0]["check"] == "svc-cmd"
    assert view["executions"] == []  # no runbook of this catalog names a service
