"""The XMPP adapter beyond the conformance suite, against the real prosody: the occupant's real
JID is the account, presence reaches the room, a wrong password or an untrusted certificate
never gets a session."""

from __future__ import annotations

import asyncio
from pathlib import Path

from opsroom.chat.platforms.xmpp.adapter import XmppAdapter
from opsroom.rooms.service import history_of
from tests.chat.drivers.xmpp import XmppDriver
from tests.chat.harness import serve

TIMEOUT = 15.0


async def _room_says(served: object, text: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not any(text in m.text for m in await history_of(served.rt, room="ops")):  # type: ignore[attr-defined]
            await asyncio.sleep(0.05)


async def test_occupants_are_their_real_jids_and_presence_reaches_the_room(tmp_path: Path) -> None:
    driver = XmppDriver()
    await driver.start(tmp_path / "platform")
    try:
        async with serve(tmp_path, driver) as served:
            await driver.attach(served)
            adapter = served.rt.rooms.adapters["xmpp"]  # type: ignore[union-attr]
            assert isinstance(adapter, XmppAdapter)
            people = {p.display_name: p.platform_id for p in await adapter.presence(driver.channel)}
            assert people["alice"] == "alice@localhost" and people["bob"] == "bob@localhost"
            bob = driver.clients["bob"]
            bob.client.send_presence(pto=f"{driver.channel}/bobby")  # a nick change is no leave
            await driver.clients["carol"].quit()
            await _room_says(served, "carol left the room")  # after the rename was handled
            people = {p.display_name: p.platform_id for p in await adapter.presence(driver.channel)}
            assert people.get("bobby") == "bob@localhost" and "bob" not in people
            notices = [m.text for m in await history_of(served.rt, room="ops")]
            assert not any("bob left" in t or "bobby joined" in t for t in notices), notices
            await driver.clients["carol"].connect()
            await _room_says(served, "carol joined the room")
    finally:
        await driver.stop()


async def test_a_wrong_password_or_an_untrusted_certificate_gets_no_session(tmp_path: Path) -> None:
    for settings in ({"password": "not-the-password"}, {"ca_file": None}):
        driver = XmppDriver(platform_settings=settings)
        await driver.start(tmp_path / "platform")
        try:
            async with serve(tmp_path / str(len(settings)), driver) as served:
                adapter = served.rt.rooms.adapters["xmpp"]  # type: ignore[union-attr]
                async with asyncio.timeout(TIMEOUT):
                    while adapter.failures < 1:  # it tried and got no session
                        await asyncio.sleep(0.05)
                assert not adapter.is_connected() and adapter.connects == 0, settings
                assert "opsroom" not in driver.clients["alice"].present
                assert not driver.received()
        finally:
            await driver.stop()


async def test_request_on_irc_approved_on_xmpp_and_both_see_every_notice(tmp_path: Path) -> None:
    """One room bound to both real servers: alice asks on IRC, bob approves on XMPP."""
    from opsroom.access import links
    from tests.chat.drivers.irc import IrcDriver

    irc, xmpp = IrcDriver(), XmppDriver()
    await irc.start(tmp_path / "irc")
    await xmpp.start(tmp_path / "xmpp")
    try:
        room = {"name": "ops", "bind": [f"irc:{irc.channel}", f"xmpp:{xmpp.channel}"]}
        async with serve(tmp_path, None, platforms=[irc.platform_item(), xmpp.platform_item()],
                         rooms=[room]) as served:
            for driver in (irc, xmpp):
                for person, user in (("alice", "you"), ("bob", "boss")):
                    await links.link_account(served.rt, platform=driver.name, account_id=driver.account_id(person),
                                             display_name=person, user=user)
            await irc.attach(served)
            await xmpp.attach(served)
            await irc.say("alice", "run deploy")
            request = await xmpp.wait_for(lambda t: "needs approval" in t, TIMEOUT)
            assert xmpp.mentions(request, "bob")
            # alice's line itself was relayed to XMPP with its author and platform named.
            await xmpp.wait_for(lambda t: "alice (irc): run deploy" in t, TIMEOUT)
            approval_id = request.split("Request #", 1)[1].split(".", 1)[0]
            await xmpp.say("bob", f"approve {approval_id}")
            for driver in (irc, xmpp):
                await driver.wait_for(lambda t: "needs approval" in t, TIMEOUT)
                await driver.wait_for(lambda t: "approved by boss" in t, TIMEOUT)
                await driver.wait_for(lambda t: "deploy succeeded" in t, TIMEOUT)
            assert any("bob (xmpp): approve" in t for t in irc.received())
    finally:
        await irc.stop()
        await xmpp.stop()
