"""AlertmanagerApi against a real Alertmanager 0.25 on loopback, and what that Alertmanager's
webhook really sends (firing, a repeat, resolved), saved as fixtures for the receiver's tests."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from opsroom.alerts.alertmanager_api import (
    AlertmanagerApi,
    AlertmanagerError,
    SilenceNotFound,
    SilenceRejected,
    api_matchers,
    parse_time,
)
from opsroom.alerts.matchers import parse_matchers
from opsroom.errors import Conflict, Invalid, NotFound
from tests.alerts.alertmanager import (
    TOKEN,
    Alertmanager,
    firing,
    push_alerts,
    resolved,
    running_alertmanager,
    silences,
    webhook_receiver,
)
from tests.factories import free_port

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "alerts"
SERVICE_B = {"name": "service", "value": "service-b", "isRegex": False, "isEqual": True}


@pytest_asyncio.fixture
async def am(alertmanager_factory: Callable[..., Awaitable[Alertmanager]]) -> Alertmanager:
    # Nothing listens on the webhook: these tests push no alerts.
    return await alertmanager_factory(f"http://127.0.0.1:{free_port()}/hook")


@pytest_asyncio.fixture
async def api(am: Alertmanager) -> AsyncIterator[AlertmanagerApi]:
    client = AlertmanagerApi(am.url)
    yield client
    await client.close()


async def test_a_silence_is_created_read_back_and_expired(api: AlertmanagerApi, am: Alertmanager) -> None:
    now = time.time()
    sid = await api.create_silence(matchers=[SERVICE_B], starts_at=now, ends_at=now + 3600,
                                   created_by="you", comment="deploying service-b")
    got = await api.get_silence(sid)
    assert got["id"] == sid
    assert got["status"]["state"] == "active"
    assert got["matchers"] == [SERVICE_B]
    assert (got["createdBy"], got["comment"]) == ("you", "deploying service-b")
    assert parse_time(got["endsAt"]) == pytest.approx(now + 3600, abs=0.002)
    assert [s["id"] for s in await api.list_silences()] == [sid]

    assert await api.expire_silence(sid) is True
    assert (await api.get_silence(sid))["status"]["state"] == "expired"
    assert parse_time((await api.get_silence(sid))["endsAt"]) <= time.time()
    # A second expire is harmless: nothing raised, nothing new in Alertmanager, still expired.
    assert await api.expire_silence(sid) is False
    listed = await silences(am.url)
    assert [(s["id"], s["status"]["state"]) for s in listed] == [(sid, "expired")]


async def test_expiring_an_unknown_silence_is_not_an_error(api: AlertmanagerApi) -> None:
    assert await api.expire_silence("00000000-0000-4000-8000-000000000000") is False


async def test_a_regex_matcher_and_a_future_silence(api: AlertmanagerApi) -> None:
    now = time.time()
    matchers = api_matchers(parse_matchers('alertname=~"High.*", team!="db"'))
    sid = await api.create_silence(matchers=matchers, starts_at=now + 600, ends_at=now + 1200,
                                   created_by="you", comment="maintenance window")
    got = await api.get_silence(sid)
    assert got["status"]["state"] == "pending"
    assert sorted(got["matchers"], key=lambda m: m["name"]) == [
        {"name": "alertname", "value": "High.*", "isRegex": True, "isEqual": True},
        {"name": "team", "value": "db", "isRegex": False, "isEqual": False},
    ]
    assert parse_time(got["startsAt"]) == pytest.approx(now + 600, abs=0.002)
    assert await api.expire_silence(sid) is True
    assert (await api.get_silence(sid))["status"]["state"] == "expired"


async def test_a_silence_alertmanager_refuses_says_what_it_said(api: AlertmanagerApi, am: Alertmanager) -> None:
    now = time.time()
    with pytest.raises(SilenceRejected) as bad_times:
        await api.create_silence(matchers=[SERVICE_B], starts_at=now, ends_at=now - 60, created_by="you", comment="x")
    assert isinstance(bad_times.value, Invalid)
    text = str(bad_times.value)
    assert am.url in text and "HTTP 400" in text and "start time must be before end time" in text
    assert bad_times.value.status == 400 and bad_times.value.hint

    bad_regex = {"name": "alertname", "value": "(", "isRegex": True, "isEqual": True}
    with pytest.raises(SilenceRejected, match=r"invalid regular expression"):
        await api.create_silence(matchers=[bad_regex], starts_at=now, ends_at=now + 60, created_by="you", comment="x")
    with pytest.raises(SilenceRejected, match=r"HTTP 422.*at least 1"):
        await api.create_silence(matchers=[], starts_at=now, ends_at=now + 60, created_by="you", comment="x")
    assert await api.list_silences() == []


async def test_an_unknown_or_malformed_silence_id(api: AlertmanagerApi) -> None:
    with pytest.raises(SilenceNotFound) as missing:
        await api.get_silence("00000000-0000-4000-8000-000000000000")
    assert isinstance(missing.value, NotFound) and "HTTP 404" in str(missing.value)
    for bad in ("nope", "../../-/reload", ""):
        with pytest.raises(Invalid, match="is not a silence id"):
            await api.get_silence(bad)
        with pytest.raises(Invalid, match="is not a silence id"):
            await api.expire_silence(bad)


async def test_an_unreachable_alertmanager_is_a_clear_error() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = AlertmanagerApi(f"http://am-user:am-secret-pw@127.0.0.1:{port}/", timeout_s=2)
    try:
        for call in (api.list_silences(), api.create_silence(matchers=[SERVICE_B], starts_at=0, ends_at=60,
                                                             created_by="you", comment="x")):
            with pytest.raises(AlertmanagerError) as err:
                await call
            assert isinstance(err.value, Conflict)
            assert str(err.value.message).startswith(f"could not reach Alertmanager at {url}: ")
            assert err.value.hint and "Alertmanager URL" in err.value.hint
            assert "Traceback" not in str(err.value) and "am-secret-pw" not in str(err.value)
    finally:
        await api.close()


def test_a_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(Invalid, match="not an http"):
        AlertmanagerApi("127.0.0.1:9093")


def _check_shape(payload: dict[str, Any], status: str) -> dict[str, Any]:
    assert payload["version"] == "4"
    assert payload["status"] == status
    assert payload["receiver"] == "opsroom"
    assert payload["groupLabels"] == {"alertname": "HighLatency", "service": "service-b"}
    assert payload["truncatedAlerts"] == 0
    assert set(payload) == {"receiver", "status", "alerts", "groupLabels", "commonLabels", "commonAnnotations",
                            "externalURL", "version", "groupKey", "truncatedAlerts"}
    [alert] = payload["alerts"]
    assert set(alert) == {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
    assert alert["status"] == status
    return dict(alert)


async def test_the_webhook_alertmanager_sends_firing_repeat_resolved() -> None:
    labels = {"alertname": "HighLatency", "service": "service-b", "severity": "page"}
    annotations = {"summary": "service-b p99 latency above 500 ms", "runbook_url": "http://runbooks.test/latency"}
    async with webhook_receiver() as rx, running_alertmanager(rx.url, group_wait="0s", group_interval="100ms",
                                                              repeat_interval="1s") as am:
        alert = firing(labels, annotations=annotations, starts_at=time.time() - 30,
                       generator_url="http://prometheus.test/graph?g0.expr=latency")
        pushed = time.monotonic()
        await push_alerts(am.url, [alert])
        first = await rx.wait_for(1, timeout=5)
        second = await rx.wait_for(2, timeout=5)
        # Prometheus re-sends a firing alert every evaluation; that changes nothing Alertmanager sends.
        await push_alerts(am.url, [alert])
        resolving = time.monotonic()
        await push_alerts(am.url, [resolved(alert)])
        last = await rx.wait_for(3, timeout=5)
        repeat_s, resolve_s, first_s = second.at - first.at, last.at - resolving, first.at - pushed

        one, two, three = first.payload, second.payload, last.payload
        a1, a2, a3 = _check_shape(one, "firing"), _check_shape(two, "firing"), _check_shape(three, "resolved")
        assert first.headers["Authorization"] == f"Bearer {TOKEN}"
        assert first.headers["User-Agent"].startswith("Alertmanager/")
        assert one["externalURL"] == am.url
        group_key = '{}:{alertname="HighLatency", service="service-b"}'
        assert one["groupKey"] == two["groupKey"] == three["groupKey"] == group_key
        assert a1["fingerprint"] == a2["fingerprint"] == a3["fingerprint"]
        assert a1["startsAt"] == a2["startsAt"] == a3["startsAt"]
        # Go's RFC3339Nano drops trailing zeros (".340Z" comes back ".34Z"): the same instant, not the same text.
        assert parse_time(a1["startsAt"]) == pytest.approx(parse_time(alert["startsAt"]), abs=1e-6)
        assert a1["labels"] == labels and a1["annotations"] == annotations
        assert one["commonLabels"] == labels and one["commonAnnotations"] == annotations
        assert a1["endsAt"] == "0001-01-01T00:00:00Z"  # a firing alert's endsAt is Go's zero time
        assert parse_time(a3["endsAt"]) == pytest.approx(parse_time(resolved(alert)["endsAt"]), abs=1)
        assert a1["generatorURL"] == alert["generatorURL"]

        # group_wait 0s: the first is sent at once; the repeat at the first 100 ms tick after 1 s.
        assert first_s < 0.5
        assert 0.95 <= repeat_s < 1.6
        assert resolve_s < 0.6
        print(f"\nAlertmanager timings: first {first_s * 1000:.0f} ms after the push, repeat after "
              f"{repeat_s * 1000:.0f} ms, resolved {resolve_s * 1000:.0f} ms after the resolving push")

    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name, payload in (("am_real_firing.json", one), ("am_real_resolved.json", three)):
        path = FIXTURES / name
        # Regenerated from a real run when missing; a saved one must keep the shape checked above.
        if not path.exists():
            path.write_text(json.dumps(payload, indent=2) + "\n")
    saved_firing = json.loads((FIXTURES / "am_real_firing.json").read_text())
    saved_resolved = json.loads((FIXTURES / "am_real_resolved.json").read_text())
    _check_shape(saved_firing, "firing")
    _check_shape(saved_resolved, "resolved")
    assert saved_firing["alerts"][0]["fingerprint"] == a1["fingerprint"]  # the fingerprint is the labels' hash


async def test_an_oversized_or_foreign_answer_is_refused_not_read_whole() -> None:
    """Something else on the Alertmanager URL (a proxy's HTML page, a hostile endless body)."""
    from aiohttp import web

    async def huge(_request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(_request)
        chunk = b"[" + b" " * (1 << 20)
        with contextlib.suppress(ConnectionError):
            for _ in range(64):  # 64 MiB offered; the client hangs up after 4 MiB
                await resp.write(chunk)
        return resp

    async def html(_request: web.Request) -> web.Response:
        return web.Response(text="<html>sign in</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/api/v2/silences", huge)
    app.router.add_get("/api/v2/silence/{sid}", html)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    api = AlertmanagerApi(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(AlertmanagerError, match=r"more than 4194304 bytes"):
            await api.list_silences()
        foreign = r"did not show silence .*HTTP 200: <html>sign in</html>, not Alertmanager's JSON"
        with pytest.raises(AlertmanagerError, match=foreign):
            await api.get_silence("00000000-0000-4000-8000-000000000000")
    finally:
        await api.close()
        await runner.cleanup()
