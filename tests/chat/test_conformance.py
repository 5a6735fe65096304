"""One conformance suite for every chat adapter: the fake, the web room and the seven platforms.

Each platform is driven by its Driver (tests/chat/drivers/), which acts as people through the
platform's own wire: the real server where it runs here, a fake speaking the documented wire
format otherwise. opsroom runs whole, in-process, with room `ops` bound to the driver's channel.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from opsroom.access import service as access
from opsroom.audit.models import AuditRecordRow as AuditRow
from opsroom.chat.base import Message
from opsroom.rooms.service import history_of
from tests.chat.driver import Driver
from tests.chat.harness import Served, serve
from tests.chat.harness import request_approval as _request

DRIVERS_DIR = Path(__file__).parent / "drivers"
DRIVERS = sorted(p.stem for p in DRIVERS_DIR.glob("*.py") if p.stem != "__init__")
TIMEOUT = 20.0


def _cls(name: str) -> type[Driver]:
    cls: type[Driver] = importlib.import_module(f"tests.chat.drivers.{name}").DRIVER
    return cls


def _driver(name: str) -> Driver:
    return _cls(name)()


def _having(what: str) -> list[str]:
    """The drivers of platforms that have a capability: a test of it runs for those only (a
    platform without buttons is not skipped, it has no such test)."""
    overrides = {"redeliver": "redeliver", "bots": "bot_says"}
    if what in overrides:
        return [d for d in DRIVERS if getattr(_cls(d), overrides[what]) is not getattr(Driver, overrides[what])
                and d != "web"]
    if what == "accounts":
        return [d for d in DRIVERS if d != "web"]  # web people are opsroom users: nothing to link
    if what == "rate":
        return [d for d in DRIVERS if d != "web"]  # in-process, never rate-limited
    return [d for d in DRIVERS if getattr(_cls(d), what)]


@pytest.fixture(params=DRIVERS)
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Driver, Served]]:
    driver = _driver(request.param)
    await driver.start(tmp_path / "platform")
    try:
        async with serve(tmp_path, driver) as served:
            await driver.attach(served)
            yield driver, served
    finally:
        await driver.stop()


def _count(driver: Driver, pattern: str) -> int:
    return sum(1 for t in driver.received() if re.search(pattern, t))


async def _barrier(driver: Driver) -> None:
    """Everything the people did before this was handled: one more `status` was answered."""
    seen = _count(driver, r"Sys.*healthy")
    await driver.say("alice", "status")
    await driver.wait_for(lambda _t: _count(driver, r"Sys.*healthy") > seen, TIMEOUT)


async def test_join_say_and_reply(world: tuple[Driver, Served]) -> None:
    driver, _ = world
    await driver.say("alice", "status")
    await driver.wait_for(lambda t: "Sys" in t and "healthy" in t, TIMEOUT)


async def test_a_line_is_relayed_to_other_bindings_and_never_echoed(world: tuple[Driver, Served]) -> None:
    driver, served = world
    await driver.say("alice", "just chatting, token-7f3a")
    await _barrier(driver)
    stored = [m.text for m in await history_of(served.rt, room="ops")]
    assert any("token-7f3a" in t for t in stored), stored  # the room (and the web room) has it
    if driver.name == "web":
        # The web room shows the whole room to every viewer, own lines included: once.
        lines = driver.all_lines()  # type: ignore[attr-defined]
        assert sum(1 for t in lines if t == "just chatting, token-7f3a") == 1, lines
    else:
        assert not any("token-7f3a" in t for t in driver.received()), "a person's line came back to them"
    if driver.name != "web":
        # Said in the web room: relayed to the platform with its author named.
        web = served.rt.rooms.adapters["web"]  # type: ignore[union-attr]
        actor = await access.actor_by_name(served.rt, name="lead", door="web")
        await web.said("ops", actor, "from the web, token-91c2")  # type: ignore[attr-defined]
        relayed = await driver.wait_for(lambda t: "token-91c2" in t, TIMEOUT)
        assert "lead" in relayed


async def test_approval_by_text(world: tuple[Driver, Served]) -> None:
    driver, _ = world
    approval_id = await _request(driver)
    if driver.name != "web":
        # The request mentions the approver linked on this platform, directly (never @channel).
        request = next(t for t in driver.received() if f"Request #{approval_id}" in t)
        assert driver.mentions(request, "bob"), request
    await driver.say("bob", f"approve {approval_id}")
    await driver.wait_for(lambda t: "approved by boss" in t, TIMEOUT)
    await driver.wait_for(lambda t: "deploy" in t and ("succeeded" in t or "finished" in t or "deployed" in t), TIMEOUT)


@pytest.mark.parametrize("world", _having("buttons"), indirect=True)
async def test_approval_by_button_and_a_forged_click_is_refused(world: tuple[Driver, Served]) -> None:
    driver, served = world
    approval_id = await _request(driver)
    await driver.click("bob", approval_id, "approve", forge=True)
    await _barrier(driver)
    assert not any("approved by" in t for t in driver.received()), "a forged click approved"
    # The refusal is audited off the platform's path (chat/hub.py RefusalAudit): give it a moment.
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while True:
        async with served.rt.read() as s:
            refused = (await s.execute(select(AuditRow).where(AuditRow.outcome.in_(("denied", "refused"))))).scalars()
            if any(r.action in ("chat.refused", "approval.approve") for r in refused):
                break
        assert asyncio.get_running_loop().time() < deadline, "the forged click left no refusal in the audit log"
        await asyncio.sleep(0.1)
    await driver.click("bob", approval_id, "approve")
    await driver.wait_for(lambda t: "approved by boss" in t, TIMEOUT)


async def test_nobody_approves_their_own_request(world: tuple[Driver, Served]) -> None:
    driver, _ = world
    approval_id = await _request(driver)
    await driver.say("alice", f"approve {approval_id}")
    await driver.wait_for(lambda t: "own request" in t or "cannot approve" in t or "may not" in t, TIMEOUT)
    assert not any("approved by" in t for t in driver.received())


@pytest.mark.parametrize("world", _having("accounts"), indirect=True)
async def test_a_request_made_in_the_web_room_cannot_be_approved_from_ones_linked_account(
        world: tuple[Driver, Served]) -> None:
    """Separation of duties across doors: alice's account is linked to `you`, who asked in the web room."""
    driver, served = world
    assert served.rt.rooms is not None
    web = served.rt.rooms.adapters["web"]
    you = await access.actor_by_name(served.rt, name="you", door="web")
    await web.said("ops", you, "run deploy")  # type: ignore[attr-defined]
    text = await driver.wait_for(lambda t: "needs approval" in t and "deploy" in t, TIMEOUT)
    approval_id = int(re.search(r"Request #(\d+)", text).group(1))  # type: ignore[union-attr]
    await driver.say("alice", f"approve {approval_id}")
    await driver.wait_for(lambda t: "own request" in t or "may not approve" in t, TIMEOUT)
    if driver.buttons:
        await driver.click("alice", approval_id, "approve")
    await _barrier(driver)
    assert not any("approved by" in t for t in driver.received()), driver.received()


