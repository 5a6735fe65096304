"""Attacks on the cluster's rooms: what the event log brings a server, and a holder that lost its lease.

- A RoomMessagePosted row forged into the log (anyone who can write the store's tables; a
  compromised or newer node) is fanned out as any bot line is, never raw: a room this catalog
  has not is dropped with a warning; the text is masked again (a secret in it never reaches a
  platform), bounded, rendered by each adapter (CR/LF never ends the bot's IRC line), and its
  `source` naming an event this server never saw draws no buttons and mentions nobody.
- A holder paused past its lease (SIGSTOP: a VM freeze, a stuck host) never sends after another
  server took the connection over: neither what it held queued nor what the log brings it on
  resuming; it lets the connection go at once.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import structlog

from opsroom.chat.base import Outgoing
from opsroom.chat.fake import FakeAdapter
from opsroom.eventlog import log as eventlog
from opsroom.events import RoomMessagePosted
from opsroom.runtime import Runtime
from opsroom.secrets.masking import MASKER
from tests.chat.drivers.irc import BOT_NICK, IrcDriver, IrcPerson
from tests.chat.harness import serve
from tests.cluster.test_announce_once import _env, _serve, _token
from tests.cluster.test_chat_takeover import bot_joins, heard, heard_once, holder_pid, irc_catalog, say
from tests.e2e.harness import Demo

FORGER = "forged-host:1:deadbeef"


def _forged(room: str, text: str, *, kind: str = "bot", source: str = "opsroom",
            author: str = "opsroom") -> RoomMessagePosted:
    return RoomMessagePosted(room=room, message_id=999_999, author=author, text=text, kind=kind, source=source)


async def _forge(rt: Runtime, ev: RoomMessagePosted) -> None:
    await rt.transact(lambda s: eventlog.append(s, ev, origin=FORGER))


async def _relayed(rt: Runtime) -> None:
    """The relay has read the log up to now and the hub has fanned out what it published."""
    assert rt.outbox is not None and rt.rooms is not None
    target = await eventlog.newest(rt)
    async with asyncio.timeout(10):
        while rt.outbox.position is None or rt.outbox.position < target:
            await asyncio.sleep(0.05)
    await rt.bus.drain()
    await rt.rooms.flushed()


async def test_a_forged_message_for_no_room_is_dropped_with_a_warning(running: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = running
    with structlog.testing.capture_logs() as logs:
        await _forge(rt, _forged("no-such-room", "pwned-room"))
        await _forge(rt, _forged("ops\r\nPRIVMSG #x :y", "pwned-room-2"))
        await _relayed(rt)
    assert not [o for o in fake.sent if "pwned" in o.text]
    warned = [e for e in logs if "names no room" in e["event"]]
    assert len(warned) == 2, logs
    assert "\r" not in str(warned[1]["room"]) and "\n" not in str(warned[1]["room"])


async def test_a_forged_message_is_masked_and_draws_no_buttons_or_mentions(
        running: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = running
    secret = f"s3cret-{uuid.uuid4().hex}"
    MASKER.add(secret)
    text = f"<!channel> @here @room token={secret} " + "x" * 20_000
    await _forge(rt, _forged("ops", text, kind="shout", source=f"event:{uuid.uuid4()}"))
    await _relayed(rt)
    got: list[Outgoing] = [o for o in fake.sent if "<!channel>" in o.text]
    assert len(got) == 1, [o.text[:80] for o in fake.sent]
    out = got[0]
    assert secret not in out.text and "token=" in out.text
    assert len(out.text) <= 8000
    assert out.kind == "notice"  # an unknown kind is shown as the bot's notice, never as a person
    assert out.approval_id is None and out.mentions == () and out.author is None


async def test_a_forged_crlf_never_becomes_an_irc_command(tmp_path: Path) -> None:
    driver = IrcDriver()
    await driver.start(tmp_path / "platform")
    other = f"{driver.chan}-other"
    watcher = IrcPerson("watcher", driver.srv.port, other)
    await watcher.connect()
    try:
        async with serve(tmp_path, driver) as served:
            await driver.attach(served)
            await _forge(served.rt, _forged("ops", f"x\r\nPRIVMSG {other} :pwned-forged\r\nQUIT :gone"))
            await _forge(served.rt, _forged("ops", "y\nJOIN 0", kind="person", source=f"said:irc:{other}",
                                            author=f"eve\r\nPRIVMSG {other} :pwned-author"))
            await driver.wait_for(lambda t: "JOIN 0" in t, 15)
            await asyncio.sleep(0.5)
            assert not watcher.heard, watcher.heard
            shown = heard(driver, "pwned-forged")
            assert len(shown) == 1 and f"PRIVMSG {other} :pwned-forged" in shown[0], shown  # shown as text
            assert served.rt.rooms is not None
            adapter = served.rt.rooms.adapters["irc"]
            assert adapter.is_connected() and adapter.status()["connects"] == 1
    finally:
        await watcher.quit()
        await driver.stop()


async def test_a_holder_paused_past_its_lease_never_sends_after_it(tmp_path: Path, pg_own_url: str) -> None:
    driver = IrcDriver()
    await driver.start(tmp_path / "platform")
    servers: list[Demo] = []
    a: Demo | None = None
    try:
        catalog = irc_catalog(tmp_path, driver)
        env = _env(pg_own_url)
        a = _serve(tmp_path, "a", catalog, env)
        servers.append(a)
        await driver.wait_bot_joined()
        b = _serve(tmp_path, "b", catalog, env)
        servers.append(b)
        you = _token(a, catalog, "you")
        assert holder_pid(pg_own_url) == a.proc.pid
        a.proc.send_signal(signal.SIGSTOP)  # its IRC connection stays open: ngircd waits 120 s for a ping
        async with asyncio.timeout(15):
            while bot_joins(driver) < 2:  # B connects beside the paused connection, under another nick
                await asyncio.sleep(0.05)
        assert holder_pid(pg_own_url) == b.proc.pid
        for n in range(3):
            say(b, you, f"during-pause-{n}")
        await heard_once(driver, "you (web): during-pause-2")
        mark = len(driver.clients["alice"].lines)
        a.proc.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        alice = driver.clients["alice"]
        async with asyncio.timeout(10):  # A lets its connection go at once
            while not any(cmd == "QUIT" and nick == BOT_NICK for nick, cmd, _ in alice.lines[mark:]):
                await asyncio.sleep(0.05)
        print(f"A quit {time.monotonic() - resumed:.1f} s after it resumed")
        await asyncio.sleep(2)
        for n in range(3):
            assert len(heard(driver, f"you (web): during-pause-{n}")) == 1, heard(driver, "during-pause")
        said_by_a = [params for nick, cmd, params in alice.lines[mark:] if nick == BOT_NICK and cmd == "PRIVMSG"]
        assert not said_by_a, said_by_a
    finally:
        if a is not None and a.proc.poll() is None:
            a.proc.send_signal(signal.SIGCONT)
        for server in servers:
            server.stop()
        await driver.stop()
