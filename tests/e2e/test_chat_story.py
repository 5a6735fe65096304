"""Acceptance 2 of the chat platforms issue: the seed story across real chat servers.

A real `opsroom demo` (its own catalog copy, room `ops` bound to a Matrix room on Synapse, an
IRC channel on ngircd and an XMPP MUC on prosody, all started on loopback) and people on each
platform as bare clients. They link their accounts the way a person does (`opsroom user link`
prints a code, they type `link CODE`); the request comes from Matrix, the approval from IRC, and
every bound platform sees the three notices: the problem, the approval, the recovery.
"""

from __future__ import annotations

import importlib
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.chat.driver import Driver
from tests.e2e.harness import Demo, cli, start_demo
from tests.factories import DEMO_CATALOG

pytestmark = pytest.mark.e2e
PLATFORMS = ("matrix", "irc", "xmpp")
TIMEOUT = 40.0


def _driver(name: str) -> Driver:
    cls: type[Driver] = importlib.import_module(f"tests.chat.drivers.{name}").DRIVER
    return cls()


def _catalog(tmp: Path, drivers: dict[str, Driver]) -> Path:
    """The packaged demo catalog with its room bound to each platform's channel."""
    root = tmp / "catalog"
    shutil.copytree(DEMO_CATALOG, root)
    rooms = yaml.safe_load((root / "rooms.yaml").read_text())
    rooms["rooms"][0]["bind"] = [f"{d.name}:{d.channel}" for d in drivers.values()]
    (root / "rooms.yaml").write_text(yaml.safe_dump(rooms, sort_keys=False))
    (root / "platforms.yaml").write_text(yaml.safe_dump({"platforms": [d.platform_item() for d in drivers.values()]},
                                                        sort_keys=False))
    return root


async def _link(demo: Demo, driver: Driver, person: str, user: str) -> None:
    """As a person does it: an admin prints a code, the person types `link CODE` on the platform."""
    done = cli("user", "link", user, "--data", str(demo.data), env=demo.env)
    assert done.returncode == 0, done.stderr
    code = done.stdout.strip().split()[-1]
    await driver.say(person, f"link {code}")
    await driver.wait_for(lambda t: "linked" in t and user in t, TIMEOUT)


async def test_the_seed_story_across_matrix_irc_and_xmpp(tmp_path: Path) -> None:
    drivers = {name: _driver(name) for name in PLATFORMS}
    demo = None
    try:
        for name, d in drivers.items():
            await d.start(tmp_path / name)
        demo = start_demo(tmp_path, extra=["--catalog", str(_catalog(tmp_path, drivers))])
        matrix, irc, xmpp = drivers["matrix"], drivers["irc"], drivers["xmpp"]
        await _link(demo, matrix, "alice", "you")
        await _link(demo, irc, "bob", "boss")
        await matrix.say("alice", "health system-a")
        await matrix.wait_for(lambda t: "System A is healthy" in t, TIMEOUT)

        demo.kill_service("service-b")
        for d in drivers.values():  # 1: the problem, on every platform
            await d.wait_for(lambda t: "System A is unhealthy" in t and "service-b" in t, TIMEOUT)

        await matrix.say("alice", "Start Service B")
        asked = await matrix.wait_for(lambda t: "needs approval" in t, TIMEOUT)
        request = int(re.search(r"Request #(\d+)", asked).group(1))  # type: ignore[union-attr]
        await irc.wait_for(lambda t: f"Request #{request}" in t, TIMEOUT)
        await irc.say("bob", f"approve {request}")
        for d in drivers.values():  # 2: the approval, on every platform
            await d.wait_for(lambda t: "approved by boss" in t, TIMEOUT)
        for d in drivers.values():  # 3: the recovery, on every platform
            await d.wait_for(lambda t: "service-b started" in t, TIMEOUT)
        await xmpp.wait_for(lambda t: "System A is healthy again" in t, TIMEOUT)
        # Nobody's line came back to where it was said; each went to the other platforms.
        assert not any("Start Service B" in t and "alice" in t for t in matrix.received())
        await irc.wait_for(lambda t: "Start Service B" in t, TIMEOUT)
    finally:
        if demo is not None:
            demo.stop()
        for d in drivers.values():
            await d.stop()
