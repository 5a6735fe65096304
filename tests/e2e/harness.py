"""Start a real `opsroom demo` server and talk to its room like a phone would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.factories import free_port

DEMO_PASSWORDS = {"you": "you-demo-pw", "boss": "boss-demo-pw", "dev": "dev-demo-pw"}


@dataclass
class Demo:
    data: Path
    port: int
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def service_port(self, name: str) -> int:
        services = json.loads((self.data / "demo" / "services.json").read_text())
        port: int = services[name]["port"]
        return port

    def service_pid(self, name: str) -> int:
        return int((self.data / "demo" / f"{name}.pid").read_text())

    def kill_service(self, name: str) -> None:
        """An outage: SIGKILL the service's process, as a crash would."""
        os.kill(self.service_pid(name), signal.SIGKILL)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_demo(tmp: Path, *, auto: bool = False, interval: str = "1s", extra: list[str] | None = None,
               data: Path | None = None, env_extra: dict[str, str] | None = None) -> Demo:
    env = {"OPSROOM_DEMO_PORT_B": str(free_port()), "OPSROOM_DEMO_PORT_C": str(free_port()),
           "OPSROOM_DEMO_INTERVAL": interval, "OPSROOM_DEMO_RETRY": "0.5s",
           "OPSROOM_DEMO_AUTO": "true" if auto else "false", **(env_extra or {})}
    return start_server(tmp, ["demo", *(extra or [])], data=data, env_extra=env)


def start_server(tmp: Path, args: list[str], *, data: Path | None = None, port: int | None = None,
                 env_extra: dict[str, str] | None = None) -> Demo:
    """Run `python -m opsroom ARGS --port P --data D` and wait until it answers /healthz."""
    data = data or tmp / "data"
    port = port or free_port()
    env = {**os.environ, **(env_extra or {})}
    log = tmp / f"server-{port}-{time.monotonic_ns()}.log"
    proc = subprocess.Popen([sys.executable, "-m", "opsroom", *args, "--port", str(port), "--data", str(data)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    demo = Demo(data, port, proc, env, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"opsroom exited with {proc.returncode}:\n{demo.output()}")
        try:
            if httpx.get(f"{demo.base}/healthz", timeout=0.5).status_code == 200:
                return demo
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    demo.stop()
    raise RuntimeError(f"opsroom did not answer within 30 s:\n{demo.output()}")


def cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opsroom", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, input=stdin)


async def login(base: str, user: str, password: str) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=base, timeout=10)
    page = await client.get("/login")
    csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    resp = await client.post("/login", data={"username": user, "password": password, "csrf": csrf, "next": "/"})
    assert resp.status_code == 303 and resp.headers["location"] == "/", resp.text
    assert "opsroom_session" in client.cookies
    return client


@dataclass
class RoomClient:
    """One person's WebSocket into a room, with everything received kept in order."""

    user: str
    ws: ClientConnection
    http: httpx.AsyncClient | None = None  # the logged-in session, closed with the room
    frames: list[dict[str, Any]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _new: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def open(cls, base: str, http: httpx.AsyncClient, user: str, room: str = "ops") -> RoomClient:
        cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
        ws = await connect(base.replace("http", "ws") + f"/rooms/{room}/ws",
                           additional_headers={"Cookie": cookie}, open_timeout=10)
        client = cls(user, ws, http)
        client._task = asyncio.get_running_loop().create_task(client._read())
        return client

    async def _read(self) -> None:
        # A close the server chose (4401, 1009...) ends the reading; tests look at ws.close_code.
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                self.frames.append(json.loads(raw))
                self._new.set()

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == "message"]

    async def say(self, text: str) -> None:
        frame: dict[str, Any] = {"type": "say", "text": text}
        # `approve N` typed in the web room carries the request's decision token, as the page does.
        decision = re.match(r"\s*(?:approve|deny)\s+#?(\d+)", text, re.IGNORECASE)
        if decision:
            shown = [f for f in self.frames if f["type"] == "approvals"]
            token = next((a.get("token") for a in (shown[-1]["items"] if shown else [])
                          if a["id"] == int(decision.group(1))), None)
            if token:
                frame["token"] = token
        await self.ws.send(json.dumps(frame))

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0,
                       start: int = 0) -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for f in self.frames[start:]:
                        if predicate(f):
                            return f
                    self._new.clear()
                    await self._new.wait()
        except TimeoutError:
            texts = [f.get("text") or f for f in self.frames]
            raise AssertionError(f"{self.user} never received the frame; got:\n" +
                                 "\n".join(map(str, texts))) from None

    async def ask(self, text: str, contains: str, timeout: float = 20.0) -> dict[str, Any]:
        mark = len(self.frames)
        await self.say(text)
        return await self.wait_for(lambda f: f["type"] == "message" and f["kind"] == "bot"
                                   and contains in f["text"], timeout, start=mark)

    async def close(self) -> None:
        await self.ws.close()
        if self._task is not None:
            self._task.cancel()
        if self.http is not None:
            await self.http.aclose()


async def join(demo: Demo, user: str, room: str = "ops") -> RoomClient:
    """Log in as a demo user and open the room, as a person on a phone does."""
    http = await login(demo.base, user, DEMO_PASSWORDS[user])
    return await RoomClient.open(demo.base, http, user, room)


@dataclass
class Served:
    """A real `opsroom serve` on its own catalog, with an API token per user."""

    server: Demo
    catalog: Path
    tokens: dict[str, str]

    @property
    def base(self) -> str:
        return self.server.base

    def api(self, user: str, *, timeout: float = 30) -> httpx.Client:
        return httpx.Client(base_url=self.base + "/api/v1", timeout=timeout,
                            headers={"Authorization": f"Bearer {self.tokens[user]}"})


@contextlib.contextmanager
def served_with_tokens(tmp: Path, catalog: Path, users: tuple[str, ...], *,
                       env_extra: dict[str, str] | None = None) -> Iterator[Served]:
    """Serve `catalog`, make a token for each of `users`, stop it after."""
    server = start_server(tmp, ["serve", "--catalog", str(catalog)], env_extra=env_extra)
    try:
        data = ["--data", str(server.data), "--catalog", str(catalog)]
        tokens = {}
        for user in users:
            made = cli("token", "create", user, *data)
            assert made.returncode == 0, made.stderr
            tokens[user] = made.stdout.strip()
        yield Served(server, catalog, tokens)
    finally:
        server.stop()
