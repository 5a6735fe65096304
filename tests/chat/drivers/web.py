"""The web room as a conformance platform: people are opsroom users on WebSockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from tests.chat.driver import Driver
from tests.factories import PASSWORDS

USERS = {"alice": "you", "bob": "boss", "carol": "dev"}


class _Person:
    def __init__(self, base: str, user: str) -> None:
        self.base, self.user = base, user
        self.http: httpx.AsyncClient | None = None
        self.ws: ClientConnection | None = None
        self.reader: asyncio.Task[None] | None = None
        self.frames: list[dict[str, Any]] = []
        self.last_id = 0

    async def login(self) -> None:
        self.http = httpx.AsyncClient(base_url=self.base)
        page = await self.http.get("/login")
        csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        await self.http.post("/login", data={"username": self.user, "password": PASSWORDS[self.user],
                                             "csrf": csrf, "next": "/"})

    async def open(self) -> None:
        assert self.http is not None
        cookie = "; ".join(f"{k}={v}" for k, v in self.http.cookies.items())
        url = self.base.replace("http", "ws") + "/rooms/ops/ws" + (f"?after={self.last_id}" if self.last_id else "")
        self.ws = await connect(url, additional_headers={"Cookie": cookie})
        self.reader = asyncio.get_running_loop().create_task(self._read(self.ws))

    async def _read(self, ws: ClientConnection) -> None:
        with contextlib.suppress(Exception):
            async for raw in ws:
                frame = json.loads(raw)
                self.frames.append(frame)
                if frame.get("type") == "message" and isinstance(frame.get("id"), int):
                    self.last_id = max(self.last_id, frame["id"])

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            with contextlib.suppress(BaseException):
                await self.reader
        self.ws = self.reader = None

    def token(self, approval_id: int) -> str | None:
        for frame in reversed(self.frames):
            if frame.get("type") == "approvals":
                for item in frame["items"]:
                    if item["id"] == approval_id:
                        return item.get("token")
        return None


class WebDriver(Driver):
    name = "web"
    buttons = True
    streams = True

    def __init__(self) -> None:
        self.people_: dict[str, _Person] = {}
        self.watcher: _Person | None = None

    async def start(self, tmp: Path) -> None:
        return None

    async def attach(self, served: Any) -> None:
        for person, user in USERS.items():
            p = _Person(served.base, user)
            await p.login()
            await p.open()
            self.people_[person] = p
        self.watcher = self.people_["carol"]  # reads the room as a viewer would
        await asyncio.sleep(0.1)

    async def stop(self) -> None:
        for p in self.people_.values():
            await p.close()
            if p.http is not None:
                await p.http.aclose()

    def platform_item(self) -> dict[str, Any]:
        return {}

    @property
    def channel(self) -> str:
        return "ops"

    def account_id(self, person: str) -> str:
        return f"web:{USERS[person]}"

    async def say(self, person: str, text: str) -> None:
        p = self.people_[person]
        frame: dict[str, Any] = {"type": "say", "text": text}
        words = text.split()
        if len(words) == 2 and words[0] in ("approve", "deny") and words[1].isdigit():
            frame["token"] = await self._token(p, int(words[1]))
        assert p.ws is not None
        await p.ws.send(json.dumps(frame))

    async def bot_says(self, text: str) -> None:
        raise NotImplementedError("the web room has no other bots")

    def received(self) -> list[str]:
        assert self.watcher is not None
        return [f["text"] for f in self.watcher.frames if f.get("type") == "message" and f.get("author") == "opsroom"]

    def all_lines(self) -> list[str]:
        assert self.watcher is not None
        return [f["text"] for f in self.watcher.frames if f.get("type") == "message"]

    def streamed(self) -> list[str]:
        assert self.watcher is not None
        return [f["text"] for f in self.watcher.frames if f.get("type") == "output"]

    async def _token(self, p: _Person, approval_id: int) -> str | None:
        """The page's token for a request, once its approvals frame has arrived (a person
        decides what the page shows them)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while p.token(approval_id) is None:
                    await asyncio.sleep(0.02)
        return p.token(approval_id)

    async def click(self, person: str, approval_id: int, decision: str, *, forge: bool = False) -> None:
        p = self.people_[person]
        token = "forged" if forge else await self._token(p, approval_id)
        assert p.ws is not None
        await p.ws.send(json.dumps({"type": "decide", "id": approval_id, "decision": decision, "token": token}))

    async def server_down(self) -> None:
        for p in self.people_.values():
            await p.close()  # the phone's link drops

    async def server_up(self) -> None:
        for p in self.people_.values():
            await p.open()  # and comes back, saying the last id it saw


DRIVER = WebDriver
