"""Attacks on the IRC and XMPP adapters, against the real ngircd and prosody (and the IRC stub
for the account-tag identity ngircd cannot show).

- IRC command injection: CR/LF in runbook output or a relayed line must never end our PRIVMSG
  and start a command of its own (`x\\r\\nPRIVMSG #other :pwned`).
- IRC formatting and CTCP codes from outside text are stripped.
- Identity: on IRC a nick is only as strong as the network's nick protection (shown, and the
  account-tag mode that closes it); on XMPP the occupant's real JID counts, not the room nick.
- XMPP stanza injection: markup in text stays character data; characters XML forbids are
  dropped instead of killing the bot's stream.
- XMPP history replayed on join is never taken as a command.
"""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path
from xml.etree import ElementTree as ET

from opsroom.access import links
from opsroom.chat.base import Message
from opsroom.chat.platforms.irc.adapter import IrcAdapter
from opsroom.chat.platforms.xmpp.adapter import XmppAdapter, XmppConfig
from tests.chat.drivers.irc import IrcDriver, IrcPerson
from tests.chat.drivers.xmpp import XmppDriver, XmppPerson
from tests.chat.harness import serve
from tests.chat.servers.irc_stub import IrcStub
from tests.chat.test_irc import Recorder

TIMEOUT = 15.0


async def _until(predicate: object, timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.02)


class TestIrcCommandInjection:
    async def test_crlf_in_output_and_relayed_text_never_becomes_a_command(self, tmp_path: Path) -> None:
        driver = IrcDriver()
        await driver.start(tmp_path / "platform")
        other = f"{driver.chan}-other"
        watcher = IrcPerson("watcher", driver.srv.port, other)
        await watcher.connect()
        try:
            async with serve(tmp_path, driver) as served:
                await driver.attach(served)
                rooms = served.rt.rooms
                assert rooms is not None
                adapter = rooms.adapters["irc"]
                assert isinstance(adapter, IrcAdapter)
                # Runbook output (a notice) and a line relayed from the web room.
                rooms.post_nowait(Message(room="ops", text=f"x\r\nPRIVMSG {other} :pwned-1\r\nQUIT :gone",
                                          kind="notice"))
                await rooms.adapters["web"].said("ops", await _actor(served, "lead"),  # type: ignore[attr-defined]
                                                 f"y\r\nPRIVMSG {other} :pwned-2\nJOIN 0")
                await driver.wait_for(lambda t: "pwned-2" in t, TIMEOUT)
                await driver.say("alice", "status")  # and the bot is still there, on its first connection
                await driver.wait_for(lambda t: "healthy" in t, TIMEOUT)
                assert adapter.connects == 1 and adapter.is_connected()
                assert not watcher.heard, watcher.heard
                shown = [t for t in driver.received() if "pwned" in t]
                assert any(f"PRIVMSG {other} :pwned-1" in t for t in shown), shown  # shown as text
        finally:
            await watcher.quit()
            await driver.stop()

    async def test_formatting_and_ctcp_codes_are_stripped(self, tmp_path: Path) -> None:
        driver = IrcDriver()
        await driver.start(tmp_path / "platform")
        try:
            async with serve(tmp_path, driver) as served:
                await driver.attach(served)
                served.rt.rooms.post_nowait(Message(  # type: ignore[union-attr]
                    room="ops", kind="notice",
                    text="svc \x02bold\x02 \x0304,01red\x03 \x16rev\x0f \x1dital\x1d \x01ACTION waves\x01 end-mark"))
                text = await driver.wait_for(lambda t: "end-mark" in t, TIMEOUT)
                assert not any(c in text for c in "\x01\x02\x03\x0f\x16\x1d\x1f"), repr(text)
                assert "bold" in text and "red" in text
        finally:
            await driver.stop()


