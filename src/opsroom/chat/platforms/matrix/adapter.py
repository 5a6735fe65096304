"""Matrix: the client-server API as one bot account (a /sync long poll in, PUT send out).

What people say arrives through /sync with a since token, filtered to the bound rooms; on the
first start the history the server hands back is skipped (a command said yesterday is not run
today), and after a reconnect the since token resumes exactly where the last sync ended, so a
line is neither lost nor replayed; event ids are remembered besides, so a sync that hands an
event back twice is answered once.

Each send is a PUT with a transaction id derived from the opsroom message id: a send retried
after a timeout or a homeserver restart is the same transaction to Synapse (which keeps
transaction ids in its database), so the room shows it once.

Only the plain `body` of a message is read, never `formatted_body`: the body is what opsroom
answers and audits, and a client can make the two say different things. Matrix has no buttons:
approvals are by text (`approve N`). Our own messages go out as m.notice, which clients and
bots must never answer, except a request that mentions its approvers: the default push rules
silence every m.notice, mentions included, so that one is m.text.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import html
import json
import re
import secrets
from collections import OrderedDict
from typing import Any
from urllib.parse import quote

import structlog
from pydantic import SecretStr, field_validator, model_validator

from opsroom.chat.backoff import Backoff
from opsroom.chat.base import (
    AdapterSink,
    Capabilities,
    ChatAdapter,
    DeliveryFailed,
    Incoming,
    Mention,
    Outgoing,
    Person,
    PlatformConfig,
)
from opsroom.chat.platforms.matrix.client import MatrixClient, MatrixError, Unreachable
from opsroom.chat.safe import neutralise, render
from opsroom.runtime import Runtime

log = structlog.get_logger(__name__)

USER_ID = re.compile(r"@[^:\s]+:[^\s]+")
REJOIN_EVERY_S = 30.0  # a bound room the bot could not join yet (not invited) is tried again
SEEN_EVENTS = 5000
# A send while the homeserver is away waits this long for the sync loop to get through before
# it fails (and the send queue backs off): what was queued goes out as soon as the server is back.
RECONNECT_WAIT_S = 10.0
HISTORY_LIMIT = 1  # the first sync's timeline is skipped: ask for as little of it as possible


class MatrixConfig(PlatformConfig):
    """The catalog's `platforms:` item for a Matrix homeserver (see docs/chat/matrix.md)."""

    homeserver: str  # https://matrix.example.org (the client-server API base URL)
    user_id: str  # @opsroom:example.org
    access_token: SecretStr | None = None  # ${MATRIX_TOKEN}; or password, to log in at start
    password: SecretStr | None = None
    device_id: str | None = None  # with password: reuse one device instead of a new one per start
    # Other bots in the bound rooms that send m.text (bots that follow the spec send m.notice,
    # which is never answered anyway): their lines are never taken as commands.
    bots: list[str] = []
    # Synapse's default per-account message limit (rc_message): 0.2/s, bursts of 10. A homeserver
    # admin can lift it for the bot (override_ratelimit); then raise these to match.
    rate_per_s: float = 0.2
    burst: int = 10
    max_chars: int = 4000  # events are at most 64 KiB, body and formatted_body together
    sync_timeout_s: float = 30.0

    @field_validator("homeserver")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", v):
            raise ValueError("homeserver is the client-server API URL, e.g. https://matrix.example.org")
        return v.rstrip("/")

    @field_validator("user_id")
    @classmethod
    def _user(cls, v: str) -> str:
        if not USER_ID.fullmatch(v):
            raise ValueError("user_id is a full Matrix id, e.g. @opsroom:example.org")
        return v

    @model_validator(mode="after")
    def _auth(self) -> MatrixConfig:
        if (self.access_token is None) == (self.password is None):
            raise ValueError("give exactly one of access_token and password")
        if self.rate_per_s <= 0 or self.burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        return self


