"""XMPP multi-user chat (XEP-0045) over slixmpp: the maintained asyncio XMPP library (stream
negotiation, STARTTLS, SASL, XML escaping are its job); the MUC part opsroom needs (join, the
occupants' presences, groupchat messages) is done here on raw stanzas, so what counts as
history, a duplicate or a bot is decided in one place we can read.

Identity: an occupant is their real bare JID when the room shows it (a non-anonymous room, or
the bot is a moderator), else the occupant JID `room@service/nick` (a room nick, which anyone
may take once it is free; see docs/chat/xmpp.md). History the room replays on join (a `delay` element) is never taken as
something said now.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections import defaultdict
from typing import Any

import structlog
from pydantic import Field, SecretStr

from opsroom.chat import safe
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
from opsroom.runtime import Runtime

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S = 30.0
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_DELAY = "urn:xmpp:delay"
NS_SID = "urn:xmpp:sid:0"
# XML 1.0 allows neither these characters nor lone surrogates: one in a body would make the
# server close our stream.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class XmppConfig(PlatformConfig):
    jid: str  # the bot's account, opsroom@example.org
    password: SecretStr
    nick: str = "opsroom"  # its nick in the rooms
    host: str | None = None  # where to connect, when not the JID's domain (DNS SRV)
    port: int = 5222
    direct_tls: bool = False  # TLS from the first byte (XEP-0368, port 5223) instead of STARTTLS
    tls_verify: bool = True
    ca_file: str | None = None  # a CA (or the self-signed cert) to trust besides the system's
    bots: list[str] = Field(default_factory=list)  # other bots, by bare JID or room nick: never answered
    # Servers throttle c2s by bytes (prosody's mod_limits); a room message is well under 1 kB.
    rate_per_s: float = Field(default=5.0, gt=0, le=50)
    burst: int = Field(default=10, ge=1, le=50)


class XmppAdapter(ChatAdapter):
    platform = "xmpp"
    Config = XmppConfig

    def __init__(self, *, name: str = "xmpp", config: XmppConfig, rt: Runtime | None = None) -> None:
        self.name = name
        self.config = config
        self.capabilities = Capabilities(formatting="plain", max_chars=3000, rate_per_s=config.rate_per_s,
                                         burst=config.burst)
        self.rooms: dict[str, str] = {}  # bare room JID, lower case -> as bound
        self.joined: set[str] = set()
        self.occupants: dict[str, dict[str, str | None]] = defaultdict(dict)  # room -> nick -> real bare JID
        self._renamed: set[tuple[str, str]] = set()  # (room, new nick) announced by a 303 presence
        self._bots = {b.lower() for b in config.bots}
        self._sink: AdapterSink | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self._stopping = False
        self.connects = 0
        self.failures = 0  # connection attempts that ended in an error (refused, TLS, auth)

    # --- the contract ----------------------------------------------------

    async def start(self, sink: AdapterSink, channels: list[str]) -> None:
        self._sink = sink
        self.rooms = {c.lower(): c for c in channels}
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"xmpp:{self.name}")

    async def stop(self) -> None:
        self._stopping = True
        client = self._client
        if client is not None and self.is_connected():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await client.disconnect(wait=1.0)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        self._forget()

    def is_connected(self) -> bool:
        return self._client is not None and bool(self._client.is_connected()) and bool(self.joined)

    def status(self) -> dict[str, Any]:
        return {"joined": sorted(self.joined), "connects": self.connects, "failures": self.failures}

    async def identify(self, account_id: str) -> Person:
        return Person(account_id, account_id.split("@", 1)[0], is_bot=self._is_bot(account_id, ""))

    async def presence(self, channel: str) -> list[Person]:
        room = channel.lower()
        return [self._person(room, nick) for nick in sorted(self.occupants[room]) if nick != self.config.nick]

    async def deliver(self, out: Outgoing) -> None:
        room = out.channel.lower()
        direct = room not in self.rooms  # a reply to a direct message: the channel is a bare JID
        client = self._client
        if client is None or not client.is_connected() or (not direct and room not in self.joined):
            raise DeliveryFailed(f"not in {out.channel} now", transient=True)
        text = _NOT_XML.sub("", safe.render(out, self.capabilities, mention=lambda m: self._mention(room, m)))
        # slixmpp builds the stanza as an element tree: the body is character data, escaped on
        # the way out, so "</body><message ..." in a runbook's output stays text.
        if direct:
            client.send_message(mto=out.channel, mbody=text, mtype="chat")
        else:
            client.send_message(mto=self.rooms[room], mbody=text, mtype="groupchat")

    def _mention(self, room: str, m: Mention) -> str:
        """An occupant is highlighted by their room nick: the one whose real JID is linked."""
        for nick, jid in self.occupants[room].items():
            if jid is not None and jid == m.account_id.lower():
                return nick
        return m.display_name

    # --- the connection --------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff()
        while not self._stopping:
            was_up = False
            try:
                was_up = await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                log.warning("xmpp connection failed", platform=self.name, jid=self.config.jid, error=str(exc))
            finally:
                self._forget()
            if self._stopping:
                return
            if was_up:
                backoff.reset()
            await backoff.wait()

    def _tls(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.config.ca_file)
        if not self.config.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def _session(self) -> bool:
        """One connection, from connect to disconnect; whether it got as far as a session."""
        import slixmpp
        from slixmpp.xmlstream.handler import Callback
        from slixmpp.xmlstream.matcher import MatchXPath

        cfg = self.config
        client = slixmpp.ClientXMPP(cfg.jid, cfg.password.get_secret_value())
        client.ssl_context = self._tls()
        client.enable_plaintext = False  # never without TLS
        client.enable_direct_tls, client.enable_starttls = cfg.direct_tls, not cfg.direct_tls
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        ended: asyncio.Future[None] = loop.create_future()

        def settle(fut: asyncio.Future[None], exc: BaseException | None = None) -> None:
            if not fut.done():
                fut.set_exception(exc) if exc is not None else fut.set_result(None)

        client.add_event_handler("session_start", lambda _e: settle(started))
        client.add_event_handler("failed_auth", lambda _e: settle(started, ConnectionError("authentication failed")))
        client.add_event_handler("connection_failed",
                                 lambda e: settle(started, ConnectionError(f"cannot connect: {e}")))
        def disconnected(_event: object) -> None:
            settle(started, ConnectionError("disconnected"))
            settle(ended)

        client.add_event_handler("disconnected", disconnected)
        client.register_handler(Callback("opsroom muc presence", MatchXPath("{jabber:client}presence"),
                                         lambda p: loop.create_task(self._on_presence(p))))
        client.add_event_handler("message", self._on_message)
        self._client = client
        try:
            client.connect(cfg.host or None, cfg.port if cfg.host else None)
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await started
            client.send_presence()
            self.connects += 1
            log.info("xmpp connected", platform=self.name, jid=cfg.jid)
            for room in self.rooms.values():
                join = client.make_presence(pto=f"{room}/{cfg.nick}")
                x = join.xml.makeelement(f"{{{NS_MUC}}}x", {})
                # No history: what was said before we came is not a command now (the delay check
                # below is the guarantee; this only saves the traffic).
                x.append(x.makeelement(f"{{{NS_MUC}}}history", {"maxstanzas": "0"}))
                join.xml.append(x)
                join.send()
            await ended
            return True
        finally:
            client.cancel_connection_attempt()
            if client.is_connected():
                with contextlib.suppress(Exception):
                    client.abort()

    def _forget(self) -> None:
        self._client = None
        self.joined.clear()
        self.occupants.clear()

    # --- inbound ---------------------------------------------------------

    def _is_bot(self, jid: str, nick: str) -> bool:
        own = jid.lower() == self.config.jid.split("/", 1)[0].lower()
        return own or nick == self.config.nick or jid.lower() in self._bots or nick.lower() in self._bots

    def _person(self, room: str, nick: str) -> Person:
        jid = self.occupants[room].get(nick)
        # Anonymous room: the nick is all there is, and it is only the room's to vouch for.
        account = jid if jid else f"{self.rooms.get(room, room)}/{nick}"  # the occupant JID
        return Person(platform_id=account, display_name=nick, is_bot=self._is_bot(jid or "", nick))

    async def _on_presence(self, pres: Any) -> None:
        room, nick = str(pres["from"].bare).lower(), pres["from"].resource
        if room not in self.rooms or not nick:
            return
        x = pres.xml.find(f"{{{NS_MUC_USER}}}x")
        if x is None:
            return
        item = x.find(f"{{{NS_MUC_USER}}}item")
        real = item.get("jid") if item is not None else None
        jid = real.split("/", 1)[0].lower() if real else None
        codes = {s.get("code") for s in x.findall(f"{{{NS_MUC_USER}}}status")}
        gone = pres["type"] == "unavailable"
        if "110" in codes:  # our own presence: the room has us (or let us go)
            if gone:
                self.joined.discard(room)
            else:
                self.joined.add(room)
            return
        if pres["type"] == "error":
            log.warning("xmpp room refused us", platform=self.name, room=room,
                        error=str(pres["error"]["condition"]))
            return
        known = nick in self.occupants[room]
        if gone and "303" in codes and item is not None and item.get("nick"):
            self._renamed.add((room, item.get("nick", "")))  # a nick change: the same person stays
        renamed = not gone and (room, nick) in self._renamed
        self._renamed.discard((room, nick))
        if gone:
            person = self._person(room, nick)
            self.occupants[room].pop(nick, None)
        else:
            self.occupants[room][nick] = jid
            person = self._person(room, nick)
        # Before our own presence arrives the room is telling us who is there already: not news.
        if room in self.joined and self._sink is not None and (gone or not known) and "303" not in codes \
                and not renamed:
            await self._sink.presence(self, self.rooms[room], person, not gone)

    async def _on_message(self, msg: Any) -> None:
        if msg["type"] in ("chat", "normal"):
            await self._on_direct(msg)
            return
        room, nick = str(msg["from"].bare).lower(), msg["from"].resource
        sink = self._sink
        if msg["type"] != "groupchat" or sink is None or room not in self.rooms or not nick or room not in self.joined:
            return
        if msg.xml.find(f"{{{NS_DELAY}}}delay") is not None:
            return  # history replayed on join: said before, not now
        if nick == self.config.nick:
            return  # the room reflecting our own message
        body = msg["body"]
        if not body:
            return
        person = self._person(room, nick)
        origin = msg.xml.find(f"{{{NS_SID}}}origin-id")
        stanza_id = origin.get("id") if origin is not None else msg["id"]
        # The sender's id for the message: a client (or stream resumption) sending it again
        # reuses it, while the room stamps every copy with a new stanza-id.
        delivery = f"{person.platform_id}/{stanza_id}" if stanza_id else None
        await sink.message(self, Incoming(self.rooms[room], body, author=person, delivery_id=delivery))

    async def _on_direct(self, msg: Any) -> None:
        """A message to the bot itself from an account (authenticated by its server): the hub
        takes only `link CODE`, `whoami` and `help` there, so a code need not be typed in a room.
        Private messages through a room (from room/nick) are ignored: a nick is no identity."""
        sender = str(msg["from"].bare).lower()
        body = msg["body"]
        if (self._sink is None or not body or not sender or sender in self.rooms or self._is_bot(sender, "")
                or msg.xml.find(f"{{{NS_DELAY}}}delay") is not None or any(
                    sender.endswith("@" + r.split("@", 1)[-1]) for r in self.rooms)):
            return
        person = Person(platform_id=sender, display_name=sender.split("@", 1)[0])
        delivery = f"{sender}/{msg['id']}" if msg["id"] else None
        await self._sink.message(self, Incoming(sender, body, author=person, delivery_id=delivery))
