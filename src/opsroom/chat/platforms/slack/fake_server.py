"""A local Slack for tests and demos: the Web API methods and the Socket Mode wire opsroom uses.

It speaks Slack's documented formats (https://api.slack.com/apis/connections/socket,
https://api.slack.com/methods): Bearer tokens checked per method (app-level token for
apps.connections.open, bot or user tokens for the rest), `{"ok": false, "error": ...}` for
refusals, HTTP 429 with Retry-After past a configurable per-channel rate, Socket Mode
envelopes that must be acknowledged, `events_api` message events with event_id (redelivered
with retry_attempt), `interactive` block_actions payloads, and request-URL clicks signed with
the signing secret. It can be stopped and started again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

TEAM = "T0OPSROOM"


@dataclass
class User:
    id: str
    name: str
    token: str
    is_bot: bool = False
    bot_id: str | None = None


@dataclass
class FakeSlack:
    # Test credentials of this fake only: nothing real is ever accepted or sent.
    app_token: str = "xapp-1-A0OPS-test-app-token"  # noqa: S105
    bot_token: str = "xoxb-test-bot-token"  # noqa: S105
    signing_secret: str = "test-signing-secret"  # noqa: S105
    channels: dict[str, str] = field(default_factory=lambda: {"C0OPS": "ops", "C0OTHER": "random"})
    rate_per_s: float | None = None  # chat.postMessage per channel; None: unlimited
    host: str = "127.0.0.1"
    port: int = 0

    def __post_init__(self) -> None:
        self.users: dict[str, User] = {}
        self.bot = self.add_user("U0BOT", "opsroom", self.bot_token, is_bot=True, bot_id="B0OPS")
        for name in ("alice", "bob", "carol"):
            self.add_user(f"U0{name.upper()}", name, f"xoxp-test-{name}")
        self.other_bot = self.add_user("U0OTHERBOT", "otherbot", "xoxb-test-other", is_bot=True, bot_id="B0OTHER")
        self.posts: list[dict[str, Any]] = []  # every message posted, people's and bots'
        self.acks: set[str] = set()
        self.sockets: list[web.WebSocketResponse] = []
        self.connections = 0
        self.refusals: list[str] = []
        self._tickets: set[str] = set()
        self._last_post: dict[str, float] = {}
        self._events: list[dict[str, Any]] = []  # events_api payloads as first sent
        self._ts = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()

    def add_user(self, uid: str, name: str, token: str, *, is_bot: bool = False, bot_id: str | None = None) -> User:
        user = User(uid, name, token, is_bot, bot_id)
        self.users[uid] = user
        return user

    def user(self, name: str) -> User:
        return next(u for u in self.users.values() if u.name == name)

    # --- serving ---------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return self.url + "/api/"

    async def start(self) -> None:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/link/", self._link)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if not self.port:
            self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        for ws in list(self.sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
        self.sockets.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def running(self) -> bool:
        return self._runner is not None

    # --- Web API ---------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if request.content_type == "application/json":
            args: dict[str, Any] = await request.json()
        else:
            args = dict(await request.post())
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"}, status=404)
        if method == "apps.connections.open":
            if token != self.app_token:
                self._refuse(method)
                return web.json_response({"ok": False, "error": "invalid_auth"})
            caller = None
        else:
            caller = next((u for u in self.users.values() if u.token == token), None)
            if caller is None:
                self._refuse(method)
                return web.json_response({"ok": False, "error": "invalid_auth" if token else "not_authed"})
        result: web.Response = await handler(caller, args)
        return result

    async def _m_auth_test(self, caller: User, args: dict[str, Any]) -> web.Response:
        return _ok({"url": "https://opsroom-test.slack.com/", "team": "opsroom-test", "user": caller.name,
                    "team_id": TEAM, "user_id": caller.id, **({"bot_id": caller.bot_id} if caller.bot_id else {})})

    async def _m_apps_connections_open(self, caller: None, args: dict[str, Any]) -> web.Response:
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        return _ok({"url": f"ws://{self.host}:{self.port}/link/?ticket={ticket}&app_id=A0OPS"})

    async def _m_users_info(self, caller: User, args: dict[str, Any]) -> web.Response:
        user = self.users.get(str(args.get("user")))
        if user is None:
            return web.json_response({"ok": False, "error": "user_not_found"})
        return _ok({"user": {"id": user.id, "team_id": TEAM, "name": user.name, "real_name": user.name.title(),
                             "is_bot": user.is_bot, "deleted": False,
                             "profile": {"display_name": user.name, "real_name": user.name.title(),
                                         **({"bot_id": user.bot_id} if user.bot_id else {})}}})

    async def _m_conversations_list(self, caller: User, args: dict[str, Any]) -> web.Response:
        channels = [{"id": cid, "name": name, "is_channel": True, "is_member": True}
                    for cid, name in self.channels.items()]
        return _ok({"channels": channels, "response_metadata": {"next_cursor": ""}})

    async def _m_conversations_members(self, caller: User, args: dict[str, Any]) -> web.Response:
        if args.get("channel") not in self.channels:
            return web.json_response({"ok": False, "error": "channel_not_found"})
        return _ok({"members": sorted(self.users), "response_metadata": {"next_cursor": ""}})

    async def _m_chat_postMessage(self, caller: User, args: dict[str, Any]) -> web.Response:
        channel = str(args.get("channel", ""))
        if channel not in self.channels:
            return web.json_response({"ok": False, "error": "channel_not_found"})
        if not args.get("text") and not args.get("blocks"):
            return web.json_response({"ok": False, "error": "no_text"})
        now = time.monotonic()
        if self.rate_per_s and caller.is_bot:
            wait = self._last_post.get(channel, -1e9) + 1 / self.rate_per_s - now
            if wait > 0:
                self._refuse("ratelimited")
                return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                         headers={"Retry-After": str(max(1, round(wait + 0.49)))})
            self._last_post[channel] = now
        blocks = args.get("blocks")
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        message: dict[str, Any] = {"type": "message", "user": caller.id, "text": str(args.get("text", "")),
                                   "ts": ts, "team": TEAM, "channel": channel}
        if blocks:
            message["blocks"] = blocks
        if caller.bot_id:
            message["bot_id"] = caller.bot_id
        self.posts.append(message)
        self._changed.set()
        await self.event(message)
        return _ok({"channel": channel, "ts": ts, "message": {k: v for k, v in message.items() if k != "channel"}})

    # --- Socket Mode -----------------------------------------------------

    async def _link(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            return web.Response(status=401, text="invalid ticket")
        self._tickets.discard(ticket)  # a URL from apps.connections.open works once
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        self.connections += 1
        await ws.send_json({"type": "hello", "num_connections": len(self.sockets),
                            "debug_info": {"host": "fake-slack", "approximate_connection_time": 18060},
                            "connection_info": {"app_id": "A0OPS"}})
        self._changed.set()
        try:
            async for frame in ws:
                if frame.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(frame.data)
                    if data.get("envelope_id"):
                        self.acks.add(str(data["envelope_id"]))
                        self._changed.set()
        finally:
            with contextlib.suppress(ValueError):
                self.sockets.remove(ws)
        return ws

    async def _send(self, envelope: dict[str, Any]) -> str:
        envelope_id = str(uuid.uuid4())
        envelope = {"envelope_id": envelope_id, **envelope}
        for ws in list(self.sockets)[:1]:  # Slack picks one of the app's connections
            await ws.send_json(envelope)
        return envelope_id

    async def event(self, message: dict[str, Any]) -> str:
        """Send a message event to the app, as Slack does for every message in its channels."""
        event_id = f"Ev{uuid.uuid4().hex[:10].upper()}"
        payload = {"token": "verification-token-unused", "team_id": TEAM, "api_app_id": "A0OPS",
                   "event": {**message, "event_ts": message["ts"], "channel_type": "channel"},
                   "type": "event_callback", "event_id": event_id, "event_time": int(time.time()),
                   "authorizations": [{"team_id": TEAM, "user_id": self.bot.id, "is_bot": True}]}
        self._events.append(payload)
        return await self._send({"type": "events_api", "payload": payload, "accepts_response_payload": False,
                                 "retry_attempt": 0, "retry_reason": ""})

    async def redeliver(self, index: int = -1, *, person_only: bool = True) -> str:
        """Send an event again with the same event_id, as Slack retries one it thinks was lost."""
        events = [e for e in self._events if not (person_only and e["event"].get("bot_id"))]
        payload = events[index]
        return await self._send({"type": "events_api", "payload": payload, "accepts_response_payload": False,
                                 "retry_attempt": 1, "retry_reason": "timeout"})

    async def membership(self, person: str, *, joined: bool, channel: str = "C0OPS") -> str:
        """A person joins or leaves a channel: member_joined_channel / member_left_channel."""
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        kind = "member_joined_channel" if joined else "member_left_channel"
        event = {"type": kind, "user": self.user(person).id, "channel": channel, "channel_type": "C", "team": TEAM,
                 "event_ts": ts}
        payload = {"team_id": TEAM, "api_app_id": "A0OPS", "event": event, "type": "event_callback",
                   "event_id": f"Ev{uuid.uuid4().hex[:10].upper()}", "event_time": int(time.time())}
        return await self._send({"type": "events_api", "payload": payload, "accepts_response_payload": False,
                                 "retry_attempt": 0, "retry_reason": ""})

    async def disconnect(self, reason: str = "refresh_requested") -> None:
        for ws in list(self.sockets):
            await ws.send_json({"type": "disconnect", "reason": reason,
                                "debug_info": {"host": "fake-slack"}})

    # --- people and clicks ----------------------------------------------------

    async def say(self, person: str, text: str, channel: str = "C0OPS") -> None:
        """A person (or the other bot) posts with their own token through the Web API."""
        async with aiohttp.ClientSession() as http:
            async with http.post(self.api_url + "chat.postMessage", json={"channel": channel, "text": text},
                                 headers={"Authorization": f"Bearer {self.user(person).token}"}) as resp:
                data = await resp.json()
                assert data.get("ok"), data

    async def bot_message(self, text: str, channel: str = "C0OPS") -> None:
        """A legacy integration's post: subtype bot_message, a bot_id and no user."""
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        message = {"type": "message", "subtype": "bot_message", "text": text, "ts": ts, "username": "otherbot",
                   "bot_id": "B0OTHER", "channel": channel}
        self.posts.append(message)
        await self.event(message)

    def click_payload(self, person: str, approval_id: int, decision: str, channel: str = "C0OPS") -> dict[str, Any]:
        user = self.user(person)
        block = f"approval-{approval_id}"
        message: dict[str, Any] = next((p for p in reversed(self.posts)
                                        if any(b.get("block_id") == block for b in p.get("blocks", []))), {})
        return {"type": "block_actions", "team": {"id": TEAM, "domain": "opsroom-test"},
                "user": {"id": user.id, "username": user.name, "name": user.name, "team_id": TEAM},
                "api_app_id": "A0OPS", "token": "verification-token-unused", "trigger_id": uuid.uuid4().hex,
                "container": {"type": "message", "message_ts": message.get("ts", ""), "channel_id": channel},
                "channel": {"id": channel, "name": self.channels.get(channel, "")}, "message": message,
                "actions": [{"action_id": f"opsroom_{decision}", "block_id": f"approval-{approval_id}",
                             "type": "button", "value": f"{approval_id}:{decision}",
                             "text": {"type": "plain_text", "text": decision.title()},
                             "action_ts": f"{time.time():.6f}"}]}

    async def click_socket(self, person: str, approval_id: int, decision: str, channel: str = "C0OPS") -> str:
        payload = self.click_payload(person, approval_id, decision, channel)
        return await self._send({"type": "interactive", "payload": payload, "accepts_response_payload": False})

    def signed(self, body: bytes, *, secret: str | None = None, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        base = b"v0:" + stamp.encode() + b":" + body
        sig = "v0=" + hmac.new((secret or self.signing_secret).encode(), base, hashlib.sha256).hexdigest()
        return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": sig,
                "Content-Type": "application/x-www-form-urlencoded"}

    async def click_http(self, url: str, person: str, approval_id: int, decision: str, *,
                         forge: bool = False, channel: str = "C0OPS") -> int:
        """POST the click to the app's request URL, signed as Slack signs (forge: a wrong secret)."""
        body = urlencode({"payload": json.dumps(self.click_payload(person, approval_id, decision, channel))}).encode()
        headers = self.signed(body, secret="not-the-signing-secret" if forge else None)
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=body, headers=headers) as resp:
                return resp.status

    # --- what tests read -------------------------------------------------

    def bot_posts(self, channel: str = "C0OPS") -> list[dict[str, Any]]:
        return [p for p in self.posts if p.get("bot_id") == self.bot.bot_id and p.get("channel") == channel]

    def _refuse(self, what: str) -> None:
        self.refusals.append(what)
        self._changed.set()

    async def wait(self, predicate: Any, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


def _ok(data: dict[str, Any]) -> web.Response:
    return web.json_response({"ok": True, **data})
