"""A real Alertmanager (Debian's prometheus-alertmanager 0.25) on loopback for the alert tests,
and what a test needs around it: pushing alerts the way Prometheus does, reading silences, and a
tiny webhook receiver that records what Alertmanager sends.

Its config, storage and log live in a temp dir of its own (never /etc, never the system service);
it runs as a child of the test process with clustering off (`--cluster.listen-address=`, so no
gossip and no settle wait) and one route to one webhook receiver, `send_resolved: true`, with a
bearer token. Blocking on purpose (like tests/chat/servers), so it serves any event loop; the
async context manager runs start and stop in a thread. It is ready in ~50 ms.

Timings measured with 0.25 on loopback (the defaults here: group_wait 0s, group_interval 100ms,
repeat_interval 1s): ready ~50 ms after exec; first webhook 3-6 ms after the push; repeat
1004-1006 ms after the first; resolved 95-99 ms after the push with endsAt in the past.
group_interval and repeat_interval may be any duration above zero (0 is refused at load: "...
cannot be zero"; 50ms/50ms loads). Alertmanager only sends at a group's group_interval ticks, so
a repeat comes at the first tick strictly after repeat_interval (700ms/1s -> every 1.4 s,
50ms/50ms -> every 100 ms) and a resolve at the next tick. group_wait only delays an alert whose
startsAt is newer than group_wait (an older one is sent at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio
import yaml
from aiohttp import web

from opsroom.alerts.alertmanager_api import rfc3339
from tests.chat.servers import ChildServer
from tests.factories import free_port

BINARY = "/usr/bin/prometheus-alertmanager"
START_TIMEOUT_S = 15.0
TOKEN = "am-test-token-0123456789abcdef"


class Alertmanager(ChildServer):
    """One Alertmanager on 127.0.0.1:port sending every alert to `webhook_url`."""
    LOGS = ("alertmanager.log",)

    def __init__(self, webhook_url: str, *, token: str = TOKEN, group_wait: str = "0s",
                 group_interval: str = "100ms", repeat_interval: str = "1s",
                 group_by: tuple[str, ...] = ("alertname", "service"), root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="opsroom-alertmanager-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.settings = {"group_wait": group_wait, "group_interval": group_interval,
                         "repeat_interval": repeat_interval, "group_by": list(group_by)}
        self.config = self.root / "alertmanager.yml"
        self.write_config(webhook_url)
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, webhook_url: str) -> None:
        self.webhook_url = webhook_url
        config = {
            "route": {"receiver": "opsroom", **self.settings},
            "receivers": [{"name": "opsroom", "webhook_configs": [{
                "url": webhook_url, "send_resolved": True,
                "http_config": {"authorization": {"type": "Bearer", "credentials": self.token}},
            }]}],
        }
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        log = (self.root / "alertmanager.log").open("ab")
        self.proc = subprocess.Popen(
            [BINARY, f"--config.file={self.config}", f"--storage.path={self.root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             f"--web.external-url={self.url}", "--cluster.listen-address=", "--log.level=warn"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"alertmanager exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"alertmanager not ready on {self.url} after {START_TIMEOUT_S}s:\n{self.log()}")
            time.sleep(0.02)


@contextlib.asynccontextmanager
async def running_alertmanager(webhook_url: str, **options: Any) -> AsyncIterator[Alertmanager]:
    """`async with running_alertmanager(url, repeat_interval="2s") as am:` started, then closed."""
    am = Alertmanager(webhook_url, **options)
    try:
        await asyncio.to_thread(am.start)
        yield am
    finally:
        await asyncio.to_thread(am.close)


@pytest_asyncio.fixture
async def alertmanager_factory() -> AsyncIterator[Callable[..., Awaitable[Alertmanager]]]:
    """`am = await alertmanager_factory(webhook_url, repeat_interval="2s")`; all closed after the test."""
    started: list[Alertmanager] = []

    async def start(webhook_url: str, **options: Any) -> Alertmanager:
        am = Alertmanager(webhook_url, **options)
        started.append(am)
        await asyncio.to_thread(am.start)
        return am

    yield start
    for am in started:
        await asyncio.to_thread(am.close)


# --- alerts in, as Prometheus sends them ---------------------------------------

def firing(labels: dict[str, str], *, annotations: dict[str, str] | None = None, starts_at: float | None = None,
           ends_at: float | None = None, generator_url: str = "http://prometheus.test/graph") -> dict[str, Any]:
    """One alert as Prometheus posts it while it fires (Prometheus sets endsAt a few intervals ahead)."""
    alert: dict[str, Any] = {"labels": labels, "annotations": annotations or {},
                             "startsAt": rfc3339(starts_at or time.time()), "generatorURL": generator_url}
    if ends_at is not None:
        alert["endsAt"] = rfc3339(ends_at)
    return alert


def resolved(alert: dict[str, Any], *, ends_at: float | None = None) -> dict[str, Any]:
    """The same alert once Prometheus sees it resolved: endsAt now (or in the past)."""
    return {**alert, "endsAt": rfc3339(ends_at or time.time() - 0.001)}


async def push_alerts(am_url: str, alerts: list[dict[str, Any]]) -> None:
    """POST /api/v2/alerts as Prometheus does; fails the test on anything but 200."""
    async with aiohttp.ClientSession() as http, http.post(f"{am_url}/api/v2/alerts", json=alerts,
                                                          timeout=aiohttp.ClientTimeout(total=5)) as resp:
        assert resp.status == 200, f"{resp.status}: {(await resp.text())[:300]}"


async def get_json(am_url: str, path: str) -> Any:
    """GET one of Alertmanager's v2 read endpoints (`/api/v2/silences`, `/api/v2/alerts`)."""
    async with aiohttp.ClientSession() as http, http.get(f"{am_url}{path}",
                                                         timeout=aiohttp.ClientTimeout(total=5)) as resp:
        assert resp.status == 200, f"{resp.status}: {(await resp.text())[:300]}"
        return await resp.json()


async def silences(am_url: str) -> list[dict[str, Any]]:
    return list(await get_json(am_url, "/api/v2/silences"))


# --- a webhook receiver that records what Alertmanager sends ----------------------

@dataclass
class Delivery:
    at: float  # time.monotonic() on arrival
    headers: dict[str, str]
    payload: dict[str, Any]


@dataclass
class WebhookReceiver:
    """An aiohttp app on 127.0.0.1 that answers 200 and keeps every POST, in order."""

    path: str = "/api/v1/alerts/prometheus"
    deliveries: list[Delivery] = field(default_factory=list)
    port: int = 0
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.deliveries.append(Delivery(time.monotonic(), dict(request.headers), body))
        self._arrived.set()
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = self.port or free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, count: int, *, timeout: float = 10.0) -> Delivery:
        """The count-th delivery (1-based), waiting up to `timeout` seconds for it."""
        deadline = time.monotonic() + timeout
        while len(self.deliveries) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"{len(self.deliveries)} webhook deliveries after {timeout}s, wanted {count}"
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)
        return self.deliveries[count - 1]


@contextlib.asynccontextmanager
async def webhook_receiver(path: str = "/api/v1/alerts/prometheus") -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver(path)
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()
