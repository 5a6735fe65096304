"""Slack: events and button clicks over Socket Mode, posts through the Web API.

Socket Mode means opsroom needs no public URL: `apps.connections.open` (app-level token)
gives a WSS URL; Slack sends envelopes there, each acknowledged by its `envelope_id` at once
so Slack does not retry it. A message event carries `event_id` (the same on Slack's retries,
with `retry_attempt`), which the hub uses to answer a retried line once. A `disconnect`
envelope (Slack refreshes connections every few hours) reconnects at once; a lost socket
reconnects with backoff. Clicks arrive over the same authenticated socket or, when the app
uses a request URL for interactivity, as POSTs to /chat/NAME/actions signed with the
signing secret (v0 HMAC-SHA256, checked in constant time, 5-minute window, no replay).
Every server of a cluster takes those POSTs (`listen`); only the holder of `chat:NAME` opens
the socket and posts (`start`). A signed request replayed to another server passes its check
there, and is dropped by the hub's claim on its delivery id in the store.

The socket loop is written on aiohttp (already a dependency) rather than slack_sdk's Socket
Mode client: it is ~150 lines, keeps idle memory small and leaves reconnect and
connected-state under the adapter's control, which the send queue relies on.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import parse_qs

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

SIGNATURE_WINDOW_S = 300  # Slack's own advice: refuse requests older than five minutes
MAX_ACTION_BODY = 64 * 1024  # a block_actions payload is a few KiB
RESOLVE_EVERY_S = 30.0  # a server without the connection looks its #name bindings up at most this often
ACTION_IDS = {"opsroom_approve": "approve", "opsroom_deny": "deny"}
PERMANENT_ERRORS = {"channel_not_found", "not_in_channel", "is_archived", "invalid_auth", "account_inactive",
                    "token_revoked", "no_permission", "missing_scope", "msg_too_long", "invalid_blocks"}


class SlackConfig(PlatformConfig):
    app_token: SecretStr  # xapp-…, connections:write: opens the Socket Mode connection
    bot_token: SecretStr  # xoxb-…, chat:write and friends: posts and looks people up
    # For interactivity through a request URL (https://opsroom/chat/NAME/actions); optional
    # when clicks come over Socket Mode, where every request to that URL is refused.
    signing_secret: SecretStr | None = None
    api_url: str = "https://slack.com/api/"
    # chat.postMessage allows about one message per second per channel, short bursts above it.
    rate_per_s: float = 1.0
    burst: int = 3


class SlackAdapter(ChatAdapter):
    platform = "slack"
    Config = SlackConfig

    def __init__(self, *, name: str = "slack", config: SlackConfig, rt: Runtime | None = None) -> None:
        self.name = name
        self.config = config
        self.rt = rt
        # Threads, edits and direct messages exist on Slack but opsroom does not use them here yet.
        self.capabilities = Capabilities(buttons=True, formatting="mrkdwn", max_chars=3000,  # a section block's limit
                                         rate_per_s=config.rate_per_s, burst=config.burst)
        self.api = config.api_url.rstrip("/") + "/"
        self.bot_user_id: str | None = None
        self.bot_id: str | None = None
        self._sink: AdapterSink | None = None
        self._bound: list[str] = []
        self._ids: dict[str, str] = {}  # channel id -> the binding's text (C0OPS or #ops)
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        # Envelopes wait here for one worker, in order: the socket reader only acks and queues,
        # so a command that takes a while never delays Slack's acks (it retries after 3 s).
        self._inbox: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=1000)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._connected = asyncio.Event()
        self._names: dict[str, Person] = {}
        self._signatures: OrderedDict[str, float] = OrderedDict()  # seen signed requests: no replay
        self.reconnects = 0
        self._resolved_at = -RESOLVE_EVERY_S

    # --- lifecycle -------------------------------------------------------

    async def listen(self, sink: AdapterSink, channels: list[str]) -> None:
        """Clicks POSTed to the request URL, on any server: the sink, the channels and the Web
        API for reading (who clicked, which channel a #name is)."""
        if self._http is not None:
            return
        self._sink, self._bound = sink, list(channels)
        self._ids = {c: c for c in channels if not c.startswith("#")}
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        self._worker = asyncio.get_running_loop().create_task(self._work(), name=f"slack-in:{self.name}")

    async def start(self, sink: AdapterSink, channels: list[str]) -> None:
        """The Socket Mode connection and sending, on the server holding the connection."""
        await self.listen(sink, channels)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"slack:{self.name}")

    async def stop(self) -> None:
        self._connected.clear()
        await ended(self._task)
        self._task = None

    async def close(self) -> None:
        await self.stop()
        await ended(self._worker, session=self._http)
        self._worker = self._http = None

    def is_connected(self) -> bool:
        return self._connected.is_set()

    def status(self) -> dict[str, Any]:
        return {"reconnects": self.reconnects}

    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                if self.bot_user_id is None:
                    me = await self._call("auth.test", token=self.config.bot_token)
                    self.bot_user_id, self.bot_id = me.get("user_id"), me.get("bot_id")
                await self._resolve_channels()
                opened = await self._call("apps.connections.open", token=self.config.app_token)
                if await self._socket(str(opened["url"])):
                    backoff.reset()  # Slack asked us to reconnect: at once
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("slack connection lost", platform=self.name, error=_describe(exc))
            self._connected.clear()
            self.reconnects += 1
            await backoff.wait()

    async def _socket(self, url: str) -> bool:
        """Read one Socket Mode connection; True when Slack asked for a reconnect."""
        assert self._http is not None
        async with self._http.ws_connect(url, heartbeat=30) as ws:
            self._ws = ws
            try:
                async for frame in ws:
                    if frame.type != aiohttp.WSMsgType.TEXT:
                        break
                    envelope = json.loads(frame.data)
                    kind = envelope.get("type")
                    if envelope.get("envelope_id"):
                        # Acknowledged before handling: Slack retries what is not acked in 3 s.
                        await ws.send_str(json.dumps({"envelope_id": envelope["envelope_id"]}))
                    if kind == "hello":
                        self._connected.set()
                        log.info("slack connected", platform=self.name)
                    elif kind == "disconnect":
                        return True
                    elif kind in ("events_api", "interactive"):
                        try:
                            self._inbox.put_nowait((kind, envelope.get("payload") or {}))
                        except asyncio.QueueFull:
                            log.warning("slack events dropped: the room is not keeping up", platform=self.name)
            finally:
                self._ws = None
                self._connected.clear()
        return False

    async def _work(self) -> None:
        while True:
            kind, payload = await self._inbox.get()
            try:
                if kind == "events_api":
                    await self._event(payload)
                else:
                    await self._interactive(payload, via="socket")
            except Exception:
                log.exception("slack event handling failed", platform=self.name)

    async def _resolve_channels(self) -> None:
        """Bindings may name a channel (#ops); Slack's events and posts speak in ids."""
        wanted = {c[1:]: c for c in self._bound if c.startswith("#")}
        if not wanted or all(b in self._ids.values() for b in wanted.values()):
            return
        cursor = ""
        while True:
            page = await self._call("conversations.list", token=self.config.bot_token, form={
                "types": "public_channel,private_channel", "limit": "200", "cursor": cursor})
            for ch in page.get("channels", []):
                if ch.get("name") in wanted:
                    self._ids[str(ch["id"])] = wanted[ch["name"]]
            cursor = str((page.get("response_metadata") or {}).get("next_cursor") or "")
            if not cursor:
                return

    async def _resolved(self, channel_id: str) -> str | None:
        """A click from a channel not known by id: on a server without the connection its #name
        bindings were never looked up. Looked up then, at most every RESOLVE_EVERY_S."""
        if self._task is not None or time.monotonic() - self._resolved_at < RESOLVE_EVERY_S:
            return None  # the connection's own loop resolves them
        self._resolved_at = time.monotonic()
        try:
            await self._resolve_channels()
        except Exception as exc:
            log.warning("slack: looking up bound channels failed", platform=self.name, error=_describe(exc))
        return self._ids.get(channel_id)

    # --- Web API ---------------------------------------------------------

    async def _call(self, method: str, *, token: SecretStr, body: dict[str, Any] | None = None,
                    form: dict[str, str] | None = None) -> dict[str, Any]:
        if self._http is None:
            raise DeliveryFailed("slack adapter is not started")
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"}
        async with self._http.post(self.api + method, json=body, data=form, headers=headers) as resp:
            if resp.status == 429:
                raise DeliveryFailed(f"slack {method}: rate limited",
                                     retry_after=retry_after_s(resp.headers.get("Retry-After")))
            if resp.status >= 500:
                raise DeliveryFailed(f"slack {method}: HTTP {resp.status}")
            if resp.status >= 400:
                raise DeliveryFailed(f"slack {method}: HTTP {resp.status}", transient=False)
            data: dict[str, Any] = await resp.json(content_type=None)
        if not data.get("ok"):
            error = str(data.get("error", "unknown"))
            raise DeliveryFailed(f"slack {method}: {error}", transient=error not in PERMANENT_ERRORS)
        return data

    async def deliver(self, out: Outgoing) -> None:
        if not self._connected.is_set():
            raise DeliveryFailed("slack is not connected", transient=True)
        channel = self._channel_id(out.channel)
        text = render(out, self.capabilities, mention=_mention)
        body: dict[str, Any] = {"channel": channel, "text": text, "unfurl_links": False, "unfurl_media": False}
        if out.approval_id is not None:
            body["blocks"] = _approval_blocks(text, out.approval_id)
        try:
            await self._call("chat.postMessage", token=self.config.bot_token, body=body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryFailed(f"slack chat.postMessage: {_describe(exc)}") from exc

    def _channel_id(self, bound: str) -> str:
        for cid, text in self._ids.items():
            if text == bound:
                return cid
        if bound.startswith("#"):
            raise DeliveryFailed(f"slack channel {bound} not found yet")
        return bound

    async def identify(self, account_id: str) -> Person:
        known = self._names.get(account_id)
        if known is not None:
            return known
        try:
            data = await self._call("users.info", token=self.config.bot_token, form={"user": account_id})
        except (DeliveryFailed, aiohttp.ClientError, TimeoutError):
            return Person(account_id, account_id, is_bot=account_id == self.bot_user_id)
        user = data.get("user") or {}
        profile = user.get("profile") or {}
        name = profile.get("display_name") or user.get("real_name") or user.get("name") or account_id
        person = Person(account_id, str(name), is_bot=bool(user.get("is_bot")) or account_id == self.bot_user_id)
        self._names[account_id] = person
        return person

    async def presence(self, channel: str) -> list[Person]:
        try:
            data = await self._call("conversations.members", token=self.config.bot_token,
                                    form={"channel": self._channel_id(channel)})
        except (DeliveryFailed, aiohttp.ClientError, TimeoutError):
            return []
        return [await self.identify(str(u)) for u in data.get("members", [])]

    # --- what Slack sends ------------------------------------------------

    async def _event(self, payload: dict[str, Any]) -> None:
        event = payload.get("event") or {}
        if self._sink is None:
            return
        if event.get("type") in ("member_joined_channel", "member_left_channel"):
            bound = self._ids.get(str(event.get("channel", "")))
            account = str(event.get("user", ""))
            if bound is not None and account and account != self.bot_user_id:
                await self._sink.presence(self, bound, await self.identify(account),
                                          event["type"] == "member_joined_channel")
            return
        if event.get("type") != "message":
            return
        subtype = event.get("subtype")
        if subtype not in (None, "bot_message", "thread_broadcast", "file_share", "me_message"):
            return  # edits, deletions, joins: not something a person said now
        bound = self._ids.get(str(event.get("channel", "")))
        if bound is None:
            return
        account = str(event.get("user") or event.get("bot_id") or "")
        if account == self.bot_user_id or (self.bot_id and event.get("bot_id") == self.bot_id):
            return  # our own post, echoed back by Slack
        is_bot = bool(event.get("bot_id")) or subtype == "bot_message" or account == self.bot_user_id
        person = await self.identify(account) if account and not is_bot else Person(account, account or "bot")
        if is_bot and not person.is_bot:
            person = Person(person.platform_id, person.display_name, is_bot=True)
        text = _unescape(str(event.get("text") or ""))
        delivery = payload.get("event_id") or f"{event.get('channel')}:{event.get('ts')}"
        await self._sink.message(self, Incoming(channel=bound, text=text, author=person, delivery_id=str(delivery)))

    async def _interactive(self, payload: dict[str, Any], *, via: str) -> None:
        if self._sink is None or payload.get("type") != "block_actions":
            return
        actions = payload.get("actions") or []
        action = actions[0] if actions else {}
        decision = ACTION_IDS.get(str(action.get("action_id")))
        approval_id, value_decision = _parse_value(str(action.get("value", "")))
        channel_id = str((payload.get("channel") or {}).get("id", ""))
        bound = self._ids.get(channel_id) or await self._resolved(channel_id)
        user = payload.get("user") or {}
        if decision is None or approval_id is None or value_decision != decision or bound is None or not user.get("id"):
            await self._sink.refused(self, what="button", detail=f"unusable slack click via {via}: "
                                     f"action={str(action.get('action_id'))[:40]} channel={channel_id[:20]}")
            return
        person = await self.identify(str(user["id"]))
        delivery = f"click:{user['id']}:{action.get('action_ts') or payload.get('trigger_id')}"
        await self._sink.click(self, Click(channel=bound, author=person, approval_id=approval_id,
                                           decision="approve" if decision == "approve" else "deny",
                                           delivery_id=delivery))

    # --- interactivity through a request URL ------------------------------

    def routes(self) -> list[Any]:
        return [Route("/actions", self._actions, methods=["POST"])]

    async def _actions(self, request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_ACTION_BODY:
                await self._refuse("slack action body too large")
                return JSONResponse({"error": "too large"}, status_code=413)
        problem = self.verify(headers=request.headers, body=body)
        if problem:
            await self._refuse(problem)
            return JSONResponse({"error": "signature refused"}, status_code=401)
        try:
            payload = json.loads(parse_qs(body.decode())["payload"][0])
            assert isinstance(payload, dict)
        except Exception:
            await self._refuse("slack action without a JSON payload")
            return JSONResponse({"error": "bad payload"}, status_code=400)
        await self._interactive(payload, via="request url")
        return Response(status_code=200)

    async def _refuse(self, detail: str) -> None:
        if self._sink is not None:
            await self._sink.refused(self, what="button", detail=detail)

    def verify(self, *, headers: Any, body: bytes, now: float | None = None) -> str | None:
        """None when the request is Slack's (v0 signature, fresh, not seen before), else why not."""
        if self.config.signing_secret is None:
            return "slack request URL used, but no signing_secret is configured"
        stamp, signature = headers.get("X-Slack-Request-Timestamp", ""), headers.get("X-Slack-Signature", "")
        if not stamp or not signature:
            return "slack action without a signature"
        try:
            when = int(stamp)
        except ValueError:
            return "slack action with a bad timestamp"
        now = time.time() if now is None else now
        if abs(now - when) > SIGNATURE_WINDOW_S:
            return "slack action with a stale timestamp"
        base = b"v0:" + stamp.encode() + b":" + body
        expected = "v0=" + hmac.new(self.config.signing_secret.get_secret_value().encode(), base,
                                    hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            return "slack action with a bad signature"
        for seen, at in list(self._signatures.items()):
            if now - at <= SIGNATURE_WINDOW_S:
                break
            del self._signatures[seen]
        if signature in self._signatures:
            return "slack action replayed"
        self._signatures[signature] = now
        return None


def _approval_blocks(text: str, approval_id: int) -> list[dict[str, Any]]:
    def button(label: str, decision: str, style: str) -> dict[str, Any]:
        return {"type": "button", "action_id": f"opsroom_{decision}", "style": style,
                "text": {"type": "plain_text", "text": label}, "value": f"{approval_id}:{decision}"}

    return [{"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "actions", "block_id": f"approval-{approval_id}",
             "elements": [button("Approve", "approve", "primary"), button("Deny", "deny", "danger")]}]


def _parse_value(value: str) -> tuple[int | None, str]:
    number, _, decision = value.partition(":")
    return (int(number), decision) if number.isdigit() and len(number) < 12 else (None, "")


def _mention(m: Mention) -> str:
    return f"<@{m.account_id}>" if m.account_id.isalnum() else ""


def _unescape(text: str) -> str:
    """Slack escapes &, < and > in message text; commands want what the person typed."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")



def _describe(exc: BaseException) -> str:
    # The exception's own text only: aiohttp errors name the URL, never headers (no token).
    return f"{type(exc).__name__}: {exc}"[:300]
