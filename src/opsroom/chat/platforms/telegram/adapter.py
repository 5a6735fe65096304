"""Telegram through the Bot API: long polling (getUpdates) or a webhook that must carry our
secret token; sendMessage with parse_mode HTML; Approve/Deny as an inline keyboard whose
callback_data is MAC'd and bound to the chat; answerCallbackQuery for every click.

Plain aiohttp (already a dependency) rather than python-telegram-bot: opsroom needs five
methods, its own Starlette route for the webhook and the send queue's retry semantics (429's
retry_after surfaced as DeliveryFailed), all of which PTB's Application would wrap in its own
update queue, rate limiter and web server.

In webhook mode every server of a cluster takes updates (`listen`); only the holder of
`chat:NAME` sets the webhook (or polls) and sends (`start`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import json
import re
import time
from typing import Any, Literal

import aiohttp
import structlog
from pydantic import Field, SecretStr, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from opsroom.chat.backoff import Backoff
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
from opsroom.chat.platforms.telegram.api import UPDATES, ApiError, BotApi, button_key, callback_data, parse_callback
from opsroom.chat.safe import render
from opsroom.runtime import Runtime

log = structlog.get_logger(__name__)

MAX_BODY = 256 * 1024  # an Update is a few KB
SECRET_HEADER = "x-telegram-bot-api-secret-token"  # noqa: S105 - a header name
ASK_ME_EVERY_S = 30.0  # a server without the connection asks the bot's own name at most this often
_COMMAND = re.compile(r"^/([A-Za-z0-9_]+)(?:@[A-Za-z0-9_]+)?")


class TelegramConfig(PlatformConfig):
    token: SecretStr  # from @BotFather, as ${VAR}
    api_url: str = "https://api.telegram.org"
    mode: Literal["polling", "webhook"] = "polling"
    # webhook mode: Telegram sends it in X-Telegram-Bot-Api-Secret-Token on every update.
    webhook_secret: SecretStr | None = None
    # webhook mode: the public URL Telegram posts to (default: the server's public URL + /chat/NAME/webhook).
    webhook_url: str | None = None
    poll_timeout: int = Field(default=25, ge=0, le=50)  # long-poll seconds per getUpdates
    # Telegram allows ~1 message/s in one chat and 20 a minute in a group: a bound channel is
    # usually a group, so 20/min with a burst of 3 (a 429's retry_after is honoured besides).
    rate_per_s: float = Field(default=20 / 60, gt=0, le=30)
    burst: int = Field(default=3, ge=1, le=30)

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> TelegramConfig:
        if self.mode == "webhook":
            secret = self.webhook_secret.get_secret_value() if self.webhook_secret else ""
            if not re.fullmatch(r"[A-Za-z0-9_-]{16,256}", secret):
                raise ValueError("mode webhook needs webhook_secret: 16-256 characters of A-Z a-z 0-9 _ -")
        return self


class TelegramAdapter(ChatAdapter):
    platform = "telegram"
    Config = TelegramConfig

    def __init__(self, *, name: str, config: TelegramConfig, rt: Runtime) -> None:
        self.name = name
        self.config = config
        self.rt = rt
        self.capabilities = Capabilities(buttons=True, formatting="html", max_chars=4000,
                                         rate_per_s=config.rate_per_s, burst=config.burst)
        self._key = button_key(config.token.get_secret_value())
        self._sink: AdapterSink | None = None
        self._channels: set[str] = set()
        self._session: aiohttp.ClientSession | None = None
        self._api: BotApi | None = None
        self.bot_id: int | None = None
        self.username: str | None = None
        self._offset = 0
        self._connected = False
        self._wake = asyncio.Event()
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self._tasks: list[asyncio.Task[None]] = []  # the outbound side (start)
        self._inbound: asyncio.Task[None] | None = None  # the inbound side (listen)
        self._asked_me = -ASK_ME_EVERY_S
        self._people: dict[str, Person] = {}
        self._present: dict[str, dict[str, Person]] = {}

    # --- lifecycle ---------------------------------------------------------------

    async def listen(self, sink: AdapterSink, channels: list[str]) -> None:
        """Webhook updates, on any server: the sink, the chats, the inbox, and the Bot API for
        answering a button's callback (its spinner) where the click arrived."""
        if self._session is not None:
            return
        self._sink, self._channels = sink, set(channels)
        self._session = aiohttp.ClientSession()
        self._api = BotApi(self._session, api_url=self.config.api_url, token=self.config.token.get_secret_value())
        self._inbound = asyncio.get_running_loop().create_task(self._handle_inbox(), name=f"{self.name}:inbox")

    async def start(self, sink: AdapterSink, channels: list[str]) -> None:
        """Polling or setting the webhook, and sending, on the server holding the connection."""
        await self.listen(sink, channels)
        self._tasks = [asyncio.get_running_loop().create_task(self._run(), name=f"{self.name}:connect")]

    async def stop(self) -> None:
        await ended(*self._tasks)
        self._tasks = []
        self._connected = False

    async def close(self) -> None:
        await self.stop()
        await ended(self._inbound, session=self._session)
        self._inbound = self._session = None
        self._api = None
        self._sink = None

    def is_connected(self) -> bool:
        return self._connected

    def status(self) -> dict[str, Any]:
        return {"mode": self.config.mode, "offset": self._offset}

    @property
    def webhook_url(self) -> str:
        return self.config.webhook_url or f"{self.rt.settings.web_url}/chat/{self.name}/webhook"

    async def _run(self) -> None:
        """getMe, then poll (or set the webhook and wait); on any failure back off and again."""
        assert self._api is not None
        backoff = Backoff()
        while True:
            try:
                me = await self._api.call("getMe")
                self.bot_id, self.username = int(me["id"]), me.get("username")
                if self.config.mode == "webhook":
                    assert self.config.webhook_secret is not None
                    await self._api.call("setWebhook", {
                        "url": self.webhook_url, "allowed_updates": UPDATES,
                        "secret_token": self.config.webhook_secret.get_secret_value()})
                    self._connected = True
                    backoff.reset()
                    self._wake.clear()
                    await self._wake.wait()  # a failed send: check the API (and the webhook) again
                    continue
                await self._api.call("deleteWebhook")  # getUpdates answers 409 while one is set
                self._connected = True
                backoff.reset()
                await self._poll()
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                self._connected = False
                log.warning("telegram: Bot API refused", platform=self.name, code=exc.code, error=exc.description)
                if exc.code in (401, 404):
                    backoff.hold()  # a wrong token stays wrong: do not hammer
            except Exception as exc:
                self._connected = False
                log.warning("telegram: Bot API unreachable", platform=self.name, error=type(exc).__name__)
            await backoff.wait()

    async def _poll(self) -> None:
        assert self._api is not None
        while True:
            updates = await self._api.call(
                "getUpdates", {"offset": self._offset, "timeout": self.config.poll_timeout,
                               "allowed_updates": UPDATES}, wait=self.config.poll_timeout + 10.0)
            for update in updates if isinstance(updates, list) else ():
                uid = update.get("update_id") if isinstance(update, dict) else None
                if not isinstance(uid, int) or (self._offset and uid < self._offset):
                    continue  # confirmed already: a redelivery is answered once
                self._offset = uid + 1  # confirmed by the next getUpdates
                await self._handle_safely(update, trusted=True)

    # --- the webhook ---------------------------------------------------------------

    def routes(self) -> list[Any]:
        return [Route("/webhook", self._webhook, methods=["POST"])]

    async def _webhook(self, request: Request) -> Response:
        if self.config.mode != "webhook" or self._sink is None or self.config.webhook_secret is None:
            return JSONResponse({"error": "no webhook here"}, status_code=404)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            return JSONResponse({"error": "too large"}, status_code=413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return JSONResponse({"error": "too large"}, status_code=413)
        try:
            update = json.loads(bytes(body))
        except ValueError:
            update = None
        given = request.headers.get(SECRET_HEADER, "")
        expected = self.config.webhook_secret.get_secret_value()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            what = "button" if isinstance(update, dict) and "callback_query" in update else "webhook"
            await self._sink.refused(self, what=what, detail="secret token " + ("wrong" if given else "missing"))
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        if not isinstance(update, dict) or not isinstance(update.get("update_id"), int):
            return JSONResponse({"error": "not an update"}, status_code=400)
        try:
            self._inbox.put_nowait(update)
        except asyncio.QueueFull:
            return JSONResponse({"error": "busy"}, status_code=503)  # Telegram retries
        return Response(status_code=200)

    async def _handle_inbox(self) -> None:
        # In arrival order, without holding Telegram's request open for the command.
        while True:
            update = await self._inbox.get()
            if self.username is None:
                await self._ask_me()
            await self._handle_safely(update, trusted=True)

    async def _ask_me(self) -> None:
        """The bot's own name (`@bot status` reads as `status`), on a server that took an update
        without holding the connection (whose loop asks at connect): at most every ASK_ME_EVERY_S."""
        if self._api is None or time.monotonic() - self._asked_me < ASK_ME_EVERY_S:
            return
        self._asked_me = time.monotonic()
        try:
            me = await self._api.call("getMe")
            self.bot_id, self.username = int(me["id"]), me.get("username")
        except Exception as exc:
            log.warning("telegram: getMe failed", platform=self.name, error=type(exc).__name__)

    async def _handle_safely(self, update: dict[str, Any], *, trusted: bool) -> None:
        try:
            await self._dispatch(update)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("telegram: handling an update failed", platform=self.name,
                          update_id=update.get("update_id"))

    # --- updates ------------------------------------------------------------------

    def _person(self, user: Any) -> Person:
        user = user if isinstance(user, dict) else {}
        uid = user.get("id")
        pid = str(uid) if isinstance(uid, int) else ""
        name = " ".join(str(user[k]) for k in ("first_name", "last_name") if user.get(k)) \
            or str(user.get("username") or pid)
        person = Person(platform_id=pid, display_name=name,
                        is_bot=bool(user.get("is_bot")) or (self.bot_id is not None and uid == self.bot_id))
        if pid:
            self._people[pid] = person
        return person

    def _command(self, text: str) -> str:
        """`/status@opsroom_bot web` reads as `status web`; `@opsroom_bot status` as `status`."""
        text = _COMMAND.sub(lambda m: m.group(1), text.strip(), count=1)
        if self.username and text.lower().startswith(f"@{self.username.lower()}"):
            text = text[len(self.username) + 1:].lstrip(" ,:")
        return text.strip()

    async def _dispatch(self, update: dict[str, Any]) -> None:
        assert self._sink is not None
        delivery = str(update.get("update_id"))
        message = update.get("message")
        if isinstance(message, dict):
            chat = message.get("chat")
            channel = str(chat.get("id")) if isinstance(chat, dict) else ""
            if channel not in self._channels:
                return
            await self._members(channel, message)
            author = self._person(message.get("from"))
            text = message.get("text")
            if isinstance(text, str) and text.strip() and author.platform_id:
                await self._sink.message(self, Incoming(channel=channel, text=self._command(text), author=author,
                                                        delivery_id=delivery))
            return
        query = update.get("callback_query")
        if isinstance(query, dict):
            await self._callback(query, delivery)

    async def _callback(self, query: dict[str, Any], delivery: str) -> None:
        assert self._sink is not None and self._api is not None
        msg = query.get("message")
        chat = msg.get("chat") if isinstance(msg, dict) else None
        channel = str(chat.get("id")) if isinstance(chat, dict) else ""
        data = query.get("data")
        parsed = parse_callback(self._key, data, channel) if isinstance(data, str) else None
        with contextlib.suppress(Exception):  # the spinner stops either way; the room says the rest
            await self._api.call("answerCallbackQuery", {
                "callback_query_id": str(query.get("id", "")),
                "text": "Sent to opsroom" if parsed else "This is not an opsroom button"})
        if parsed is None or channel not in self._channels:
            await self._sink.refused(self, what="button", detail=f"callback_data refused: {str(data)[:80]!r} "
                                                                 f"in chat {channel[:24]}")
            return
        approval_id, decision = parsed
        await self._sink.click(self, Click(channel=channel, author=self._person(query.get("from")),
                                           approval_id=approval_id, decision=decision, delivery_id=delivery))

    async def _members(self, channel: str, message: dict[str, Any]) -> None:
        assert self._sink is not None
        present = self._present.setdefault(channel, {})
        changes = [(u, True) for u in message.get("new_chat_members") or ()]
        if message.get("left_chat_member"):
            changes.append((message["left_chat_member"], False))
        for user, joined in changes:
            person = self._person(user)
            if not person.platform_id or person.is_bot:
                continue
            if joined:
                present[person.platform_id] = person
            else:
                present.pop(person.platform_id, None)
            await self._sink.presence(self, channel, person, joined)

    # --- sending ---------------------------------------------------------------------

    def _mention(self, m: Mention) -> str:
        name = html.escape(m.display_name)
        return f'<a href="tg://user?id={m.account_id}">{name}</a>' if m.account_id.isdigit() else name

    async def deliver(self, out: Outgoing) -> None:
        if self._api is None or not self._tasks:
            raise DeliveryFailed("telegram adapter not started", transient=True)
        chat_id: int | str = int(out.channel) if out.channel.lstrip("-").isdigit() else out.channel
        params: dict[str, Any] = {"chat_id": chat_id, "text": render(out, self.capabilities, mention=self._mention),
                                  "parse_mode": "HTML", "link_preview_options": {"is_disabled": True}}
        if out.approval_id is not None:
            params["reply_markup"] = {"inline_keyboard": [[
                {"text": "Approve", "callback_data": callback_data(self._key, "approve", out.approval_id, out.channel)},
                {"text": "Deny", "callback_data": callback_data(self._key, "deny", out.approval_id, out.channel)}]]}
        try:
            await self._api.call("sendMessage", params)
        except ApiError as exc:
            if exc.code == 429:
                wait = exc.retry_after or 1.0
                raise DeliveryFailed("telegram rate limit", transient=True, retry_after=wait) from None
            if exc.code >= 500:
                self._away()
                raise DeliveryFailed(f"telegram answered {exc.code}", transient=True) from None
            if exc.migrate_to is not None:
                raise DeliveryFailed(f"the group {out.channel} became supergroup {exc.migrate_to}: bind "
                                     f"{self.name}:{exc.migrate_to} instead", transient=False) from None
            raise DeliveryFailed(f"telegram refused the message: {exc}", transient=False) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._away()
            raise DeliveryFailed(f"telegram unreachable: {type(exc).__name__}", transient=True) from None
        self._connected = True

    def _away(self) -> None:
        self._connected = False
        self._wake.set()

    async def identify(self, account_id: str) -> Person:
        return self._people.get(account_id) or Person(account_id, account_id)

    async def presence(self, channel: str) -> list[Person]:
        return list(self._present.get(channel, {}).values())
