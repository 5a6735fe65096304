"""A local Mattermost for tests and demos: the REST v4 and WebSocket endpoints opsroom uses.

Documented formats (https://api.mattermost.com/): Bearer tokens on REST, the socket's
`authentication_challenge` answered `{"status": "OK", "seq_reply": N}`, a `hello` event,
then `posted` events whose data.post is the post as a JSON *string*, each with the
connection's next `seq`. POST /api/v4/posts answers 201 with the post, or 429 with
Retry-After and X-Ratelimit-* past a configurable rate. Interactive buttons: posts keep each
action's integration (url, context) server-side and send clients the post without it; a
click makes the server POST {user_id, channel_id, post_id, trigger_id, context, ...} to the
integration URL, as Mattermost does. It can be stopped and started again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

TEAM_ID = "t" * 26
TEAM_NAME = "opsroom"


def mm_id(seed: str) -> str:
    """A 26-character id shaped like Mattermost's."""
    return hashlib.sha256(seed.encode()).hexdigest()[:26]


@dataclass
class User:
    id: str
    username: str
    token: str
    is_bot: bool = False


@dataclass
class FakeMattermost:
    bot_token: str = "mm-test-bot-token"  # noqa: S105 - this fake's own test credential
    channels: dict[str, str] = field(default_factory=lambda: {mm_id("ops"): "ops", mm_id("town"): "town-square"})
    rate_per_s: float | None = None  # POST /api/v4/posts per user; None: unlimited
    host: str = "127.0.0.1"
    port: int = 0

    def __post_init__(self) -> None:
        self.users: dict[str, User] = {}
        self.bot = self.add_user("opsroom", self.bot_token, is_bot=True)
        for name in ("alice", "bob", "carol"):
            self.add_user(name, f"mm-test-{name}-token")
        self.other_bot = self.add_user("otherbot", "mm-test-other-bot-token", is_bot=True)
        self.posts: list[dict[str, Any]] = []  # as stored, integrations included
        self.sockets: list[tuple[web.WebSocketResponse, User]] = []
        self.seqs: dict[int, int] = {}
        self.connections = 0
        self.refusals: list[str] = []
        self._last: dict[str, float] = {}
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()

    def add_user(self, username: str, token: str, *, is_bot: bool = False) -> User:
        user = User(mm_id("user:" + username), username, token, is_bot)
        self.users[user.id] = user
        return user

    def user(self, username: str) -> User:
        return next(u for u in self.users.values() if u.username == username)

    @property
    def ops(self) -> str:
        return mm_id("ops")

    # --- serving ---------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_get("/api/v4/websocket", self._websocket)
        app.router.add_get("/api/v4/users/{user_id}", self._get_user)
        app.router.add_post("/api/v4/posts", self._create_post)
        app.router.add_get("/api/v4/teams/name/{team}/channels/name/{channel}", self._channel_by_name)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()
        if not self.port:
            self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        for ws, _ in list(self.sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
        self.sockets.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _caller(self, request: web.Request) -> User | None:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return next((u for u in self.users.values() if token and u.token == token), None)

    # --- REST ------------------------------------------------------------

    async def _get_user(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        if caller is None:
            self._refuse("users")
            return _error(401, "api.context.session_expired.app_error", "Invalid or expired session")
        uid = request.match_info["user_id"]
        user = caller if uid == "me" else self.users.get(uid)
        if user is None:
            return _error(404, "app.user.missing_account.const", "Unable to find the user.")
        return web.json_response({"id": user.id, "username": user.username, "is_bot": user.is_bot,
                                  "first_name": "", "last_name": "", "nickname": "", "roles": "system_user",
                                  "create_at": 1700000000000, "update_at": 1700000000000, "delete_at": 0})

    async def _channel_by_name(self, request: web.Request) -> web.Response:
        if self._caller(request) is None:
            self._refuse("channels")
            return _error(401, "api.context.session_expired.app_error", "Invalid or expired session")
        name = request.match_info["channel"]
        found = next((cid for cid, n in self.channels.items() if n == name), None)
        if request.match_info["team"] != TEAM_NAME or found is None:
            return _error(404, "app.channel.get_by_name.missing.app_error", "Channel does not exist.")
        return web.json_response({"id": found, "name": name, "display_name": name.title(), "team_id": TEAM_ID,
                                  "type": "O", "delete_at": 0})

    async def _create_post(self, request: web.Request) -> web.Response:
        caller = self._caller(request)
        if caller is None:
            self._refuse("posts")
            return _error(401, "api.context.session_expired.app_error", "Invalid or expired session")
        now = time.monotonic()
        if self.rate_per_s:
            wait = self._last.get(caller.id, -1e9) + 1 / self.rate_per_s - now
            if wait > 0:
                self._refuse("ratelimited")
                return web.json_response({"message": "limit exceeded", "status_code": 429}, status=429, headers={
                    "Retry-After": str(max(1, round(wait + 0.49))), "X-Ratelimit-Limit": str(self.rate_per_s),
                    "X-Ratelimit-Remaining": "0", "X-Ratelimit-Reset": str(max(1, round(wait + 0.49)))})
            self._last[caller.id] = now
        body = await request.json()
        channel = str(body.get("channel_id", ""))
        if channel not in self.channels:
            return _error(403, "api.context.permissions.app_error", "You do not have the appropriate permissions.")
        millis = int(time.time() * 1000)
        props = dict(body.get("props") or {})
        if caller.is_bot:
            props["from_bot"] = "true"
        post = {"id": mm_id(uuid.uuid4().hex), "create_at": millis, "update_at": millis, "edit_at": 0,
                "delete_at": 0, "is_pinned": False, "user_id": caller.id, "channel_id": channel, "root_id": "",
                "original_id": "", "message": str(body.get("message", "")), "type": "", "props": props,
                "hashtags": "", "pending_post_id": "", "reply_count": 0, "metadata": {}}
        self.posts.append(post)
        self._changed.set()
        await self.broadcast(post, sender=caller)
        return web.json_response(client_view(post), status=201)

    # --- WebSocket -------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        user: User | None = None
        try:
            async with asyncio.timeout(10):
                first = await ws.receive_json()
            if first.get("action") == "authentication_challenge":
                token = str((first.get("data") or {}).get("token", ""))
                user = next((u for u in self.users.values() if u.token == token), None)
            if user is None:
                self._refuse("websocket")
                await ws.send_json({"status": "FAIL", "seq_reply": first.get("seq"),
                                    "error": {"id": "api.web_socket_router.not_authenticated.app_error"}})
                await ws.close()
                return ws
            await ws.send_json({"status": "OK", "seq_reply": first.get("seq")})
        except (TimeoutError, ValueError, TypeError):
            await ws.close()
            return ws
        self.seqs[id(ws)] = 0
        self.sockets.append((ws, user))
        self.connections += 1
        await self._send(ws, "hello", {"server_version": "9.11.0.fake"}, {"user_id": user.id})
        self._changed.set()
        try:
            async for _frame in ws:
                pass  # user_typing and the like: nothing the fake needs
        finally:
            with contextlib.suppress(ValueError):
                self.sockets.remove((ws, user))
        return ws

    async def _send(self, ws: web.WebSocketResponse, event: str, data: dict[str, Any],
                    broadcast: dict[str, Any]) -> None:
        seq = self.seqs.get(id(ws), 0)
        self.seqs[id(ws)] = seq + 1
        with contextlib.suppress(Exception):
            await ws.send_json({"event": event, "data": data,
                                "broadcast": {"omit_users": None, "user_id": "", "channel_id": "", "team_id": "",
                                              **broadcast}, "seq": seq})

    async def broadcast(self, post: dict[str, Any], *, sender: User) -> None:
        data = {"channel_display_name": self.channels[post["channel_id"]],
                "channel_name": self.channels[post["channel_id"]], "channel_type": "O",
                "post": json.dumps(client_view(post)), "sender_name": f"@{sender.username}", "team_id": TEAM_ID}
        for ws, _user in list(self.sockets):
            await self._send(ws, "posted", data, {"channel_id": post["channel_id"]})

    # --- people and clicks ----------------------------------------------------

    async def say(self, person: str, text: str, channel: str | None = None) -> None:
        async with aiohttp.ClientSession() as http:
            async with http.post(self.url + "/api/v4/posts", json={"channel_id": channel or self.ops, "message": text},
                                 headers={"Authorization": f"Bearer {self.user(person).token}"}) as resp:
                assert resp.status == 201, await resp.text()

    async def redeliver(self) -> None:
        """Broadcast the last person's post again (same post id), as after a socket hiccup."""
        post = next(p for p in reversed(self.posts) if not self.users[p["user_id"]].is_bot)
        await self.broadcast(post, sender=self.users[post["user_id"]])

    async def membership(self, person: str, *, joined: bool, channel: str | None = None) -> None:
        """A person is added to or removed from a channel: user_added / user_removed events."""
        user = self.user(person)
        data = {"user_id": user.id, "team_id": TEAM_ID} if joined else {"user_id": user.id, "remover_id": user.id}
        for ws, _user in list(self.sockets):
            await self._send(ws, "user_added" if joined else "user_removed", data,
                             {"channel_id": channel or self.ops})

    def action(self, approval_id: int, decision: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the bot's post, the action) of a request's button, as the server stored them."""
        for post in reversed(self.posts):
            for attachment in post["props"].get("attachments") or []:
                for action in attachment.get("actions") or []:
                    context = (action.get("integration") or {}).get("context") or {}
                    if context.get("approval_id") == approval_id and action.get("id") == decision:
                        return post, action
        raise LookupError(f"no {decision} button for request #{approval_id}")

    async def click(self, person: str, approval_id: int, decision: str, *,
                    context: dict[str, Any] | None = None, url: str | None = None) -> int:
        """The person presses the button: Mattermost POSTs the action to its integration URL with
        the clicker's user_id and the stored context (or, for attackers' tests, another one)."""
        post, action = self.action(approval_id, decision)
        integration = action["integration"]
        user = self.user(person)
        body = {"user_id": user.id, "user_name": user.username, "channel_id": post["channel_id"],
                "channel_name": self.channels[post["channel_id"]], "team_id": TEAM_ID, "team_domain": TEAM_NAME,
                "post_id": post["id"], "trigger_id": uuid.uuid4().hex, "type": "", "data_source": "",
                "context": integration["context"] if context is None else context}
        async with aiohttp.ClientSession() as http:
            async with http.post(url or integration["url"], json=body) as resp:
                return resp.status

    # --- what tests read -------------------------------------------------

    def bot_posts(self, channel: str | None = None) -> list[dict[str, Any]]:
        return [p for p in self.posts if p["user_id"] == self.bot.id and p["channel_id"] == (channel or self.ops)]

    def _refuse(self, what: str) -> None:
        self.refusals.append(what)
        self._changed.set()

    async def wait(self, predicate: Any, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


def client_view(post: dict[str, Any]) -> dict[str, Any]:
    """What clients see: Mattermost strips action integrations (url, context) from posts."""
    shown = copy.deepcopy(post)
    for attachment in shown["props"].get("attachments") or []:
        for action in attachment.get("actions") or []:
            action.pop("integration", None)
    return shown


def _error(status: int, err_id: str, message: str) -> web.Response:
    return web.json_response({"id": err_id, "message": message, "detailed_error": "", "request_id": uuid.uuid4().hex,
                              "status_code": status}, status=status)
