"""The IRC driver: a real ngircd on loopback (tests/chat/servers/ngircd.py), one fresh channel
per test, the people as bare asyncio IRC clients on the plain port; opsroom's adapter speaks
TLS (verified against the test certificate) through a byte-for-byte TCP gate.

Why the gate: IRC keeps no history, so after a server restart a person who is not back in the
channel yet misses what the bot sends. server_up() reconnects the people first and only then
lets the bot's connection through, which makes "delivered after reconnect" observable without
racing. The TLS session runs end to end through it, untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path
from typing import Any

from tests.chat.driver import Driver
from tests.chat.servers.ngircd import Ngircd, shared
from tests.factories import free_port

BOT_NICK = "opsroom"
TIMEOUT = 15.0


def _line(data: bytes) -> tuple[str, str, list[str]]:
    """(nick, command, params) of a received line: small on purpose, independent of the adapter."""
    text = data.decode("utf-8", "replace").rstrip("\r\n")
    prefix = ""
    if text.startswith(":"):
        prefix, _, text = text[1:].partition(" ")
    head, sep, trailing = text.partition(" :")
    parts = head.split()
    params = parts[1:] + ([trailing] if sep else [])
    return prefix.split("!", 1)[0], (parts[0].upper() if parts else ""), params


class IrcPerson:
    """One person's IRC client: registers, joins, records every PRIVMSG in the channel."""

    def __init__(self, nick: str, port: int, channel: str) -> None:
        self.nick, self.port, self.channel = nick, port, channel
        self.heard: list[tuple[str, str]] = []  # (nick, text) said in the channel
        self.lines: list[tuple[str, str, list[str]]] = []  # everything, for the security tests
        self.writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._joined = asyncio.Event()
        self._closed = asyncio.Event()
        self._new = asyncio.Event()

    async def connect(self) -> None:
        reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._joined.clear()
        self._closed.clear()
        self.send(f"NICK {self.nick}", f"USER {self.nick} 0 * :{self.nick}")
        self._task = asyncio.get_running_loop().create_task(self._read(reader))
        async with asyncio.timeout(TIMEOUT):
            await self._joined.wait()

    def send(self, *lines: str) -> None:
        assert self.writer is not None
        for text in lines:
            self.writer.write(text.encode() + b"\r\n")

    async def say(self, text: str, channel: str | None = None) -> None:
        self.send(f"PRIVMSG {channel or self.channel} :{text}")
        assert self.writer is not None
        await self.writer.drain()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while raw := await reader.readline():
                nick, cmd, params = _line(raw)
                self.lines.append((nick, cmd, params))
                if cmd == "PING":
                    self.send(f"PONG :{params[-1] if params else ''}")
                elif cmd == "001":
                    self.send(f"JOIN {self.channel}")
                elif cmd == "366":
                    self._joined.set()
                elif cmd == "PRIVMSG" and len(params) >= 2:
                    self.heard.append((nick, params[1]) if params[0].lower() == self.channel.lower()
                                      else (nick, f"[{params[0]}] {params[1]}"))
                self._new.set()
        except (ConnectionError, OSError):
            pass
        finally:
            self._closed.set()

    async def wait_closed(self) -> None:
        async with asyncio.timeout(TIMEOUT):
            await self._closed.wait()

    async def quit(self) -> None:
        if self.writer is None:
            return
        with contextlib.suppress(Exception):
            self.send("QUIT :bye")
            await self.writer.drain()
            await self.wait_closed()  # the server let go of the nick
        with contextlib.suppress(Exception):
            self.writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Gate:
    """A TCP pass-through on its own port that can refuse connections (see the module doc)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port, reuse_address=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._pipes):
            w.close()
        self._pipes.clear()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return
        self._pipes.update((writer, up_writer))

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        self._pipes.discard(writer)
        self._pipes.discard(up_writer)


class IrcDriver(Driver):
    name = "irc"
    buttons = False
    streams = False
    others = ("otherbot",)

    def __init__(self, *, platform_settings: dict[str, Any] | None = None) -> None:
        self.settings = platform_settings or {}
        self.server: Ngircd | None = None
        self.chan = f"#ops-{uuid.uuid4().hex[:8]}"
        self.clients: dict[str, IrcPerson] = {}
        self.gate: Gate | None = None

    async def start(self, tmp: Path) -> None:
        self.server = await asyncio.to_thread(shared)
        self.gate = Gate(self.server.tls_port)
        await self.gate.open()
        for nick in (*self.people, *self.others):
            self.clients[nick] = IrcPerson(nick, self.server.port, self.chan)
        await asyncio.gather(*(c.connect() for c in self.clients.values()))

    async def attach(self, served: Any) -> None:
        await self.wait_bot_joined()

    async def wait_bot_joined(self, timeout: float = TIMEOUT) -> None:
        """The bot is in the channel (alice's client saw it join)."""
        alice = self.clients["alice"]
        async with asyncio.timeout(timeout):
            while not any(cmd == "JOIN" and nick.startswith(BOT_NICK) for nick, cmd, _ in alice.lines):
                alice._new.clear()
                await alice._new.wait()

    async def stop(self) -> None:
        await asyncio.gather(*(c.quit() for c in self.clients.values()))
        if self.gate is not None:
            await self.gate.close()
        if self.server is not None and not self.server.running:
            await asyncio.to_thread(self.server.start)  # leave the shared server as we found it

    @property
    def srv(self) -> Ngircd:
        assert self.server is not None, "start() the driver first"
        return self.server

    def platform_item(self) -> dict[str, Any]:
        assert self.gate is not None
        return {"name": self.name, "type": "irc", "host": "localhost", "port": self.gate.port, "tls": True,
                "ca_file": str(self.srv.cert), "nick": BOT_NICK, "bots": list(self.others), **self.settings}

    @property
    def channel(self) -> str:
        return self.chan

    def account_id(self, person: str) -> str:
        return person  # the nick, folded: people's nicks here are lower case already

    def mentions(self, text: str, person: str) -> bool:
        return person in text.split() or f"{person}:" in text or f" {person}" in text

    async def say(self, person: str, text: str) -> None:
        await self.clients[person].say(text)

    async def bot_says(self, text: str) -> None:
        await self.clients["otherbot"].say(text)

    def received(self) -> list[str]:
        return [text for nick, text in self.clients["alice"].heard if nick.startswith(BOT_NICK)]

    async def server_down(self) -> None:
        assert self.gate is not None
        await self.gate.close()
        await asyncio.to_thread(self.srv.stop)
        await asyncio.gather(*(c.wait_closed() for c in self.clients.values()))

    async def server_up(self) -> None:
        assert self.gate is not None
        await asyncio.to_thread(self.srv.start)
        await asyncio.gather(*(c.connect() for c in self.clients.values()))
        await self.gate.open()  # now the bot may come back: everyone is there to hear it


DRIVER = IrcDriver
