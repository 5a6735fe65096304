"""IRC: a small asyncio client of opsroom's own (TLS, SASL PLAIN over CAP, nick fallback,
PING/PONG, flood control, reconnect with backoff). IRC is a line protocol; what a bot needs of
it fits in this module and protocol.py, and owning it means every byte we send passes one
function that refuses CR/LF (protocol.line), with no library between us and the socket.

Identity: a person is their nick (folded to lower case), unless `identity: account`, where it
is the services account the server reports in the IRCv3 `account` message tag, and a line
without one is from nobody linkable. A nick alone is only as strong as the network's nick
protection (NickServ enforcement): see docs/chat/irc.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import ssl
import time
from collections import defaultdict
from typing import Any, Literal

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
from opsroom.chat.platforms.irc import protocol
from opsroom.runtime import Runtime

log = structlog.get_logger(__name__)

REGISTER_TIMEOUT_S = 30.0
IDLE_PING_S = 120.0  # no line from the server this long: PING it, and give up after as long again
MAX_LINES = 6  # lines one message may take; the rest is cut with a link (each line costs a second)


class IrcConfig(PlatformConfig):
    host: str
    port: int = 6697
    tls: bool = True
    tls_verify: bool = True  # false only for a test server: anyone on the path could read the room
    ca_file: str | None = None  # a CA (or the self-signed cert) to trust besides the system's
    server_password: SecretStr | None = None  # PASS, for servers that want one
    nick: str = "opsroom"
    username: str = "opsroom"
    realname: str = "opsroom ChatOps"
    sasl_username: str | None = None  # SASL PLAIN (the services account); required if set
    sasl_password: SecretStr | None = None
    identity: Literal["nick", "account"] = "nick"
    bots: list[str] = Field(default_factory=list)  # other bots' nicks: never answered
    # ngircd (like most servers) charges each command about a second of penalty once a short
    # burst is spent and disconnects a client that runs far ahead ("Excess Flood").
    rate_per_s: float = Field(default=1.0, gt=0, le=10)
    burst: int = Field(default=4, ge=1, le=20)


class IrcAdapter(ChatAdapter):
    platform = "irc"
    Config = IrcConfig

    def __init__(self, *, name: str = "irc", config: IrcConfig, rt: Runtime | None = None) -> None:
        self.name = name
        self.config = config
        self.capabilities = Capabilities(formatting="irc", max_chars=1500, rate_per_s=config.rate_per_s,
                                         burst=config.burst)
        self.nick = config.nick
        self.channels: dict[str, str] = {}  # folded -> as bound
        self.joined: set[str] = set()  # folded channels we are in now
        self.members: dict[str, dict[str, str]] = defaultdict(dict)  # folded channel -> folded nick -> nick
        self._bots = {protocol.fold(b) for b in config.bots}
        self._sink: AdapterSink | None = None
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._registered = False
        self._stopping = False
        self._tokens = float(config.burst)
        self._refilled = time.monotonic()
        self._send_lock = asyncio.Lock()
        self.connects = 0
        self.failures = 0  # connection attempts that ended in an error (refused, TLS, auth)

    # --- the contract ----------------------------------------------------

    async def start(self, sink: AdapterSink, channels: list[str]) -> None:
        self._sink = sink
        self.channels = {protocol.fold(c): c for c in channels}
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"irc:{self.name}")

    async def stop(self) -> None:
        self._stopping = True
        writer = self._writer
        if writer is not None and self._registered:
            with contextlib.suppress(Exception):
                writer.write(protocol.line("QUIT", trailing="opsroom stopping"))
                async with asyncio.timeout(1):
                    await writer.drain()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        self._close()

    def is_connected(self) -> bool:
        return self._registered and self._writer is not None and not self._writer.is_closing()

    def status(self) -> dict[str, Any]:
        return {"nick": self.nick, "joined": sorted(self.joined), "connects": self.connects,
                "failures": self.failures}

    async def identify(self, account_id: str) -> Person:
        return self._person(account_id)

    async def presence(self, channel: str) -> list[Person]:
        return [self._person(n) for n in sorted(self.members[protocol.fold(channel)].values())]

    def mention(self, m: Mention) -> str:
        return protocol.clean(m.display_name if self.config.identity == "account" else m.account_id)

    async def deliver(self, out: Outgoing) -> None:
        target = protocol.fold(out.channel)
        direct = target not in self.channels  # a reply to a private message: the channel is a nick
        if direct and (out.channel[:1] in "#&+!" or not out.channel):
            raise DeliveryFailed(f"{out.channel} is not a bound channel", transient=False)
        if not self.is_connected() or (not direct and target not in self.joined):
            raise DeliveryFailed(f"not in {out.channel} on {self.config.host} now", transient=True)
        text = safe.render(out, self.capabilities, mention=self.mention)
        lines = self._lines(out.channel, text, out.link)
        writer = self._writer
        assert writer is not None
        # Once the first line is written the message counts as sent: raising after that would
        # have the send queue send it (or its first lines) twice.
        for data in lines:
            await self._take_token()
            if writer.is_closing():
                log.warning("irc connection lost in the middle of a message", platform=self.name)
                return
            writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    # --- outbound ------------------------------------------------------------

    def _lines(self, channel: str, text: str, link: str | None) -> list[bytes]:
        overhead = len(protocol.line("PRIVMSG", channel, trailing="")) + len(
            f":{self.nick}!{self.config.username}@ ".encode()) + protocol.HOST_RESERVE
        budget = max(64, protocol.MAX_LINE_BYTES - overhead)
        pieces: list[str] = []
        for raw in text.split("\n"):
            piece = protocol.clean(raw).strip()
            if piece:
                pieces.extend(protocol.split_text(piece, budget))
        if len(pieces) > MAX_LINES:
            pieces = [*pieces[:MAX_LINES - 1], f"… (cut; all of it: {protocol.clean(link)})" if link else "…"]
        return [protocol.line("PRIVMSG", channel, trailing=p) for p in pieces]

    async def _take_token(self) -> None:
        """Flood control per line (a message may be several): the server's own pace."""
        async with self._send_lock:
            while True:
                now = time.monotonic()
                gained = (now - self._refilled) * self.config.rate_per_s
                self._tokens = min(float(self.config.burst), self._tokens + gained)
                self._refilled = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.config.rate_per_s)

    def _send(self, command: str, *params: str, trailing: str | None = None) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(protocol.line(command, *params, trailing=trailing))

    # --- the connection --------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff()
        while not self._stopping:
            try:
                await self._session()
                backoff.reset()  # it was up: start the backoff over
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                log.warning("irc connection failed", platform=self.name, host=self.config.host, error=str(exc))
            finally:
                was_up = self._registered
                self._close()
                if was_up:
                    backoff.reset()
            if self._stopping:
                return
            await backoff.wait()

    def _tls(self) -> ssl.SSLContext | None:
        if not self.config.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.config.ca_file)
        if not self.config.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def _session(self) -> None:
        cfg = self.config
        ctx = self._tls()
        reader, writer = await asyncio.open_connection(cfg.host, cfg.port, ssl=ctx,
                                                       server_hostname=cfg.host if ctx else None, limit=1 << 16)
        self._writer = writer
        self.nick = cfg.nick
        self._offered: set[str] = set()  # capabilities the server listed (CAP LS may take lines)
        self._tokens, self._refilled = float(cfg.burst), time.monotonic()
        if cfg.server_password is not None:
            self._send("PASS", trailing=cfg.server_password.get_secret_value())
        wants = self._wanted_caps()
        if wants:
            self._send("CAP", "LS", "302")
        self._send("NICK", self.nick)
        self._send("USER", cfg.username, "0", "*", trailing=cfg.realname)
        registering = True
        tries = 0
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        pinged = False
        while True:
            timeout = max(0.1, deadline - time.monotonic()) if registering else IDLE_PING_S
            try:
                async with asyncio.timeout(timeout):
                    raw = await reader.readline()
            except TimeoutError:
                if registering or pinged:
                    raise ConnectionError("the server stopped answering") from None
                # Quiet for a while: a server that went away without closing the connection
                # (a dropped route) is only noticed by asking.
                pinged = True
                self._send("PING", trailing="opsroom")
                await writer.drain()
                continue
            pinged = False
            if not raw:
                raise ConnectionError("the server closed the connection")
            msg = protocol.parse(raw.decode("utf-8", "replace"))
            if msg is None:
                continue
            if msg.command == "PING":
                self._send("PONG", trailing=msg.params[-1] if msg.params else "")
            elif msg.command == "ERROR":
                raise ConnectionError(f"server said: {msg.params[-1] if msg.params else ''}"[:200])
            elif registering:
                tries = self._registration(msg, wants, tries)
                if msg.command == "001":
                    registering = False
            else:
                await self._handle(msg)
            with contextlib.suppress(ConnectionError):
                await writer.drain()

    def _wanted_caps(self) -> list[str]:
        wants = []
        if self.config.sasl_username:
            wants.append("sasl")
        if self.config.identity == "account":
            wants.append("account-tag")
        return wants

    def _registration(self, msg: protocol.Line, wants: list[str], tries: int) -> int:
        cfg = self.config
        if msg.command == "CAP" and len(msg.params) >= 3:
            sub = msg.params[1].upper()
            offered = {c.split("=", 1)[0] for c in msg.params[-1].split()}
            if sub == "LS":
                self._offered |= offered
            if sub == "LS" and msg.params[2] != "*":  # the last LS line (302 multi-line ends without *)
                missing = [c for c in wants if c not in self._offered]
                if missing:
                    # Never fall back to something weaker than configured (no SASL: the password
                    # would not be checked; no account-tag: a nick would be taken as an account).
                    raise ConnectionError(f"the server does not offer {', '.join(missing)}")
                self._send("CAP", "REQ", trailing=" ".join(wants))
            elif sub == "ACK":
                if "sasl" in offered:
                    self._send("AUTHENTICATE", "PLAIN")
                else:
                    self._send("CAP", "END")
            elif sub == "NAK":
                raise ConnectionError(f"the server refused {msg.params[-1]}")
        elif msg.command == "AUTHENTICATE" and msg.params[:1] == ["+"]:
            assert cfg.sasl_username and cfg.sasl_password
            blob = base64.b64encode(f"{cfg.sasl_username}\0{cfg.sasl_username}\0"
                                    f"{cfg.sasl_password.get_secret_value()}".encode()).decode()
            chunks = [blob[i:i + 400] for i in range(0, len(blob), 400)] or ["+"]
            if len(chunks[-1]) == 400:
                chunks.append("+")
            for chunk in chunks:
                self._send("AUTHENTICATE", chunk)
        elif msg.command == "903":
            self._send("CAP", "END")
        elif msg.command in ("902", "904", "905", "906", "908"):
            raise ConnectionError("SASL authentication failed")  # password wrong: no point going on
        elif msg.command in ("432", "433", "436", "437"):
            tries += 1
            self.nick = (cfg.nick + "_" * tries) if tries <= 2 else f"{cfg.nick}{random.randint(100, 999)}"
            self._send("NICK", self.nick)
        elif msg.command == "001":
            self.nick = msg.params[0] if msg.params else self.nick
            self._registered = True
            self.connects += 1
            log.info("irc connected", platform=self.name, host=cfg.host, nick=self.nick)
            for channel in self.channels.values():
                self._send("JOIN", channel)
        return tries

    def _close(self) -> None:
        self._registered = False
        self.joined.clear()
        self.members.clear()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None

    # --- inbound ---------------------------------------------------------

    def _person(self, nick: str, account: str | None = None) -> Person:
        folded = protocol.fold(nick)
        is_bot = folded == protocol.fold(self.nick) or folded in self._bots
        if self.config.identity == "account":
            # No account tag: logged in to nothing, so nobody to link; "~" can never be an account.
            account_id = account if account and account != "*" else f"~{folded}"
            return Person(platform_id=account_id, display_name=nick, is_bot=is_bot)
        return Person(platform_id=folded, display_name=nick, is_bot=is_bot)

    async def _handle(self, msg: protocol.Line) -> None:
        sink = self._sink
        if sink is None:
            return
        cmd, nick = msg.command, msg.nick
        me = protocol.fold(nick) == protocol.fold(self.nick)
        if cmd == "PRIVMSG" and len(msg.params) >= 2:
            channel = protocol.fold(msg.params[0])
            text = msg.params[1]
            if me or text.startswith("\x01"):
                return  # our own line, or CTCP (ACTION, VERSION...): not a command
            person = self._person(nick, msg.tags.get("account"))
            if channel == protocol.fold(self.nick):
                # A private message: the hub takes only `link CODE`, `whoami` and `help` there
                # (a code need not be typed in the channel) and answers to the sender's nick.
                where = nick
            elif channel in self.channels:
                where = self.channels[channel]
            else:
                return  # a channel we were not bound to
            await sink.message(self, Incoming(where, protocol.strip_formatting(text), author=person,
                                              delivery_id=msg.tags.get("msgid")))
        elif cmd == "JOIN" and msg.params:
            channel = protocol.fold(msg.params[0])
            if me:
                self.joined.add(channel)
            elif channel in self.channels:
                self.members[channel][protocol.fold(nick)] = nick
                await sink.presence(self, self.channels[channel], self._person(nick, msg.tags.get("account")), True)
        elif cmd in ("PART", "KICK") and msg.params:
            channel = protocol.fold(msg.params[0])
            gone = msg.params[1] if cmd == "KICK" and len(msg.params) > 1 else nick
            if protocol.fold(gone) == protocol.fold(self.nick):
                self.joined.discard(channel)
                if channel in self.channels:
                    self._send("JOIN", self.channels[channel])  # kicked: bound means bound
            elif channel in self.channels:
                self.members[channel].pop(protocol.fold(gone), None)
                await sink.presence(self, self.channels[channel], self._person(gone), False)
        elif cmd == "QUIT" and not me:
            for channel, members in self.members.items():
                if members.pop(protocol.fold(nick), None) is not None and channel in self.channels:
                    await sink.presence(self, self.channels[channel], self._person(nick), False)
        elif cmd == "NICK" and msg.params:
            new = msg.params[0]
            if me:
                self.nick = new
            for members in self.members.values():
                if members.pop(protocol.fold(nick), None) is not None:
                    members[protocol.fold(new)] = new
        elif cmd == "353" and len(msg.params) >= 4:  # NAMES: who was there when we joined
            channel = protocol.fold(msg.params[2])
            for entry in msg.params[3].split():
                name = entry.lstrip("~&@%+")
                if name and protocol.fold(name) != protocol.fold(self.nick):
                    self.members[channel][protocol.fold(name)] = name
        elif cmd in ("403", "405", "471", "473", "474", "475") and len(msg.params) >= 2:
            log.warning("irc cannot join", platform=self.name, channel=msg.params[1], code=cmd)
