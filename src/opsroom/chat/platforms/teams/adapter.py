"""Microsoft Teams through the Bot Framework: Activities POSTed to /chat/NAME/messages, each
verified by the channel's RS256 JWT; replies POSTed to the conversation's service URL with our
own client-credentials token; approvals as an Adaptive Card with Action.Submit buttons.

Plain aiohttp rather than the Bot Framework SDK (botbuilder-*): the SDK brings its own web
server and ~40 MB of dependencies for three HTTP calls, and we need the JWT check on our own
Starlette route anyway. Teams keeps no connection open: "connected" means the token endpoint
and the service URL answered last time, and the send queue retries while they do not.

In a cluster every server takes and verifies Activities (`listen`: the channel's keys and the
inbox); only the holder of `chat:NAME` fetches our token and sends (`start`). A conversation's
serviceUrl is learned by the server an Activity reached: the holder posts to the configured
`service_url` until one reaches it (Teams' global default serves every region).
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import structlog
from pydantic import Field, SecretStr
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
from opsroom.chat.platforms.teams.auth import AuthError, BotToken, ChannelKeys, KeysUnavailable, verify_activity
from opsroom.chat.safe import render
from opsroom.runtime import Runtime

log = structlog.get_logger(__name__)

MAX_BODY = 256 * 1024  # an Activity is a few KB; Teams caps messages at ~28 KB
_AT = re.compile(r"<at>(.*?)</at>", re.DOTALL)


class TeamsConfig(PlatformConfig):
    app_id: str = Field(min_length=1)  # the Azure Bot's Microsoft App ID: the tokens' audience
    app_password: SecretStr  # its client secret, as ${VAR}
    openid_url: str = "https://login.botframework.com/v1/.well-known/openidconfiguration"
    token_url: str = "https://login.microsoftonline.com/botframework.com/oauth2/v2.0/token"  # noqa: S105 - a URL
    # Where to post before a conversation has told us its own serviceUrl (after a restart).
    service_url: str = "https://smba.trafficmanager.net/teams/"
    # Teams allows 7 messages/s per conversation in bursts but 1,800 an hour (0.5/s); 1/s with
    # a burst of 3 keeps a conversation readable, and a 429's Retry-After is honoured.
    rate_per_s: float = Field(default=1.0, gt=0, le=50)
    burst: int = Field(default=3, ge=1, le=50)


def _channel(conversation_id: str) -> str:
    """A reply in a Teams channel thread is `19:…@thread.tacv2;messageid=…`: the channel is
    the part before the thread."""
    return conversation_id.split(";", 1)[0]


def _safe_service_url(url: str) -> bool:
    """Our bearer token goes to this URL: https, or http to loopback only (a local fake)."""
    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1"))


class TeamsAdapter(ChatAdapter):
    platform = "teams"
    Config = TeamsConfig

    def __init__(self, *, name: str, config: TeamsConfig, rt: Runtime) -> None:
        self.name = name
        self.config = config
        self.rt = rt
        self.capabilities = Capabilities(buttons=True, formatting="html", max_chars=4000,
                                         rate_per_s=config.rate_per_s, burst=config.burst)
        self.bot_id = f"28:{config.app_id}"
        self._sink: AdapterSink | None = None
        self._channels: set[str] = set()
        self._service_urls: dict[str, str] = {}
        self._people: dict[str, Person] = {}
        self._present: dict[str, dict[str, Person]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._keys: ChannelKeys | None = None
        self._token: BotToken | None = None
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self._tasks: list[asyncio.Task[None]] = []  # the outbound side (start)
        self._inbound: asyncio.Task[None] | None = None  # the inbound side (listen)
        self._healthy = False
        self._wake = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------

    async def listen(self, sink: AdapterSink, channels: list[str]) -> None:
        """What Teams POSTs, on any server: the channel's keys to verify it, and the inbox."""
        if self._session is not None:
            return
        self._sink, self._channels = sink, set(channels)
        self._session = aiohttp.ClientSession()
        self._keys = ChannelKeys(self._session, self.config.openid_url)
        self._inbound = asyncio.get_running_loop().create_task(self._handle_inbox(), name=f"{self.name}:inbox")

    async def start(self, sink: AdapterSink, channels: list[str]) -> None:
        """Sending, on the server holding the connection: our token, kept fresh."""
        await self.listen(sink, channels)
        assert self._session is not None
        self._token = BotToken(self._session, token_url=self.config.token_url, app_id=self.config.app_id,
                               app_password=self.config.app_password.get_secret_value())
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._keep_connected(), name=f"{self.name}:connect")]

    async def stop(self) -> None:
        await ended(*self._tasks)
        self._tasks = []
        self._token = None
        self._healthy = False

    async def close(self) -> None:
        await self.stop()
        await ended(self._inbound, session=self._session)
        self._inbound = self._session = None
        self._sink = None

    async def _keep_connected(self) -> None:
        """Warm the signing keys and our token; after a failed send, probe again with backoff."""
        keys, token = self._keys, self._token
        assert keys is not None and token is not None
        backoff = Backoff()
        while True:
            try:
                await keys.warm()
                await token.get()
                self._healthy = True
                backoff.reset()
                self._wake.clear()
                await self._wake.wait()
                token.forget()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._healthy = False
                log.warning("teams: Bot Framework unreachable", platform=self.name, error=type(exc).__name__)
                await backoff.wait()

    def is_connected(self) -> bool:
        return self._healthy

    def status(self) -> dict[str, Any]:
        return {"conversations_known": len(self._service_urls)}

    # --- what Teams POSTs ------------------------------------------------------

    def routes(self) -> list[Any]:
        return [Route("/messages", self._endpoint, methods=["POST"])]

    async def _endpoint(self, request: Request) -> Response:
        if self._sink is None or self._keys is None:
            return JSONResponse({"error": "not started"}, status_code=503)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            return JSONResponse({"error": "too large"}, status_code=413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return JSONResponse({"error": "too large"}, status_code=413)
        try:
            activity = json.loads(bytes(body))
        except ValueError:
            activity = None
        if not isinstance(activity, dict):
            return JSONResponse({"error": "not an activity"}, status_code=400)
        what = "button" if isinstance(activity.get("value"), dict) else "activity"
        try:
            await verify_activity(self._keys, authorization=request.headers.get("authorization"),
                                  app_id=self.config.app_id, activity=activity)
        except AuthError as exc:
            await self._sink.refused(self, what=what, detail=f"Bot Framework token: {exc}")
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        except KeysUnavailable as exc:
            # Not the sender's fault and not proof of forgery: Teams retries a 503.
            log.warning("teams: signing keys unavailable", platform=self.name, error=str(exc))
            return JSONResponse({"error": "cannot verify now"}, status_code=503)
        try:
            self._inbox.put_nowait(activity)
        except asyncio.QueueFull:
            return JSONResponse({"error": "busy"}, status_code=503)  # the channel retries
        return Response(status_code=200)

    async def _handle_inbox(self) -> None:
        # One at a time, in arrival order; the HTTP answer does not wait for the command
        # (the channel retries an Activity not answered within 15 s).
        while True:
            activity = await self._inbox.get()
            try:
                await self._handle(activity)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("teams: handling an activity failed", platform=self.name)

    def _person(self, account: Any) -> Person:
        account = account if isinstance(account, dict) else {}
        pid = str(account.get("id") or "")
        person = Person(platform_id=pid, display_name=str(account.get("name") or pid),
                        is_bot=pid == self.bot_id or account.get("role") == "bot" or pid.startswith("28:"))
        if pid:
            self._people[pid] = person
        return person

    async def _handle(self, activity: dict[str, Any]) -> None:
        assert self._sink is not None
        conversation = activity.get("conversation")
        conv_id = str(conversation.get("id") or "") if isinstance(conversation, dict) else ""
        channel = _channel(conv_id)
        if channel not in self._channels:
            return
        service_url = str(activity.get("serviceUrl") or "")
        if service_url and _safe_service_url(service_url):
            self._service_urls[channel] = service_url  # verified: the token named this URL
        kind = activity.get("type")
        if kind == "conversationUpdate":
            await self._members(channel, activity)
            return
        if kind != "message":
            return
        author = self._person(activity.get("from"))
        delivery = str(activity["id"]) if activity.get("id") else None
        value = activity.get("value")
        if isinstance(value, dict):
            await self._click(channel, author, value, delivery)
            return
        text = self._strip_own_mention(str(activity.get("text") or ""), activity.get("entities"))
        if text:
            await self._sink.message(self, Incoming(channel=channel, text=text, author=author, delivery_id=delivery))

    async def _click(self, channel: str, author: Person, value: dict[str, Any], delivery: str | None) -> None:
        assert self._sink is not None
        approval_id, decision = value.get("approval_id"), value.get("decision")
        if value.get("opsroom") != "approval" or not isinstance(approval_id, int) or isinstance(approval_id, bool) \
                or decision not in ("approve", "deny"):
            await self._sink.refused(self, what="button", detail=f"card data not an opsroom approval: {value!r}"[:300])
            return
        await self._sink.click(self, Click(channel=channel, author=author, approval_id=approval_id,
                                           decision="approve" if decision == "approve" else "deny",
                                           delivery_id=delivery))

    def _strip_own_mention(self, text: str, entities: Any) -> str:
        """In a channel the bot only hears `<at>opsroom</at> status`: the command is the rest."""
        for entity in entities if isinstance(entities, list) else ():
            if isinstance(entity, dict) and entity.get("type") == "mention":
                mentioned = entity.get("mentioned") or {}
                if isinstance(mentioned, dict) and mentioned.get("id") == self.bot_id and entity.get("text"):
                    text = text.replace(str(entity["text"]), " ")
        return _AT.sub(lambda m: m.group(1), text).strip()

    async def _members(self, channel: str, activity: dict[str, Any]) -> None:
        assert self._sink is not None
        present = self._present.setdefault(channel, {})
        for key, joined in (("membersAdded", True), ("membersRemoved", False)):
            for account in activity.get(key) or ():
                person = self._person(account)
                if not person.platform_id or person.is_bot:
                    continue
                if joined:
                    present[person.platform_id] = person
                else:
                    present.pop(person.platform_id, None)
                await self._sink.presence(self, channel, person, joined)

    # --- what we send ----------------------------------------------------------

    def _activity(self, out: Outgoing) -> dict[str, Any]:
        entities = []
        for m in out.mentions:
            tag = f"<at>{html.escape(m.display_name)}</at>"
            entities.append({"type": "mention", "text": tag, "mentioned": {"id": m.account_id, "name": m.display_name}})

        def mention(m: Mention) -> str:
            return f"<at>{html.escape(m.display_name)}</at>"

        # HTML ("xml" to the Bot Framework): entities show as the characters they stand for,
        # and <at> is the one tag we add ourselves; newlines need <br> there.
        text = render(out, self.capabilities, mention=mention).replace("\n", "<br>")
        activity: dict[str, Any] = {"type": "message", "from": {"id": self.bot_id}, "textFormat": "xml",
                                    "text": text}
        if entities:
            activity["entities"] = entities
        if out.approval_id is not None:
            activity["attachments"] = [approval_card(out.approval_id)]
        return activity

    async def deliver(self, out: Outgoing) -> None:
        session, bot_token = self._session, self._token
        if session is None or bot_token is None:
            raise DeliveryFailed("teams adapter not started", transient=True)
        base = self._service_urls.get(out.channel, self.config.service_url)
        url = f"{base.rstrip('/')}/v3/conversations/{quote(out.channel, safe='')}/activities"
        try:
            token = await bot_token.get()
            async with session.post(url, json=self._activity(out), headers={"Authorization": f"Bearer {token}"},
                                          timeout=aiohttp.ClientTimeout(total=15)) as resp:
                status, retry_after = resp.status, resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._away()
            raise DeliveryFailed(f"teams unreachable: {type(exc).__name__}", transient=True) from None
        if status < 300:
            self._healthy = True
            return
        if status == 429:
            raise DeliveryFailed("teams rate limit", transient=True, retry_after=retry_after_s(retry_after))
        if status == 401:
            bot_token.forget()
            raise DeliveryFailed("teams refused our token; fetching a new one", transient=True)
        if status >= 500:
            self._away()
            raise DeliveryFailed(f"teams answered {status}", transient=True)
        raise DeliveryFailed(f"teams refused the message ({status}): is the bot still in {out.channel}?",
                             transient=False)

    def _away(self) -> None:
        self._healthy = False
        self._wake.set()

    async def identify(self, account_id: str) -> Person:
        return self._people.get(account_id) or Person(account_id, account_id, is_bot=account_id.startswith("28:"))

    async def presence(self, channel: str) -> list[Person]:
        return list(self._present.get(channel, {}).values())


def approval_card(approval_id: int) -> dict[str, Any]:
    """Approve/Deny as Action.Submit: Teams sends the data back as the `value` of a message
    Activity, signed by the channel like any other."""
    def action(title: str, decision: str, style: str) -> dict[str, Any]:
        return {"type": "Action.Submit", "title": title, "style": style,
                "data": {"opsroom": "approval", "approval_id": approval_id, "decision": decision}}

    return {"contentType": "application/vnd.microsoft.card.adaptive", "content": {
        "type": "AdaptiveCard", "$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "version": "1.4",
        "body": [{"type": "TextBlock", "text": f"Request #{approval_id}", "weight": "bolder"}],
        "actions": [action("Approve", "approve", "positive"), action("Deny", "deny", "destructive")]}}
