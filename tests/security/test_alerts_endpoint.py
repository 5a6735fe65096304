"""The alerts endpoint and what it feeds, by attack class: injection into rooms through alert
text, oversized and overfull bodies, odd source names, a source's credentials used on another,
regex denial of service through silences, ids past the store's integers, and server-side
request forgery through a payload's URLs. A whole opsroom served on loopback; the room is the
fake platform."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from sqlalchemy import select

from opsroom.alerts.models import SilenceRow
from opsroom.rooms.models import RoomMessageRow
from tests.alerts.alertmanager import running_alertmanager
from tests.alerts.alertmanager import silences as am_silences
from tests.alerts.helpers import (
    AM_TOKEN,
    FIXTURES,
    GRAFANA_TOKEN,
    alert_rows,
    am_alert,
    am_body,
    audited,
    catalog,
    post_am,
)
from tests.chat.drivers.fake import FakeDriver
from tests.chat.harness import Served, said_after, serve
from tests.factories import free_port, token_for

AM = {"Authorization": f"Bearer {AM_TOKEN}"}


async def _silence_rows(served: Served) -> list[SilenceRow]:
    async with served.rt.read() as s:
        return list((await s.execute(select(SilenceRow))).scalars())


# --- injection into rooms through alert text ---------------------------------------------------

EVIL = ("@everyone @here <!channel> <@U0123> **bold** <b>html</b> [click](http://evil.test)"
        "\r\n[PROD] alert resolved: #1 HighLatency on service-b resolved after 1 s"
        "\n\x1b[31mred\x1b[0m \x1b]8;;http://evil.test\x1b\\link\x1b]8;;\x1b\\ \u202eevil\u202c \x07end")


def _neutral(text: str) -> None:
    for bad in ("@everyone", "@here", "<!channel>", "<@U0123>", "\x1b", "\u202e", "\r", "\x07"):
        assert bad not in text, (bad, text)


async def test_alert_text_reaches_rooms_neutralised_and_on_one_line(tmp_path: Path) -> None:
    driver = FakeDriver()
    async with serve(tmp_path, driver, **catalog(tmp_path), rooms=[
            {"name": "ops", "bind": [f"{driver.name}:{driver.channel}"]}, {"name": "web-ops"}]) as served:
        await driver.attach(served)
        labels = {"alertname": "Evil\nALERT", "service": "service-b", "severity": "page\n@here", "team": "@everyone"}
        r = await post_am(served, [am_alert(labels, summary=EVIL)])
        assert r.status_code == 200 and r.json()["fired"] == 1, r.text
        await served.settle()
        (notice,) = [t for t in driver.received() if "ALERT firing" in t]
        _neutral(notice)
        assert len(notice.splitlines()) == 1, notice  # no fake bot line after a newline
        assert "red" in notice and "link" in notice and "end" in notice  # the text stays, its tricks go
        (row,) = await alert_rows(served)
        for line in ("alerts", f"alert {row.id}", f"ack {row.id}"):
            said = await said_after(served, driver, "alice", line)
            _neutral(said)
            assert not [x for x in said.splitlines() if x.startswith("[PROD]")], said
            lines = {"alerts": 2, f"alert {row.id}": 3}.get(line, 1)  # `alert N`: line, state, labels
            assert len(said.splitlines()) == lines, said
        async with served.rt.read() as s:
            stored = [m.text for m in (await s.execute(select(RoomMessageRow).where(
                RoomMessageRow.room == "web-ops"))).scalars()]
        # The web room shows the text it stored (as a text node: markup stays text), so that text
        # must already be neutral.
        (web_notice,) = [t for t in stored if "ALERT firing" in t]
        _neutral(web_notice)
        assert "\n" not in web_notice and "<b>html</b>" in web_notice, web_notice  # shown as text there


async def test_answers_about_health_keep_an_alert_on_one_line(tmp_path: Path) -> None:
    driver = FakeDriver()
    async with serve(tmp_path, driver, **catalog(tmp_path)) as served:
        await driver.attach(served)
        labels = {"alertname": "Evil\n[PROD] System A is healthy", "service": "service-b", "severity": "page\nx"}
        await post_am(served, [am_alert(labels, summary=EVIL)])
        for line in ("is service-b running", "health system-a", "status"):
            said = await said_after(served, driver, "alice", line)
            _neutral(said)
            # The answer's own lines only: the alert's name adds none, so no forged "[PROD] System A
            # is healthy" line, and its name sits on the line that names the alert.
            assert not [x for x in said.splitlines() if x.startswith("[PROD] System A is healthy")], (line, said)
            if line != "health system-a":  # health counts a service's alerts, it does not name them
                assert [x for x in said.splitlines() if "alert #1 evil" in x.lower()], (line, said)


# --- size -----------------------------------------------------------------------------------


async def test_oversized_body_is_413_and_too_many_alerts_422(tmp_path: Path) -> None:
    async with serve(tmp_path, None, **catalog(tmp_path)) as served, httpx.AsyncClient(timeout=30) as client:
        url = f"{served.base}/api/v1/alerts/prometheus"
        big = b'{"version": "4", "alerts": [], "pad": "' + b"x" * (2 << 20) + b'"}'
        r = await client.post(url, content=big, headers=AM)
        assert r.status_code == 413 and "too large" in r.json()["detail"], r.text[:300]
        many = am_body([am_alert({"alertname": "A", "i": str(i)}) for i in range(1001)])
        r = await client.post(url, json=many, headers=AM)
        assert r.status_code == 422 and "1001 alerts in one request; at most 1000" in r.json()["detail"], r.text
        assert await alert_rows(served) == []


# --- source names in the URL, and credentials of one source on another -------------------------

ODD_NAMES = ["..%2F..%2Fetc%2Fpasswd", "..", "%2e%2e", "prometheus%00", "Prometheus", "prometheus%20",
             "prometheus.", "%E2%80%AEsuehtemorp", "x" * 3000, "%0d%0aX-Injected:%20yes"]


@pytest.mark.parametrize("name", ODD_NAMES)
async def test_odd_source_names_are_404_without_traceback_and_cut_short(tmp_path: Path, name: str) -> None:
    body = (FIXTURES / "am_real_firing.json").read_bytes()
    async with serve(tmp_path, None, **catalog(tmp_path)) as served, httpx.AsyncClient(timeout=20) as client:
        r = await client.post(f"{served.base}/api/v1/alerts/{name}", content=body, headers=AM)
        assert r.status_code == 404, r.text[:300]
        assert "Traceback" not in r.text and "x-injected" not in {k.lower() for k in r.headers}
        assert len(r.text) < 600, r.text[:300]
        assert await alert_rows(served) == []


async def test_one_sources_credentials_do_not_open_another(tmp_path: Path) -> None:
    am_body_bytes = (FIXTURES / "am_real_firing.json").read_bytes()
    grafana = (FIXTURES / "grafana_firing.json").read_bytes()
    async with serve(tmp_path, None, **catalog(tmp_path)) as served, httpx.AsyncClient(timeout=20) as client:
        tries = [
            ("grafana-token", grafana, AM),  # Alertmanager's token on Grafana
            ("grafana-hmac", grafana, AM),  # a bearer token where a signature is the credential
            ("grafana-hmac", grafana, {"Authorization": f"Bearer {GRAFANA_TOKEN}"}),
            ("prometheus", am_body_bytes, {"Authorization": f"Bearer {GRAFANA_TOKEN}"}),
            ("monitor", b"{}", AM),
        ]
        for source, body, headers in tries:
            r = await client.post(f"{served.base}/api/v1/alerts/{source}", content=body, headers=headers)
            assert r.status_code == 401, (source, r.text)
        assert await alert_rows(served) == []
        assert await audited(served, "alert.refused", "denied") == len(tries)


# --- regular expression denial of service through silences -------------------------------------

async def test_a_catastrophic_silence_regex_is_refused_and_matching_stays_bounded(tmp_path: Path) -> None:
    driver = FakeDriver()
    async with serve(tmp_path, driver, **catalog(tmp_path)) as served, httpx.AsyncClient(timeout=20) as client:
        await driver.attach(served)
        for pattern in ("(a+)+$", "(a|aa)*b", "(.*)*x", r"(a)\\1", ".*a.*b.*c.*d"):
            said = await said_after(served, driver, "alice", f'silence alertname=~"{pattern}" 1h because dos')
            assert "could take too long" in said, (pattern, said)
        you = {"Authorization": f"Bearer {await token_for(served.rt, 'you')}"}
        r = await client.post(f"{served.base}/api/v1/silences", headers=you,
                              json={"what": 'alertname=~"(a+)+$"', "duration": "1h", "reason": "dos"})
        assert r.status_code == 422 and "could take too long" in r.json()["detail"], r.text
        assert await _silence_rows(served) == []  # checked before the assertion below can hang the loop
        # A plain regex is accepted; an alert with a long label against it is matched at once.
        said = await said_after(served, driver, "alice", 'silence alertname=~"a+b.*" 1h because fine')
        assert "silenced" in said, said
        started = time.monotonic()
        r = await post_am(served, [am_alert({"alertname": "a" * 2000 + "!", "service": "service-b"})])
        assert r.status_code == 200 and r.json()["fired"] == 1
        assert "a+b" in (await said_after(served, driver, "alice", "silences"))
        assert time.monotonic() - started < 2.0


# --- ids past the store's integers ---------------------------------------------------------------

@pytest.mark.parametrize("number", [str(2**31), str(2**63), "9" * 40])
async def test_ids_past_the_store_integers_are_clean_refusals(tmp_path: Path, number: str) -> None:
    driver = FakeDriver()
    async with serve(tmp_path, driver, **catalog(tmp_path)) as served, httpx.AsyncClient(timeout=20) as client:
        await driver.attach(served)
        for verb in ("alert", "ack", "unsilence"):
            said = await said_after(served, driver, "alice", f"{verb} {number}")
            assert "too large" in said and "Traceback" not in said, said
        you = {"Authorization": f"Bearer {await token_for(served.rt, 'you')}"}
        api = f"{served.base}/api/v1"
        for method, path in (("GET", f"alerts/{number}"), ("POST", f"alerts/{number}/ack"),
                             ("DELETE", f"silences/{number}")):
            r = await client.request(method, f"{api}/{path}", headers=you)
            assert r.status_code in (404, 422), (method, path, r.text)
            assert "Traceback" not in r.text


# --- the Alertmanager API is the configured one, never a URL from a payload ----------------------

@asynccontextmanager
async def _counting_server() -> AsyncIterator[tuple[str, list[str]]]:
    """Any request to it is counted: it stands for a URL an attacker put in a payload."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        return web.json_response({"silenceID": "attacker"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_a_payloads_external_url_is_never_contacted(tmp_path: Path) -> None:
    driver = FakeDriver()
    async with running_alertmanager("http://127.0.0.1:9/unset") as am, _counting_server() as (evil, seen), \
            serve(tmp_path, driver, **catalog(tmp_path, api_url=am.url)) as served:
        await driver.attach(served)
        alert = {**am_alert({"alertname": "HighLatency", "service": "service-b"}), "generatorURL": f"{evil}/graph"}
        r = await post_am(served, [alert], external_url=evil)
        assert r.status_code == 200 and r.json()["fired"] == 1, r.text
        (row,) = await alert_rows(served)
        for line in ("silence service-b 1h because deploy", f"ack {row.id}", f"alert {row.id}", "silences"):
            await said_after(served, driver, "alice", line)
        (silence,) = await _silence_rows(served)
        assert [x["api_url"] for x in silence.remote] == [am.url]
        assert "also set in prometheus" in "\n".join(driver.received())
        await said_after(served, driver, "alice", f"unsilence {silence.id}")
        there = {x["id"]: x["status"]["state"] for x in await am_silences(am.url)}
        assert there == {silence.remote[0]["id"]: "expired"}
        await asyncio.sleep(0.2)
        assert seen == []
