"""The IRC adapter beyond the conformance suite: against the real ngircd (nick fallback, long
lines split under 512 bytes, CTCP ignored, presence), and against a loopback stub for what
ngircd 26 does not offer (SASL PLAIN over CAP, the account-tag identity)."""

from __future__ import annotations

import asyncio
import base64
import re
from pathlib import Path
from typing import Any

import pytest

from opsroom.chat.base import ChatAdapter, Click, Incoming, Message, Person
from opsroom.chat.platforms.irc import protocol
from opsroom.chat.platforms.irc.adapter import IrcAdapter, IrcConfig
from opsroom.rooms.service import history_of
from tests.chat.drivers.irc import IrcDriver, IrcPerson
from tests.chat.harness import serve
from tests.chat.servers.irc_stub import IrcStub

TIMEOUT = 15.0


class Recorder:
    """What an adapter hands the hub, kept for the stub tests (no opsroom needed there)."""

    def __init__(self) -> None:
        self.messages: list[Incoming] = []
        self.new = asyncio.Event()

    async def message(self, adapter: ChatAdapter, incoming: Incoming) -> None:
        self.messages.append(incoming)
        self.new.set()

    async def presence(self, adapter: ChatAdapter, channel: str, person: Person, joined: bool) -> None: ...

    async def click(self, adapter: ChatAdapter, click: Click) -> None: ...

    async def refused(self, adapter: ChatAdapter, *, what: str, detail: str) -> None: ...


def stub_adapter(stub: IrcStub, **settings: Any) -> IrcAdapter:
    return IrcAdapter(config=IrcConfig(host="127.0.0.1", port=stub.port, tls=False, **settings))


async def test_sasl_plain_over_cap_before_registration() -> None:
    async with IrcStub(caps=("sasl", "multi-prefix"), accounts={"opsbot": "s3cret-pw"}) as stub:
        adapter = stub_adapter(stub, sasl_username="opsbot", sasl_password="s3cret-pw")
        await adapter.start(Recorder(), ["#ops"])
        try:
            async with asyncio.timeout(TIMEOUT):
                await stub.joined.wait()
        finally:
            await adapter.stop()
    assert stub.sasl == [("opsbot", "opsbot", "s3cret-pw")]
    order = [g.split()[0] + (" " + g.split()[1] if g.startswith(("CAP", "AUTHENTICATE")) else "") for g in stub.got]
    # CAP END (registration completes) only after the server said 903 (SASL succeeded).
    assert order.index("CAP END") > order.index("AUTHENTICATE PLAIN")
    assert order.index("CAP REQ") < order.index("AUTHENTICATE PLAIN")


async def test_a_wrong_sasl_password_never_joins() -> None:
    async with IrcStub(accounts={"opsbot": "right"}) as stub:
        adapter = stub_adapter(stub, sasl_username="opsbot", sasl_password="wrong")
        await adapter.start(Recorder(), ["#ops"])
        try:
            async with asyncio.timeout(TIMEOUT):
                await stub.closed.wait()  # the adapter hung up on 904
        finally:
            await adapter.stop()
    assert stub.sasl and not stub.joined.is_set()
    assert not any(g.startswith("JOIN") for g in stub.got)


async def test_no_sasl_offered_means_no_password_sent_and_no_join() -> None:
    async with IrcStub(caps=("multi-prefix",)) as stub:  # what ngircd 26 offers
        adapter = stub_adapter(stub, sasl_username="opsbot", sasl_password="s3cret-pw")
        await adapter.start(Recorder(), ["#ops"])
        try:
            async with asyncio.timeout(TIMEOUT):
                await stub.closed.wait()
        finally:
            await adapter.stop()
    sent = "\n".join(stub.got)
    assert "s3cret-pw" not in sent and base64.b64encode(b"s3cret-pw")[:8].decode() not in sent
    assert not any(g.startswith("JOIN") for g in stub.got)


async def test_identity_account_takes_the_account_tag_not_the_nick() -> None:
    sink = Recorder()
    async with IrcStub(caps=("account-tag",)) as stub:
        adapter = stub_adapter(stub, identity="account")
        await adapter.start(sink, ["#ops"])
        try:
            async with asyncio.timeout(TIMEOUT):
                await stub.joined.wait()
                stub.send("@account=alice-acct :alice!a@h PRIVMSG #ops :status")
                stub.send(":alice!a@h PRIVMSG #ops :status")  # same nick, logged in to nothing
                while len(sink.messages) < 2:
                    sink.new.clear()
                    await sink.new.wait()
        finally:
            await adapter.stop()
    assert [m.author.platform_id for m in sink.messages] == ["alice-acct", "~alice"]


