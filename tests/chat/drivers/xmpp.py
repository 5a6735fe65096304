"""The XMPP driver: a real prosody on loopback (tests/chat/servers/prosody.py), one fresh MUC
room per test, the people as bare slixmpp clients (STARTTLS verified against the test
certificate) that join the room and record every groupchat message.

What the bot posted is read as alice's client shows it. After a server restart the room is
gone and recreated by whoever joins first; alice asks for the room's history on joining, so
what the bot said before she was back is still seen (once: the old room's history died with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from pathlib import Path
from typing import Any

import slixmpp

from tests.chat.driver import Driver
from tests.chat.servers.prosody import DOMAIN, MUC, Prosody, password, shared

BOT = "opsroom"
TIMEOUT = 15.0
NS_MUC = "http://jabber.org/protocol/muc"


class XmppPerson:
    """One person's XMPP client in one room."""

    def __init__(self, user: str, server: Prosody, room: str, *, history: bool = False,
                 nick: str | None = None) -> None:
        self.user, self.server, self.room, self.history = user, server, room, history
        self.nick = nick or user  # the room nick; anyone may ask for any free one
        self.heard: list[tuple[str, str, bool]] = []  # (nick, body, replayed from history)
        self.present: set[str] = set()
        self.raw: list[Any] = []
        self.client: Any = None
        self._joined = asyncio.Event()
        self._gone = asyncio.Event()
        self._new = asyncio.Event()

    async def connect(self) -> None:
        client = slixmpp.ClientXMPP(f"{self.user}@{DOMAIN}", password(self.user))
        client.ssl_context = ssl.create_default_context(cafile=str(self.server.cert))
        client.enable_direct_tls, client.enable_plaintext = False, False
        self._joined.clear()
        self._gone.clear()
        started = asyncio.get_running_loop().create_future()
        client.add_event_handler("session_start", lambda _e: started.done() or started.set_result(None))
        client.add_event_handler("disconnected", lambda _e: self._gone.set())
        client.add_event_handler("message", self._message)
        client.add_event_handler("presence", self._presence)
        self.client = client
        client.connect("127.0.0.1", self.server.port)
        async with asyncio.timeout(TIMEOUT):
            await started
        client.send_presence()
        join = client.make_presence(pto=f"{self.room}/{self.nick}")
        x = join.xml.makeelement(f"{{{NS_MUC}}}x", {})
        x.append(x.makeelement(f"{{{NS_MUC}}}history", {"maxstanzas": "50" if self.history else "0"}))
        join.xml.append(x)
        join.send()
        async with asyncio.timeout(TIMEOUT):
            await self._joined.wait()

    def _presence(self, pres: Any) -> None:
        if str(pres["from"].bare) != self.room:
            return
        nick = pres["from"].resource
        if pres["type"] == "unavailable":
            self.present.discard(nick)
        else:
            self.present.add(nick)
            if nick == self.nick:
                self._joined.set()
        self._new.set()

    def _message(self, msg: Any) -> None:
        self.raw.append(msg)
        if msg["type"] == "groupchat" and str(msg["from"].bare) == self.room and msg["body"]:
            delayed = msg.xml.find("{urn:xmpp:delay}delay") is not None
            self.heard.append((msg["from"].resource, msg["body"], delayed))
            self._new.set()

    def say(self, text: str, *, msg_id: str | None = None, to: str | None = None) -> str:
        msg = self.client.make_message(mto=to or self.room, mbody=text, mtype="groupchat")
        msg["id"] = msg_id or uuid.uuid4().hex
        msg.send()
        return str(msg["id"])

    async def wait_present(self, nick: str) -> None:
        async with asyncio.timeout(TIMEOUT):
            while nick not in self.present:
                self._new.clear()
                await self._new.wait()

    async def wait_gone(self) -> None:
        async with asyncio.timeout(TIMEOUT):
            await self._gone.wait()

    async def quit(self) -> None:
        if self.client is not None and self.client.is_connected():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3):
                    await self.client.disconnect(wait=1.0)
        if self.client is not None:
            self.client.cancel_connection_attempt()


class XmppDriver(Driver):
    name = "xmpp"
    buttons = False
    streams = False
    others = ("otherbot",)

    def __init__(self, *, platform_settings: dict[str, Any] | None = None) -> None:
        self.settings = platform_settings or {}
        self.server: Prosody | None = None
        self.room = f"ops-{uuid.uuid4().hex[:8]}@{MUC}"
        self.clients: dict[str, XmppPerson] = {}
        self._last: tuple[str, str, str] | None = None

    async def start(self, tmp: Path) -> None:
        self.server = await asyncio.to_thread(shared)
        for user in (*self.people, *self.others):
            self.clients[user] = XmppPerson(user, self.server, self.room, history=user == "alice")
        await self.clients["alice"].connect()  # the room's creator, so it exists non-anonymous
        await asyncio.gather(*(c.connect() for u, c in self.clients.items() if u != "alice"))

    async def attach(self, served: Any) -> None:
        await self.clients["alice"].wait_present(BOT)

    async def stop(self) -> None:
        await asyncio.gather(*(c.quit() for c in self.clients.values()))
        if self.server is not None and not self.server.running:
            await asyncio.to_thread(self.server.start)  # leave the shared server as we found it

    @property
    def srv(self) -> Prosody:
        assert self.server is not None, "start() the driver first"
        return self.server

    def platform_item(self) -> dict[str, Any]:
        return {"name": self.name, "type": "xmpp", "jid": f"{BOT}@{DOMAIN}", "password": password(BOT),
                "host": "127.0.0.1", "port": self.srv.port, "ca_file": str(self.srv.cert), "nick": BOT,
                "bots": [f"otherbot@{DOMAIN}"], **self.settings}

    @property
    def channel(self) -> str:
        return self.room

    def account_id(self, person: str) -> str:
        return f"{person}@{DOMAIN}"  # the real JID: the test rooms are non-anonymous

    def mentions(self, text: str, person: str) -> bool:
        return person in text.replace(":", " ").replace(",", " ").split()

    async def say(self, person: str, text: str) -> None:
        msg_id = self.clients[person].say(text)
        self._last = (person, text, msg_id)

    async def redeliver(self) -> None:
        assert self._last is not None, "nobody said anything yet"
        person, text, msg_id = self._last
        self.clients[person].say(text, msg_id=msg_id)  # the same message again, same id

    async def bot_says(self, text: str) -> None:
        self.clients["otherbot"].say(text)

    def received(self) -> list[str]:
        return [body for nick, body, _ in self.clients["alice"].heard if nick == BOT]

    async def server_down(self) -> None:
        await asyncio.to_thread(self.srv.stop)
        await asyncio.gather(*(c.wait_gone() for c in self.clients.values()))

    async def server_up(self) -> None:
        await asyncio.to_thread(self.srv.start)
        await self.clients["alice"].connect()
        await asyncio.gather(*(c.connect() for u, c in self.clients.items() if u != "alice"))


DRIVER = XmppDriver
