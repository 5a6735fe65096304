"""A loopback stand-in for an IRC server's registration, for what Debian's ngircd 26 cannot
show: SASL PLAIN over CAP and the IRCv3 account-tag (ngircd offers only multi-prefix).
It speaks just enough of the wire for the adapter to register, join and receive lines, and
records everything the adapter sent. Everything else is tested against the real ngircd.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib

from tests.factories import free_port


class IrcStub:
    def __init__(self, *, caps: tuple[str, ...] = ("sasl",), accounts: dict[str, str] | None = None) -> None:
        self.caps = caps
        self.accounts = accounts or {}  # SASL user -> password the stub accepts
        self.port = free_port()
        self.got: list[str] = []  # every line the adapter sent
        self.sasl: list[tuple[str, str, str]] = []  # (authzid, authcid, password) offered
        self.joined = asyncio.Event()
        self.closed = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> IrcStub:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        if self._writer is not None:
            self._writer.close()

    def send(self, text: str) -> None:
        assert self._writer is not None
        self._writer.write(text.encode() + b"\r\n")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        nick, capping, registered = "", False, False
        try:
            while raw := await reader.readline():
                line = raw.decode().rstrip("\r\n")
                self.got.append(line)
                cmd, _, rest = line.partition(" ")
                if cmd == "CAP" and rest.startswith("LS"):
                    capping = True
                    # CAP 302 lists may span lines: all but the last carry "*".
                    for cap in self.caps[:-1]:
                        self.send(f":stub CAP * LS * :{cap}")
                    self.send(f":stub CAP * LS :{self.caps[-1] if self.caps else ''}")
                elif cmd == "CAP" and rest.startswith("REQ"):
                    wanted = rest.split(":", 1)[1].split()
                    ok = all(c in self.caps for c in wanted)
                    self.send(f":stub CAP * {'ACK' if ok else 'NAK'} :{' '.join(wanted)}")
                elif cmd == "AUTHENTICATE" and rest == "PLAIN":
                    self.send("AUTHENTICATE +")
                elif cmd == "AUTHENTICATE":
                    authz, authc, pw = base64.b64decode(rest).decode().split("\0")
                    self.sasl.append((authz, authc, pw))
                    good = self.accounts.get(authc) == pw
                    self.send(f":stub {'903' if good else '904'} * :SASL {'ok' if good else 'failed'}")
                elif cmd == "CAP" and rest.startswith("END"):
                    capping = False
                elif cmd == "NICK":
                    nick = rest
                elif cmd == "JOIN":
                    self.send(f":{nick}!u@h JOIN {rest}")
                    self.joined.set()
                if nick and not capping and not registered and any(g.startswith("USER ") for g in self.got):
                    registered = True
                    self.send(f":stub 001 {nick} :welcome")
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
        finally:
            self.closed.set()
            writer.close()