class TestIrcNickSpoofing:
    async def test_with_nick_identity_whoever_holds_the_nick_is_the_linked_user(self, tmp_path: Path) -> None:
        """The documented weakness (docs/chat/irc.md): without services, `identity: nick` trusts
        the nick. The test holds the docs to it; `identity: account` below closes it."""
        driver = IrcDriver()
        await driver.start(tmp_path / "platform")
        try:
            async with serve(tmp_path, driver) as served:
                await driver.attach(served)
                driver.clients["bob"].send("NICK bob_away")
                carol = driver.clients["carol"]
                async with asyncio.timeout(TIMEOUT):
                    while not any(cmd == "NICK" and n == "bob" for n, cmd, _ in carol.lines):
                        carol._new.clear()
                        await carol._new.wait()
                carol.send("NICK bob")
                await _until(lambda: any(cmd == "NICK" and n == "carol" for n, cmd, _ in carol.lines))
                await carol.say("whoami")
                text = await driver.wait_for(lambda t: "boss" in t, TIMEOUT)
                assert "boss" in text
        finally:
            await driver.stop()

    async def test_with_account_identity_a_nick_without_an_account_is_nobody(self, tmp_path: Path) -> None:
        async with IrcStub(caps=("account-tag",)) as stub:
            item = {"name": "irc", "type": "irc", "host": "127.0.0.1", "port": stub.port, "tls": False,
                    "identity": "account", "rate_per_s": 10, "burst": 10}
            async with serve(tmp_path, None, platforms=[item], rooms=[{"name": "ops", "bind": ["irc:#ops"]}]) as served:
                await links.link_account(served.rt, platform="irc", account_id="bob-acct", display_name="bob",
                                         user="boss")
                async with asyncio.timeout(TIMEOUT):
                    await stub.joined.wait()
                stub.send(":bob!b@h PRIVMSG #ops :whoami")  # the nick, but logged in to nothing
                await _until(lambda: any("PRIVMSG #ops" in g and "link" in g.lower() for g in stub.got))
                assert not any("boss" in g for g in stub.got if g.startswith("PRIVMSG"))
                stub.send("@account=bob-acct :bob!b@h PRIVMSG #ops :whoami")
                await _until(lambda: any(g.startswith("PRIVMSG") and "boss" in g for g in stub.got))


class TestXmppStanzaInjection:
    async def test_markup_in_text_stays_text_and_bad_characters_do_not_kill_the_stream(self, tmp_path: Path) -> None:
        driver = XmppDriver()
        await driver.start(tmp_path / "platform")
        try:
            async with serve(tmp_path, driver) as served:
                await driver.attach(served)
                adapter = served.rt.rooms.adapters["xmpp"]  # type: ignore[union-attr]
                assert isinstance(adapter, XmppAdapter)
                evil = (f"</body></message><message to='{driver.channel}' type='groupchat'><body>pwned</body>"
                        "</message>&amp; \x1b[31m\x0b\ufffe mark-1")
                served.rt.rooms.post_nowait(Message(room="ops", text=evil, kind="notice"))  # type: ignore[union-attr]
                text = await driver.wait_for(lambda t: "mark-1" in t, TIMEOUT)
                assert "</body></message><message" in text and "&amp;" in text
                assert not any(c in text for c in "\x1b\x0b\ufffe")
                assert not any(t == "pwned" for t in driver.received())
                await driver.say("alice", "status")
                await driver.wait_for(lambda t: "healthy" in t, TIMEOUT)
                assert adapter.connects == 1 and adapter.is_connected()
        finally:
            await driver.stop()

    async def test_history_replayed_on_join_is_never_executed(self, tmp_path: Path) -> None:
        driver = XmppDriver()
        await driver.start(tmp_path / "platform")
        try:
            driver.clients["alice"].say("status")  # before the bot is in the room: history
            driver.clients["alice"].say("run echo-args text=from-history")
            async with serve(tmp_path, driver) as served:
                await driver.attach(served)
                await driver.say("alice", "executions")
                await driver.wait_for(lambda t: "execution" in t.lower(), TIMEOUT)
                assert not any("healthy" in t or "echo-args" in t for t in driver.received()), driver.received()
        finally:
            await driver.stop()

    async def test_a_delayed_message_is_history_even_if_the_server_sends_it(self) -> None:
        from slixmpp import Message as Stanza

        adapter = XmppAdapter(config=XmppConfig(jid="opsroom@localhost", password="x"))
        sink = Recorder()
        await adapter.start(sink, ["ops@conference.localhost"])
        adapter._task.cancel()  # type: ignore[union-attr]  # no connection: stanzas are fed by hand
        adapter.joined.add("ops@conference.localhost")
        for delayed in (True, False):
            msg = Stanza()
            msg["from"], msg["type"], msg["body"], msg["id"] = "ops@conference.localhost/bob", "groupchat", "status", \
                f"m{delayed}"
            if delayed:
                stamp = datetime.datetime.now(datetime.UTC).isoformat()
                msg.xml.append(ET.Element("{urn:xmpp:delay}delay", {"stamp": stamp}))
            await adapter._on_message(msg)
        assert [m.delivery_id for m in sink.messages] == ["ops@conference.localhost/bob/mFalse"]