@pytest.mark.parametrize("world", _having("accounts"), indirect=True)
async def test_an_unlinked_account_can_only_help_whoami_link(world: tuple[Driver, Served]) -> None:
    driver, _ = world
    await driver.say("carol", "status")
    await driver.wait_for(lambda t: "link" in t and "Sys" not in t, TIMEOUT)
    await driver.say("carol", "whoami")
    await driver.wait_for(lambda t: "not linked" in t.lower() or "link" in t.lower(), TIMEOUT)
    assert not any("Sys:" in t for t in driver.received())


@pytest.mark.parametrize("world", _having("streams"), indirect=True)
async def test_output_streaming(world: tuple[Driver, Served]) -> None:
    driver, _ = world
    await driver.say("alice", "run count n=42")
    await driver.wait_for(lambda t: "count" in t and "succeeded" in t, TIMEOUT)
    async with asyncio.timeout(TIMEOUT):
        while not any("42" in t for t in driver.streamed()):
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("world", _having("rate"), indirect=True)
async def test_sends_are_paced_to_the_platform_rate(world: tuple[Driver, Served]) -> None:
    driver, served = world
    assert served.rt.rooms is not None
    caps = served.rt.rooms.adapters[driver.name].capabilities
    assert caps.rate_per_s is not None, f"{driver.name} declares no rate limit"
    n = caps.burst + 4
    started = time.monotonic()
    for i in range(n):
        served.rt.rooms.post_nowait(Message(room="ops", text=f"paced notice {i}", kind="notice"))
    await driver.wait_for(lambda t: f"paced notice {n - 1}" in t, TIMEOUT + n / caps.rate_per_s)
    took = time.monotonic() - started
    got = [int(m.group(1)) for t in driver.received() if (m := re.search(r"paced notice (\d+)", t))]
    assert got == list(range(n)), got  # all of them, in order, once
    assert took >= (n - caps.burst - 1) / caps.rate_per_s * 0.8, f"{n} sends in {took:.2f}s beat the rate limit"


async def test_reconnect_delivers_what_was_queued_once(world: tuple[Driver, Served]) -> None:
    driver, served = world
    assert served.rt.rooms is not None
    await driver.say("alice", "status")
    await driver.wait_for(lambda t: "Sys" in t, TIMEOUT)
    await driver.server_down()
    for i in range(3):
        served.rt.rooms.post_nowait(Message(room="ops", text=f"while away {i}", kind="notice"))
    await asyncio.sleep(0.5)
    await driver.server_up()
    await driver.wait_for(lambda t: "while away 2" in t, 60)
    await driver.say("alice", "status")  # and the conversation goes on
    await driver.wait_for(lambda t: _count(driver, "Sys") >= 2, TIMEOUT)
    got = [t for t in driver.received() if "while away" in t]
    assert [re.search(r"while away (\d)", t).group(1) for t in got] == ["0", "1", "2"], got  # type: ignore[union-attr]


@pytest.mark.parametrize("world", _having("redeliver"), indirect=True)
async def test_a_duplicate_delivery_is_answered_once(world: tuple[Driver, Served]) -> None:
    driver, _ = world
    await driver.say("alice", "executions")
    await driver.wait_for(lambda t: "executions" in t.lower(), TIMEOUT)
    await driver.redeliver()
    await _barrier(driver)
    assert _count(driver, r"(?i)no executions yet|recent executions") == 1


@pytest.mark.parametrize("world", _having("bots"), indirect=True)
async def test_the_bot_never_answers_a_bot(world: tuple[Driver, Served]) -> None:
    driver, _ = world
    await driver.bot_says("!status")
    await driver.say("alice", "executions")  # barrier
    await driver.wait_for(lambda t: "executions" in t.lower(), TIMEOUT)
    assert _count(driver, r"Sys") == 0, driver.received()
    # Its own lines are never taken as commands either: one reply per question, no loop.
    await driver.say("alice", "!status")
    await driver.wait_for(lambda t: "Sys" in t, TIMEOUT)
    await asyncio.sleep(0.3)
    assert _count(driver, r"Sys") == 1, driver.received()