def test_long_text_is_split_under_512_bytes_at_character_boundaries() -> None:
    adapter = IrcAdapter(config=IrcConfig(host="x"))
    text = "ü" * 700 + " " + " ".join(f"w{i}" for i in range(150))
    lines = adapter._lines("#ops", text, link="http://opsroom/rooms/ops")
    relayed_prefix = len(":opsroom!opsroom@ ") + protocol.HOST_RESERVE  # what the server puts in front
    assert all(len(b) + relayed_prefix <= protocol.MAX_LINE_BYTES for b in lines)
    assert len(lines) >= 3
    assert all(b.endswith(b"\r\n") and b.count(b"\r\n") == 1 for b in lines)
    body = "".join(b.decode().split(" :", 1)[1].rstrip("\r\n") for b in lines)
    assert body.startswith("ü" * 300)


# --- against the real ngircd --------------------------------------------------


async def test_nick_in_use_falls_back_and_own_lines_are_still_ignored(tmp_path: Path) -> None:
    driver = IrcDriver()
    await driver.start(tmp_path / "platform")
    squatter = IrcPerson("opsroom", driver.srv.port, "#elsewhere")
    await squatter.connect()
    try:
        async with serve(tmp_path, driver) as served:
            await driver.attach(served)
            adapter = served.rt.rooms.adapters["irc"]  # type: ignore[union-attr]
            assert isinstance(adapter, IrcAdapter) and adapter.nick != "opsroom"
            await driver.say("alice", "status")
            await driver.wait_for(lambda t: "Sys" in t and "healthy" in t, TIMEOUT)
            await served.settle()
            assert sum(1 for t in driver.received() if "healthy" in t) == 1  # no loop on its own line
    finally:
        await squatter.quit()
        await driver.stop()


async def test_long_output_arrives_whole_in_lines_the_server_accepts(tmp_path: Path) -> None:
    driver = IrcDriver(platform_settings={"rate_per_s": 5, "burst": 10})
    await driver.start(tmp_path / "platform")
    try:
        async with serve(tmp_path, driver) as served:
            await driver.attach(served)
            words = [f"tok{i:03d}" for i in range(120)]  # ~840 bytes: two lines or more
            served.rt.rooms.post_nowait(Message(room="ops", text=" ".join(words), kind="notice"))  # type: ignore[union-attr]
            await driver.wait_for(lambda t: "tok119" in t, TIMEOUT)
            got = " ".join(t for t in driver.received() if "tok" in t)
            assert re.findall(r"tok\d{3}", got) == words
            assert sum(1 for t in driver.received() if "tok" in t) >= 2
    finally:
        await driver.stop()


async def test_ctcp_is_ignored_and_presence_reaches_the_room(tmp_path: Path) -> None:
    driver = IrcDriver()
    await driver.start(tmp_path / "platform")
    try:
        async with serve(tmp_path, driver) as served:
            await driver.attach(served)
            await driver.say("alice", "\x01ACTION status\x01")
            await driver.say("alice", "executions")
            await driver.wait_for(lambda t: "execution" in t.lower(), TIMEOUT)
            assert not any("healthy" in t for t in driver.received())
            await driver.clients["carol"].quit()
            async with asyncio.timeout(TIMEOUT):
                while not any("carol left" in m.text for m in await history_of(served.rt, room="ops")):
                    await asyncio.sleep(0.05)
            adapter = served.rt.rooms.adapters["irc"]  # type: ignore[union-attr]
            names = {p.display_name for p in await adapter.presence(driver.channel)}
            assert {"alice", "bob"} <= names and "carol" not in names
    finally:
        await driver.stop()


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\0b"])
def test_a_line_never_carries_a_second_command(bad: str) -> None:
    with pytest.raises(protocol.UnsafeLine):
        protocol.line("PRIVMSG", "#ops", trailing=bad)
    with pytest.raises(protocol.UnsafeLine):
        protocol.line("JOIN", bad)


async def test_a_silent_server_is_pinged_then_left_and_reconnected(monkeypatch: pytest.MonkeyPatch) -> None:
    from opsroom.chat.platforms.irc import adapter as irc_adapter

    monkeypatch.setattr(irc_adapter, "IDLE_PING_S", 0.3)
    async with IrcStub(caps=()) as stub:  # it never answers PING: a server gone without a FIN
        adapter = stub_adapter(stub)
        await adapter.start(Recorder(), ["#ops"])
        try:
            async with asyncio.timeout(TIMEOUT):
                while adapter.connects < 2:
                    await asyncio.sleep(0.05)
        finally:
            await adapter.stop()
    assert "PING :opsroom" in stub.got and adapter.failures >= 1
