"""A local Telegram Bot API for tests and demos: /bot<token>/getMe, getUpdates (long poll with
offset and timeout), sendMessage, answerCallbackQuery, setWebhook, deleteWebhook, with the
Bot API's own answers ({"ok": ...}, 401 for a wrong token, 409 for getUpdates while a webhook is
set, 429 with parameters.retry_after). Tests post as people, press inline buttons, redeliver an
update, and in webhook mode have updates POSTed with or without the secret header.

Loopback only, ephemeral port; stop() and start() again keep the port and what was recorded.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import deque
from typing import Any

import aiohttp
from aiohttp import web

PEOPLE: dict[str, dict[str, Any]] = {
    "alice": {"id": 1001, "is_bot": False, "first_name": "alice", "username": "alice_ops", "language_code": "en"},
    "bob": {"id": 1002, "is_bot": False, "first_name": "bob", "username": "bob_ops", "language_code": "en"},
    "carol": {"id": 1003, "is_bot": False, "first_name": "carol", "language_code": "de"},
    "otherbot": {"id": 7001, "is_bot": True, "first_name": "Other", "username": "other_bot"},
}
GROUP = {"id": -1001234567890, "title": "ops", "type": "supergroup"}


class TelegramFake:
    def __init__(self, *, token: str = "5550001234:AAFakeTokenForOpsroomTests_x1y2z3",  # noqa: S107 - the fake's own
                 username: str = "opsroom_bot") -> None:
        self.token = token
        self.me = {"id": int(token.split(":")[0]), "is_bot": True, "first_name": "opsroom", "username": username,
                   "can_join_groups": True, "can_read_all_group_messages": False, "supports_inline_queries": False}
        self.port = 0
        self.chat = dict(GROUP)
        self.updates: list[dict[str, Any]] = []  # not yet confirmed by an offset
        self.delivered: list[dict[str, Any]] = []  # every update we made, for redelivery
        self.sent: list[dict[str, Any]] = []  # the bot's messages, as Message objects
        self.answered: list[dict[str, Any]] = []  # answerCallbackQuery calls
        self.webhook: dict[str, Any] | None = None
        self.webhook_statuses: list[int] = []
        self.rate_limit: tuple[int, float] | None = None  # (n, seconds) per chat, then 429
        self.retry_after = 1
        self.calls: list[str] = []  # methods called, in order (never the token)
        self.unauthorized = 0  # calls with a wrong token
        self._sent_at: dict[str, deque[float]] = {}
        self._update_ids = itertools.count(400_000_001)
        self._message_ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._changed = asyncio.Event()

    # --- server ------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._method)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        if not self.port:
            self.port = self._runner.addresses[0][1]
        if self._session is None:
            self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        """The API goes away (long polls are cut); start() brings it back on the same port."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            self._changed.set()  # wake long polls so the shutdown does not wait for them
            await runner.cleanup()

    async def close(self) -> None:
        await self.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @staticmethod
    def _error(code: int, description: str, **parameters: Any) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
        if parameters:
            body["parameters"] = parameters
        return web.json_response(body, status=code)

    @staticmethod
    def _ok(result: Any) -> web.Response:
        return web.json_response({"ok": True, "result": result})

    async def _method(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            self.unauthorized += 1
            return self._error(401, "Unauthorized")
        params: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                params.update(await request.json())
            else:
                params.update(await request.post())
        method = request.match_info["method"]
        self.calls.append(method)
        handler = {"getMe": self._get_me, "getUpdates": self._get_updates, "sendMessage": self._send_message,
                   "answerCallbackQuery": self._answer, "setWebhook": self._set_webhook,
                   "deleteWebhook": self._delete_webhook, "getWebhookInfo": self._webhook_info}.get(method)
        if handler is None:
            return self._error(404, "Not Found")
        return await handler(params)

    async def _get_me(self, params: dict[str, Any]) -> web.Response:
        return self._ok(self.me)

    async def _get_updates(self, params: dict[str, Any]) -> web.Response:
        if self.webhook is not None:
            return self._error(409, "Conflict: can't use getUpdates method while webhook is active; "
                                    "use deleteWebhook to delete the webhook first")
        offset = int(params.get("offset") or 0)
        if offset:
            self.updates = [u for u in self.updates if u["update_id"] >= offset or u.get("_again")]
        deadline = time.monotonic() + min(float(params.get("timeout") or 0), 50.0)
        while True:
            ready = [{k: v for k, v in u.items() if k != "_again"} for u in self.updates][:100]
            if ready or time.monotonic() >= deadline or self._runner is None:
                self.updates = [u for u in self.updates if not u.get("_again")]
                return self._ok(ready)
            self._changed.clear()
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    await self._changed.wait()
            except TimeoutError:
                pass

    async def _send_message(self, params: dict[str, Any]) -> web.Response:
        chat_id = str(params.get("chat_id", ""))
        if chat_id != str(self.chat["id"]):
            return self._error(400, "Bad Request: chat not found")
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            return self._error(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            return self._error(400, "Bad Request: message is too long")
        if params.get("parse_mode") not in (None, "HTML", "MarkdownV2", "Markdown"):
            return self._error(400, "Bad Request: unsupported parse_mode")
        for row in (params.get("reply_markup") or {}).get("inline_keyboard", []):
            for button in row:
                if len(str(button.get("callback_data", "")).encode()) > 64:
                    return self._error(400, "Bad Request: BUTTON_DATA_INVALID")
        if self.rate_limit is not None:
            n, window = self.rate_limit
            sent = self._sent_at.setdefault(chat_id, deque())
            now = time.monotonic()
            while sent and now - sent[0] > window:
                sent.popleft()
            if len(sent) >= n:
                return self._error(429, f"Too Many Requests: retry after {self.retry_after}",
                                   retry_after=self.retry_after)
            sent.append(now)
        message = {"message_id": next(self._message_ids), "from": self.me, "chat": self.chat,
                   "date": int(time.time()), "text": text}
        if params.get("reply_markup"):
            message["reply_markup"] = params["reply_markup"]
        self.sent.append({**message, "parse_mode": params.get("parse_mode")})
        return self._ok(message)

    async def _answer(self, params: dict[str, Any]) -> web.Response:
        if not params.get("callback_query_id"):
            return self._error(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
        self.answered.append(params)
        return self._ok(True)

    async def _set_webhook(self, params: dict[str, Any]) -> web.Response:
        url = str(params.get("url") or "")
        if not url:
            return await self._delete_webhook(params)
        self.webhook = {"url": url, "secret_token": params.get("secret_token"),
                        "allowed_updates": params.get("allowed_updates")}
        return self._ok(True)

    async def _delete_webhook(self, params: dict[str, Any]) -> web.Response:
        self.webhook = None
        return self._ok(True)

    async def _webhook_info(self, params: dict[str, Any]) -> web.Response:
        return self._ok({"url": (self.webhook or {}).get("url", ""), "has_custom_certificate": False,
                         "pending_update_count": len(self.updates)})

    # --- acting as Telegram and its people -------------------------------------------

    def message_update(self, person: str, text: str) -> dict[str, Any]:
        message: dict[str, Any] = {"message_id": next(self._message_ids), "from": PEOPLE[person], "chat": self.chat,
                                   "date": int(time.time()), "text": text}
        if text.startswith("/"):
            message["entities"] = [{"offset": 0, "length": len(text.split()[0]), "type": "bot_command"}]
        return {"update_id": next(self._update_ids), "message": message}

    def callback_update(self, person: str, message: dict[str, Any], data: str) -> dict[str, Any]:
        query = {"id": str(4_000_000_000 + len(self.delivered)), "from": PEOPLE[person],
                 "message": {k: v for k, v in message.items() if k != "parse_mode"},
                 "chat_instance": "-8123456789012345678", "data": data}
        return {"update_id": next(self._update_ids), "callback_query": query}

    async def push(self, update: dict[str, Any], *, header: str | None = "configured",
                   again: bool = False) -> int | None:
        """Hand an update to the bot: queued for getUpdates, or POSTed to the webhook (the
        status it answered). `header`: the secret-token header to send ("configured": the one
        setWebhook named; None: no header; else that text)."""
        if not again:
            self.delivered.append(update)
        if self.webhook is None:
            self.updates.append({**update, "_again": True} if again else update)
            self._changed.set()
            return None
        assert self._session is not None
        headers = {"Content-Type": "application/json"}
        token = self.webhook.get("secret_token") if header == "configured" else header
        if token is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = str(token)
        async with self._session.post(self.webhook["url"], data=json.dumps(update), headers=headers) as resp:
            self.webhook_statuses.append(resp.status)
            return resp.status

    async def say(self, person: str, text: str, **kw: Any) -> int | None:
        return await self.push(self.message_update(person, text), **kw)

    async def press(self, person: str, message: dict[str, Any], data: str, **kw: Any) -> int | None:
        return await self.push(self.callback_update(person, message, data), **kw)

    async def redeliver(self, **kw: Any) -> int | None:
        """The last update once more, same update_id (a webhook retry; a poll before the offset)."""
        return await self.push(self.delivered[-1], again=True, **kw)

    def texts(self) -> list[str]:
        return [m["text"] for m in self.sent if str(m["chat"]["id"]) == str(self.chat["id"])]

    def buttons(self, approval_id: int) -> dict[str, Any]:
        """The last message with a keyboard whose buttons name this request."""
        m: dict[str, Any]
        for m in reversed(self.sent):
            rows = (m.get("reply_markup") or {}).get("inline_keyboard", [])
            if any(f":{approval_id}:" in str(b.get("callback_data")) for row in rows for b in row):
                return m
        raise LookupError(f"no buttons for request #{approval_id}")