class MatrixAdapter(ChatAdapter):
    platform = "matrix"
    Config = MatrixConfig

    def __init__(self, *, name: str, config: MatrixConfig, rt: Runtime | None = None) -> None:
        self.name = name
        self.config = config
        self.rt = rt
        self.capabilities = Capabilities(buttons=False, formatting="html", max_chars=config.max_chars,
                                         rate_per_s=config.rate_per_s, burst=config.burst)
        token = config.access_token.get_secret_value() if config.access_token else None
        self.client = MatrixClient(config.homeserver, access_token=token)
        self.me = config.user_id  # replaced by whoami's answer once connected
        self.bots = frozenset(config.bots)
        self.channels: list[str] = []
        self.room_of: dict[str, str] = {}  # bound channel (room id or alias) -> room id
        self.channel_of: dict[str, str] = {}  # room id -> bound channel
        self.names: dict[str, dict[str, str]] = {}  # room id -> user id -> display name
        self.since: str | None = None
        self._live: set[str] = set()  # rooms whose timeline is news (not history) from now on
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._connected = False
        self._up = asyncio.Event()  # set while the sync loop gets answers
        self._sink: AdapterSink | None = None
        # What people said and who came and went, in timeline order: (channel, person, joined).
        self._inbox: asyncio.Queue[Incoming | tuple[str, Person, bool]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._boot = secrets.token_hex(4)  # transaction ids are unique per device across restarts
        self._last_txn: tuple[Outgoing, str] | None = None
        self._joins_tried = 0.0

    # --- lifecycle ---------------------------------------------------------

    async def start(self, sink: AdapterSink, channels: list[str]) -> None:
        self._sink, self.channels = sink, list(channels)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(), name=f"matrix-sync:{self.name}"),
                       loop.create_task(self._hand_in(), name=f"matrix-in:{self.name}")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        self._connected = False
        await self.client.close()

    def is_connected(self) -> bool:
        return self._connected

    def status(self) -> dict[str, Any]:
        return {"rooms_joined": len(self.channel_of), "rooms_bound": len(self.channels)}

    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            told: float | None = None  # how long the homeserver asked us to wait (429)
            try:
                await self._connect()
                wait = False  # the first sync after (re)connecting answers at once: then we are up
                while True:
                    await self._sync_once(wait=wait)
                    wait = True
                    self._connected = True
                    self._up.set()
                    backoff.reset()
                    if len(self.room_of) < len(self.channels):
                        await self._join_missing()
            except asyncio.CancelledError:
                raise
            except Unreachable as exc:
                log.info("matrix homeserver unreachable", platform=self.name, error=str(exc))
            except MatrixError as exc:
                log.warning("matrix homeserver refused", platform=self.name, error=str(exc))
                if exc.errcode == "M_UNKNOWN_TOKEN" and self.config.password is not None:
                    self.client.access_token = None  # log in again on the next round
                told = exc.retry_after
            except Exception:
                log.exception("matrix sync failed", platform=self.name)
            self._connected = False
            self._up.clear()
            await backoff.wait(at_least=told or 0.0)

    async def _connect(self) -> None:
        if self.client.access_token is None and self.config.password is not None:
            await self.client.login(self.config.user_id, self.config.password.get_secret_value(),
                                    self.config.device_id)
        me = await self.client.whoami()
        if me != self.config.user_id:
            log.warning("matrix token belongs to another account", platform=self.name,
                        configured=self.config.user_id, actual=me)
        self.me = me  # our own lines are recognised by the account the homeserver says we are
        await self._join_missing(force=True)

    async def _join_missing(self, *, force: bool = False) -> None:
        now = asyncio.get_running_loop().time()
        if not force and now - self._joins_tried < REJOIN_EVERY_S:
            return
        self._joins_tried = now
        for channel in self.channels:
            if channel in self.room_of:
                continue
            try:
                room_id = await self.client.join(channel)
            except MatrixError as exc:
                log.warning("matrix: cannot join a bound room", platform=self.name, channel=channel, error=str(exc))
                continue
            self.room_of[channel] = room_id
            self.channel_of.setdefault(room_id, channel)

    def _filter(self) -> str:
        rooms = sorted(self.channel_of)
        limit = HISTORY_LIMIT if self.since is None else 100
        return json.dumps({
            "presence": {"not_types": ["*"]},
            "account_data": {"not_types": ["*"]},
            "room": {"rooms": rooms, "account_data": {"not_types": ["*"]}, "ephemeral": {"not_types": ["*"]},
                     "state": {"types": ["m.room.member"]},
                     "timeline": {"types": ["m.room.message", "m.room.member"], "limit": limit}},
        }, separators=(",", ":"))

    async def _sync_once(self, *, wait: bool) -> None:
        first = self.since is None
        timeout_ms = int(self.config.sync_timeout_s * 1000) if wait and not first else 0
        data = await self.client.sync(since=self.since, timeout_ms=timeout_ms, filter_json=self._filter())
        joined = (data.get("rooms") or {}).get("join") or {}
        queued = self._inbox.qsize()
        for room_id, room in joined.items():
            if room_id in self.channel_of:
                await self._room(room_id, room, history=first)
        if first:
            self._live.update(self.channel_of)
        next_batch = data.get("next_batch")
        if isinstance(next_batch, str):
            self.since = next_batch
        if self._inbox.qsize() > queued:
            # One loop turn for _hand_in before the next /sync is built and sent (~0.3 ms of
            # aiohttp): the hub starts on the line at once, and the request goes out while the
            # hub waits on its first database read.
            await asyncio.sleep(0)

    # --- what comes in -------------------------------------------------------

    async def _room(self, room_id: str, room: dict[str, Any], *, history: bool) -> None:
        names = self.names.setdefault(room_id, {})
        for ev in (room.get("state") or {}).get("events") or ():
            self._member(names, ev)
        events = (room.get("timeline") or {}).get("events") or ()
        if not history and room_id not in self._live:
            # A room joined since the last sync: what precedes our own join is its history.
            mine = [i for i, ev in enumerate(events) if ev.get("type") == "m.room.member"
                    and ev.get("state_key") == self.me and (ev.get("content") or {}).get("membership") == "join"]
            for ev in events[: mine[-1] + 1 if mine else len(events)]:
                self._member(names, ev)
            events = events[mine[-1] + 1:] if mine else ()
        self._live.add(room_id)
        for ev in events:
            event_id = ev.get("event_id")
            if not isinstance(event_id, str) or not self._first_time(event_id):
                continue
            if ev.get("type") == "m.room.member":
                self._membership(room_id, names, ev, history=history)
            elif ev.get("type") == "m.room.message" and not history:
                incoming = self._incoming(room_id, names, ev)
                if incoming is not None:
                    self._inbox.put_nowait(incoming)

    def _first_time(self, event_id: str) -> bool:
        if event_id in self._seen:
            return False
        self._seen[event_id] = None
        if len(self._seen) > SEEN_EVENTS:
            self._seen.popitem(last=False)
        return True

    @staticmethod
    def _member(names: dict[str, str], ev: dict[str, Any]) -> None:
        if ev.get("type") != "m.room.member" or not isinstance(ev.get("state_key"), str):
            return
        content = ev.get("content") or {}
        if content.get("membership") == "join":
            name = content.get("displayname")
            names[ev["state_key"]] = name if isinstance(name, str) and name.strip() else ""
        else:
            names.pop(ev["state_key"], None)

    def _membership(self, room_id: str, names: dict[str, str], ev: dict[str, Any], *, history: bool) -> None:
        user = ev["state_key"] if isinstance(ev.get("state_key"), str) else ""
        was = ((ev.get("unsigned") or {}).get("prev_content") or {}).get("membership")
        leaving = self._person(room_id, user) if user else None  # named as they were, before they go
        self._member(names, ev)
        now = (ev.get("content") or {}).get("membership")
        if history or user == self.me or leaving is None or (now == "join") == (was == "join"):
            return  # a display name change is no arrival; our own joins are not news
        person = self._person(room_id, user) if now == "join" else leaving
        self._inbox.put_nowait((self.channel_of[room_id], person, now == "join"))

    def _incoming(self, room_id: str, names: dict[str, str], ev: dict[str, Any]) -> Incoming | None:
        sender = ev.get("sender")
        content = ev.get("content") or {}
        if not isinstance(sender, str) or sender == self.me:
            return None  # never our own lines, from this process or another device
        relates = content.get("m.relates_to") or {}
        if relates.get("rel_type") == "m.replace":
            return None  # an edit: the original line was already answered
        body = content.get("body")
        msgtype = content.get("msgtype")
        if not isinstance(body, str) or msgtype not in ("m.text", "m.notice"):
            return None
        if isinstance(relates.get("m.in_reply_to"), dict):
            body = _strip_reply_fallback(body)
        person = self._person(room_id, sender)
        if msgtype == "m.notice":
            person = dataclasses.replace(person, is_bot=True)  # the spec's mark of an automated client
        return Incoming(channel=self.channel_of[room_id], text=body, author=person, delivery_id=ev["event_id"])

    def _person(self, room_id: str, user_id: str) -> Person:
        names = self.names.get(room_id, {})
        name = names.get(user_id) or _localpart(user_id)
        # A display name is whatever its owner typed: when it is another member's name, or looks
        # like an account id, the account id goes with it (identity itself is the id, always).
        clash = any(n.casefold() == name.casefold() for u, n in names.items() if u != user_id and n) \
            or (name.startswith("@") and name != user_id)
        display = f"{name} ({user_id})" if clash else name
        return Person(platform_id=user_id, display_name=display, is_bot=user_id == self.me or user_id in self.bots)

    async def _hand_in(self) -> None:
        # Apart from the sync loop, so a command that takes a while never holds up the next sync.
        while True:
            item = await self._inbox.get()
            try:
                if self._sink is None:
                    continue
                if isinstance(item, Incoming):
                    await self._sink.message(self, item)
                else:
                    await self._sink.presence(self, *item)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("matrix: handing a message to the hub failed", platform=self.name)

    # --- what goes out -------------------------------------------------------

    async def deliver(self, out: Outgoing) -> None:
        if not self._connected:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECONNECT_WAIT_S):
                    await self._up.wait()
        if not self._connected:
            raise DeliveryFailed("matrix: the homeserver is away", transient=True)
        room_id = self.room_of.get(out.channel) or (out.channel if out.channel.startswith("!") else None)
        if room_id is None or self.client.access_token is None:
            raise DeliveryFailed(f"matrix: not in {out.channel} yet", transient=True)
        try:
            await self.client.send(room_id, self._txn(out), self.content(out))
        except Unreachable as exc:
            raise DeliveryFailed(f"matrix: {exc}", transient=True) from None
        except MatrixError as exc:
            raise await self._refused(out, exc) from None
        self._last_txn = None

    async def _refused(self, out: Outgoing, exc: MatrixError) -> DeliveryFailed:
        if exc.status == 429:
            return DeliveryFailed(f"matrix: {exc}", transient=True, retry_after=exc.retry_after or 1.0)
        if exc.errcode == "M_FORBIDDEN":
            # Not in the room (kicked, or the invite came after start): join, and the send queue
            # tries again; a room we cannot join is a refusal for good.
            try:
                room_id = await self.client.join(out.channel)
            except Unreachable:
                return DeliveryFailed(f"matrix: {exc}", transient=True)
            except MatrixError as join_exc:
                return DeliveryFailed(f"matrix: {exc}; joining: {join_exc}", transient=False)
            self.room_of[out.channel] = room_id
            self.channel_of.setdefault(room_id, out.channel)
            return DeliveryFailed(f"matrix: rejoined {out.channel}", transient=True)
        if exc.errcode == "M_UNKNOWN_TOKEN" and self.config.password is not None:
            return DeliveryFailed(f"matrix: {exc}", transient=True)  # the sync loop logs in again
        return DeliveryFailed(f"matrix: {exc}", transient=False)

    def _txn(self, out: Outgoing) -> str:
        """The same transaction id every time this message is tried, so the homeserver keeps
        one event however many times the send queue retries it."""
        if out.message_id is not None:
            key = f"m{out.message_id}"
        elif self._last_txn is not None and self._last_txn[0] is out:
            return self._last_txn[1]
        else:
            key = "x" + secrets.token_hex(6)
        channel = hashlib.sha256(out.channel.encode()).hexdigest()[:10]
        txn = f"opsroom.{self._boot}.{key}.{channel}"
        self._last_txn = (out, txn)
        return txn

    def content(self, out: Outgoing) -> dict[str, Any]:
        """The m.room.message content for one Outgoing: a plain body and its HTML twin, both
        rendered by chat/safe.py, and the approvers as intentional mentions (m.mentions)."""
        plain = render(out, dataclasses.replace(self.capabilities, formatting="plain"),
                       mention=lambda m: neutralise(m.display_name) or _localpart(m.account_id))
        formatted = render(out, self.capabilities, mention=_pill).replace("\n", "<br>")
        users = sorted({m.account_id for m in out.mentions if USER_ID.fullmatch(m.account_id)})
        # m.mentions, even empty, tells clients that nothing but these users is mentioned: no
        # @room from text, however it is spelt.
        return {"msgtype": "m.text" if users else "m.notice", "body": plain, "format": "org.matrix.custom.html",
                "formatted_body": formatted, "m.mentions": {"user_ids": users}}

    # --- who is who ------------------------------------------------------------

    async def identify(self, account_id: str) -> Person:
        name = None
        with contextlib.suppress(Unreachable, MatrixError):
            name = await self.client.displayname(account_id)
        return Person(platform_id=account_id, display_name=name or _localpart(account_id),
                      is_bot=account_id == self.me or account_id in self.bots)

    async def presence(self, channel: str) -> list[Person]:
        room_id = self.room_of.get(channel)
        if room_id is None:
            return []
        try:
            joined = await self.client.joined_members(room_id)
        except (Unreachable, MatrixError):
            return []
        names = self.names.setdefault(room_id, {})
        for user_id, info in joined.items():
            if isinstance(info, dict) and isinstance(info.get("display_name"), str):
                names[user_id] = info["display_name"]
        return [self._person(room_id, user_id) for user_id in sorted(joined)]


def _localpart(user_id: str) -> str:
    return user_id[1:].split(":", 1)[0] if user_id.startswith("@") else user_id


def _pill(m: Mention) -> str:
    """A mention as Matrix clients draw it: a matrix.to link to the account (a "pill")."""
    if not USER_ID.fullmatch(m.account_id):
        return html.escape(neutralise(m.display_name))
    href = "https://matrix.to/#/" + quote(m.account_id, safe="@:")
    return f'<a href="{html.escape(href)}">{html.escape(neutralise(m.display_name) or _localpart(m.account_id))}</a>'


def _strip_reply_fallback(body: str) -> str:
    """A reply's body may start with the quoted message (`> <@x:y> ...` lines, then a blank
    line): what the person said is after it."""
    lines = body.split("\n")
    i = 0
    while i < len(lines) and lines[i].startswith(">"):
        i += 1
    if 0 < i < len(lines) and lines[i] == "":
        return "\n".join(lines[i + 1:])
    return body
