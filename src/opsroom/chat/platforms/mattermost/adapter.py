"""Mattermost: events over the WebSocket API, posts and buttons through REST API v4.

The socket (/api/v4/websocket) is authenticated with an `authentication_challenge` carrying
the bot's token; `posted` events carry the post as a JSON string in data.post, and the post id
is the delivery id (a re-broadcast after a reconnect is answered once). Approval requests get
an interactive message attachment with Approve/Deny buttons whose integration URL is
opsroom's /chat/NAME/actions. Mattermost does not sign what it POSTs there, so the button's
context carries an HMAC-SHA256 over (approval id, decision, channel) keyed with the
configured action secret: Mattermost keeps the context server-side (it strips integrations
from posts sent to clients), so only Mattermost can send a context that verifies, and the
clicker is the user_id Mattermost itself fills in. Every server of a cluster takes those clicks
(`listen`); only the holder of `chat:NAME` keeps the socket and posts (`start`).

Written on aiohttp (already a dependency): the Mattermost Python drivers are synchronous
(requests) or thin wrappers around the same two endpoints.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from opsroom.chat.backoff import Backoff, retry_after_s
from opsroom.chat.base import (
    AdapterSink,
    Capabilities,
    ChatAdapter,
    Click,
    DeliveryFailed,
    Incoming,
    Mention,
    Outgoing,
    Person,
    PlatformConfig,
    ended,
)
from opsroom.chat.safe import render
from opsroom.runtime import Runtime

log = structlog.get_logger(__name__)

MAX_ACTION_BODY = 64 * 1024
AUTH_TIMEOUT_S = 10.0
RESOLVE_EVERY_S = 30.0  # a server without the connection looks its TEAM/CHANNEL bindings up at most this often


class MattermostConfig(PlatformConfig):
    url: str  # the server's base URL, e.g. https://chat.example.org
    token: SecretStr  # the bot account's access token
    action_secret: SecretStr  # keys the HMAC in each button's context; any long random string
    # Mattermost's own limiter (RateLimitSettings) defaults to 10 requests/s per client.
    rate_per_s: float = 10.0
    burst: int = 10


class MattermostAdapter(ChatAdapter):
    platform = "mattermost"
    Config = MattermostConfig

    def __init__(self, *, name: str = "mattermost", config: MattermostConfig, rt: Runtime | None = None) -> None:
        self.name = name
        self.config = config
        self.rt = rt
        # Threads, edits and direct messages exist on Mattermost but opsroom does not use them here yet.
        self.capabilities = Capabilities(buttons=True, formatting="markdown", max_chars=16000,  # a post's limit
                                         rate_per_s=config.rate_per_s, burst=config.burst)
        self.base = config.url.rstrip("/")
        self.bot_user_id: str | None = None
        self._sink: AdapterSink | None = None
        self._bound: list[str] = []
        self._ids: dict[str, str] = {}  # channel id -> the binding's text (an id, or TEAM/CHANNEL)
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        # Posts wait here for one worker, in order: the socket keeps being read (and answering
        # pings) while a command runs.
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self._connected = asyncio.Event()
        self._names: dict[str, Person] = {}
        self.reconnects = 0
        self.last_seq = -1
        self._resolved_at = -RESOLVE_EVERY_S

    # --- lifecycle -------------------------------------------------------

    async def listen(self, sink: AdapterSink, channels: list[str]) -> None:
        """Button clicks POSTed to /chat/NAME/actions, on any server: the sink, the channels and
        the REST API for reading (who clicked, which channel a TEAM/CHANNEL is)."""
        if self._http is not None:
            return
        self._sink, self._bound = sink, list(channels)
        self._ids = {c: c for c in channels if "/" not in c}
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        self._worker = asyncio.get_running_loop().create_task(self._work(), name=f"mattermost-in:{self.name}")

    async def start(self, sink: AdapterSink, channels: list[str]) -> None:
        """The WebSocket and sending, on the server holding the connection."""
        await self.listen(sink, channels)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"mattermost:{self.name}")

    async def stop(self) -> None:
        self._connected.clear()
        await ended(self._task)
        self._task = None

    async def close(self) -> None:
        await self.stop()
        await ended(self._worker, session=self._http)
        self._worker = self._http = None

    async def _work(self) -> None:
        while True:
            event = await self._inbox.get()
            try:
                if event.get("event") == "posted":
                    await self._posted(event.get("data") or {})
                else:
                    await self._membership(event)
            except Exception:
                log.exception("mattermost event handling failed", platform=self.name)

    def is_connected(self) -> bool:
        return self._connected.is_set()

    def status(self) -> dict[str, Any]:
        return {"reconnects": self.reconnects}

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.token.get_secret_value()}"}

    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                if self.bot_user_id is None:
                    me = await self._rest("GET", "/api/v4/users/me")
                    self.bot_user_id = str(me["id"])
                await self._resolve_channels()
                await self._socket()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("mattermost connection lost", platform=self.name, error=_describe(exc))
            self._connected.clear()
            self.reconnects += 1
            await backoff.wait()

    async def _resolve_channels(self) -> None:
        """A binding may name the channel as TEAM/CHANNEL (URL names); events and posts use ids."""
        for bound in self._bound:
            if "/" in bound and bound not in self._ids.values():
                team, _, name = bound.partition("/")
                channel = await self._rest("GET", f"/api/v4/teams/name/{quote(team)}/channels/name/{quote(name)}")
                self._ids[str(channel["id"])] = bound

    def _channel_id(self, bound: str) -> str:
        for cid, text in self._ids.items():
            if text == bound:
                return cid
        if "/" in bound:
            raise DeliveryFailed(f"mattermost channel {bound} not found yet")
        return bound

    async def _socket(self) -> None:
        assert self._http is not None
        url = ("ws" + self.base.removeprefix("http")) + "/api/v4/websocket"
        async with self._http.ws_connect(url, heartbeat=30) as ws:
            await ws.send_json({"seq": 1, "action": "authentication_challenge",
                                "data": {"token": self.config.token.get_secret_value()}})
            async with asyncio.timeout(AUTH_TIMEOUT_S):
                while True:
                    reply = await ws.receive_json()
                    if reply.get("seq_reply") == 1:
                        break
            if reply.get("status") != "OK":
                raise ConnectionError("mattermost refused the token on the websocket")
            self._connected.set()
            log.info("mattermost connected", platform=self.name)
            try:
                async for frame in ws:
                    if frame.type != aiohttp.WSMsgType.TEXT:
                        break
                    data = json.loads(frame.data)
                    if isinstance(data.get("seq"), int):
                        self.last_seq = data["seq"]
                    if data.get("event") in ("posted", "user_added", "user_removed"):
                        try:
                            self._inbox.put_nowait(data)
                        except asyncio.QueueFull:
                            log.warning("mattermost events dropped: the room is not keeping up", platform=self.name)
            finally:
                self._connected.clear()

    async def _rest(self, verb: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        if self._http is None:
            raise DeliveryFailed("mattermost adapter is not started")
        async with self._http.request(verb, self.base + path, json=body, headers=self._auth) as resp:
            if resp.status == 429:
                after = resp.headers.get("Retry-After") or resp.headers.get("X-Ratelimit-Reset")
                raise DeliveryFailed(f"mattermost {path}: rate limited", retry_after=retry_after_s(after))
            if resp.status >= 500:
                raise DeliveryFailed(f"mattermost {path}: HTTP {resp.status}")
            if resp.status >= 400:
                raise DeliveryFailed(f"mattermost {path}: HTTP {resp.status}", transient=resp.status == 401)
            data: dict[str, Any] = await resp.json(content_type=None)
            return data

    # --- out -------------------------------------------------------------

    async def deliver(self, out: Outgoing) -> None:
        if not self._connected.is_set():
            raise DeliveryFailed("mattermost is not connected", transient=True)
        text = render(out, self.capabilities, mention=self._mention)
        channel = self._channel_id(out.channel)
        post: dict[str, Any] = {"channel_id": channel, "message": text}
        if out.approval_id is not None:
            post["props"] = {"attachments": [self._approval_attachment(channel, out.approval_id)]}
        try:
            await self._rest("POST", "/api/v4/posts", post)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryFailed(f"mattermost posts: {_describe(exc)}") from exc

    def _approval_attachment(self, channel: str, approval_id: int) -> dict[str, Any]:
        url = f"{self.rt.settings.web_url if self.rt else ''}/chat/{self.name}/actions"

        def button(label: str, decision: str, style: str) -> dict[str, Any]:
            context = {"approval_id": approval_id, "decision": decision, "channel_id": channel,
                       "sig": self.sign(approval_id, decision, channel)}
            return {"id": decision, "name": label, "type": "button", "style": style,
                    "integration": {"url": url, "context": context}}

        return {"text": f"Request #{approval_id}", "actions": [button("Approve", "approve", "success"),
                                                                button("Deny", "deny", "danger")]}

    def sign(self, approval_id: int, decision: str, channel: str) -> str:
        message = f"opsroom-action:{self.name}:{approval_id}:{decision}:{channel}".encode()
        return hmac.new(self.config.action_secret.get_secret_value().encode(), message, hashlib.sha256).hexdigest()

    def _mention(self, m: Mention) -> str:
        # Mattermost mentions by username: the one it told us for this account id, else the
        # name the account was linked with.
        known = self._names.get(m.account_id)
        name = (known.display_name if known else m.display_name).lstrip("@")
        return f"@{name}" if name.replace(".", "").replace("-", "").replace("_", "").isalnum() else ""

    async def identify(self, account_id: str) -> Person:
        known = self._names.get(account_id)
        if known is not None:
            return known
        try:
            user = await self._rest("GET", f"/api/v4/users/{account_id}")
        except (DeliveryFailed, aiohttp.ClientError, TimeoutError):
            return Person(account_id, account_id, is_bot=account_id == self.bot_user_id)
        person = Person(account_id, str(user.get("username") or account_id),
                        is_bot=bool(user.get("is_bot")) or account_id == self.bot_user_id)
        self._names[account_id] = person
        return person

    async def presence(self, channel: str) -> list[Person]:
        return []  # Mattermost's channel members are not who is there now; statuses are not asked

    # --- in --------------------------------------------------------------

    async def _posted(self, data: dict[str, Any]) -> None:
        try:
            post = json.loads(data.get("post") or "{}")
        except json.JSONDecodeError:
            return
        channel = self._ids.get(str(post.get("channel_id", "")))
        if self._sink is None or channel is None or post.get("type"):
            return  # system posts (joins, header changes) have a type; people's have none
        props = post.get("props") or {}
        account = str(post.get("user_id", ""))
        if account == self.bot_user_id:
            return  # our own post, broadcast back to us
        is_bot = (account == self.bot_user_id or str(props.get("from_bot", "")).lower() == "true"
                  or bool(props.get("from_webhook")))
        person = await self.identify(account)
        if is_bot and not person.is_bot:
            person = Person(person.platform_id, person.display_name, is_bot=True)
        await self._sink.message(self, Incoming(channel=channel, text=str(post.get("message", "")), author=person,
                                                delivery_id=str(post.get("id") or "") or None))

    async def _membership(self, event: dict[str, Any]) -> None:
        """Someone added to or removed from a bound channel: the room hears they joined or left."""
        channel = self._ids.get(str((event.get("broadcast") or {}).get("channel_id") or ""))
        account = str((event.get("data") or {}).get("user_id") or "")
        if self._sink is None or channel is None or not account or account == self.bot_user_id:
            return
        await self._sink.presence(self, channel, await self.identify(account), event.get("event") == "user_added")

    def routes(self) -> list[Any]:
        return [Route("/actions", self._actions, methods=["POST"])]

    async def _actions(self, request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_ACTION_BODY:
                await self._refuse("mattermost action body too large")
                return JSONResponse({"error": "too large"}, status_code=413)
        try:
            payload = json.loads(body)
            assert isinstance(payload, dict)
            context = payload.get("context") or {}
            assert isinstance(context, dict)
        except Exception:
            await self._refuse("mattermost action that is not JSON")
            return JSONResponse({"error": "bad request"}, status_code=400)
        if self._task is None and str(payload.get("channel_id") or "") not in self._ids:
            await self._resolve_lazily()  # a server without the connection never looked them up
        problem, click = self.verify(payload)
        if click is None or self._sink is None:
            await self._refuse(problem or "mattermost adapter not started")
            return JSONResponse({"error": "refused"}, status_code=403)
        person = await self.identify(click[0])
        await self._sink.click(self, Click(channel=click[3], author=person, approval_id=click[1],
                                           decision="approve" if click[2] == "approve" else "deny",
                                           delivery_id=f"click:{payload.get('trigger_id') or ''}:{click[0]}"
                                           if payload.get("trigger_id") else None))
        return JSONResponse({"ephemeral_text": f"{click[2]} sent for request #{click[1]}"})

    async def _resolve_lazily(self) -> None:
        if time.monotonic() - self._resolved_at < RESOLVE_EVERY_S:
            return
        self._resolved_at = time.monotonic()
        try:
            await self._resolve_channels()
        except Exception as exc:
            log.warning("mattermost: looking up bound channels failed", platform=self.name, error=_describe(exc))

    async def _refuse(self, detail: str) -> None:
        if self._sink is not None:
            await self._sink.refused(self, what="button", detail=detail)

    def verify(self, payload: dict[str, Any]) -> tuple[str, tuple[str, int, str, str] | None]:
        """(why refused, None) or ("", (user id, approval id, decision, channel))."""
        context = payload.get("context") or {}
        sig, decision = str(context.get("sig") or ""), str(context.get("decision") or "")
        approval, channel = context.get("approval_id"), str(context.get("channel_id") or "")
        if not sig:
            return "mattermost action without a signature", None
        if not isinstance(approval, int) or isinstance(approval, bool) or decision not in ("approve", "deny"):
            return "mattermost action with a malformed context", None
        if not hmac.compare_digest(sig.encode(), self.sign(approval, decision, channel).encode()):
            return "mattermost action with a bad signature", None
        if channel not in self._ids or str(payload.get("channel_id") or "") != channel:
            return "mattermost action from another channel", None
        user = str(payload.get("user_id") or "")
        if not user or not user.isalnum():
            return "mattermost action without a user", None
        return "", (user, approval, decision, self._ids[channel])



def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