class TestXmppNickSpoofing:
    async def test_a_room_nick_is_not_an_identity(self, tmp_path: Path) -> None:
        driver = XmppDriver()
        await driver.start(tmp_path / "platform")
        mallory = None
        try:
            async with serve(tmp_path, driver) as served:
                await driver.attach(served)
                await driver.clients["bob"].quit()
                await _until(lambda: "bob" not in driver.clients["alice"].present)
                mallory = XmppPerson("mallory", driver.srv, driver.channel, nick="bob")
                await mallory.connect()  # takes the linked approver's nick
                mallory.say("whoami")
                await driver.wait_for(lambda t: "link" in t.lower(), TIMEOUT)
                assert not any("boss" in t for t in driver.received()), driver.received()
        finally:
            if mallory is not None:
                await mallory.quit()
            await driver.stop()


async def _actor(served: object, name: str) -> object:
    from opsroom.access import service as access

    return await access.actor_by_name(served.rt, name=name, door="web")  # type: ignore[attr-defined]


class TestLinkCodeInPrivate:
    """A link code typed in a shared channel can be read and redeemed first by anyone there:
    both adapters take private messages to the bot, where the hub handles `link CODE` only."""

    async def test_irc_private_message_links_and_answers_in_private(self, tmp_path: Path) -> None:
        from opsroom.access import service as access

        driver = IrcDriver()
        await driver.start(tmp_path / "platform")
        try:
            async with serve(tmp_path, driver, link=False) as served:
                await driver.attach(served)
                dev = await access.actor_by_name(served.rt, name="dev", door="web")
                code, _ = await links.issue_link_code(served.rt, actor=dev)  # type: ignore[arg-type]
                carol = driver.clients["carol"]
                await carol.say(f"link {code}", channel=served.rt.rooms.adapters["irc"].nick)  # type: ignore[union-attr]
                await _until(lambda: any(text.startswith("[carol]") for _n, text in carol.heard))
                assert await links.linked_user(served.rt, platform="irc", account_id="carol") == "dev"
                assert not any(code in t for t in driver.received())  # nothing of it in the channel
                await carol.say("status", channel=served.rt.rooms.adapters["irc"].nick)  # type: ignore[union-attr]
                await carol.say("whoami")  # the barrier: in the channel, answered there
                await driver.wait_for(lambda t: "dev" in t, TIMEOUT)
                assert not any("healthy" in text for _n, text in carol.heard)  # no commands in private
        finally:
            await driver.stop()

    async def test_xmpp_direct_message_links_the_real_jid(self, tmp_path: Path) -> None:
        from opsroom.access import service as access

        driver = XmppDriver()
        await driver.start(tmp_path / "platform")
        try:
            async with serve(tmp_path, driver, link=False) as served:
                await driver.attach(served)
                dev = await access.actor_by_name(served.rt, name="dev", door="web")
                code, _ = await links.issue_link_code(served.rt, actor=dev)  # type: ignore[arg-type]
                carol = driver.clients["carol"]
                msg = carol.client.make_message(mto="opsroom@localhost", mbody=f"link {code}", mtype="chat")
                msg.send()
                await _until(lambda: any(m["type"] == "chat" and "dev" in m["body"] for m in carol.raw))
                assert await links.linked_user(served.rt, platform="xmpp", account_id="carol@localhost") == "dev"
                assert not any(code in t for t in driver.received())
        finally:
            await driver.stop()
