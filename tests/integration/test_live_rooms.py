"""What the service layer reads of the rooms comes from the Runtime's read model (rooms/live.py),
which the hub fills: `who`, `whoami`/`link` on a platform whose login is opsroom's, a web line
(issue 14 point 6: no service reaches into the hub that calls it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsroom.access import service as access
from opsroom.chat.fake import FakeAdapter
from opsroom.errors import NotFound
from opsroom.rooms import service as rooms
from opsroom.runtime import Runtime
from tests import inprocess
from tests.chat.harness import serve


async def test_who_names_the_people_present_with_their_roles(running: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = running
    assert await inprocess.ask(fake, "you", "who") == "nobody else is here"
    await fake.join("ops", "boss")
    assert await inprocess.ask(fake, "you", "who") == "here: boss (approver)"
    assert [p["name"] for p in await rooms.present(rt, room="ops")] == ["boss"]


async def test_the_read_model_follows_the_adapters(running: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = running
    known = rt.live_rooms.platforms[fake.name]
    assert (known.implicit, known.trusted_identity) == (fake.implicit, fake.trusted_identity)
    # A trusted platform's login is an opsroom login: nothing to link there.
    reply = await inprocess.ask(fake, "you", "link ABCD1234")
    assert "there is nothing to link here" in reply, reply


async def test_without_a_web_room_a_web_line_is_refused(running: tuple[Runtime, FakeAdapter]) -> None:
    rt, _fake = running
    assert rt.live_rooms.web is None  # this server runs no web app
    you = await access.actor_by_name(rt, name="you", door="api")
    with pytest.raises(NotFound, match="the web room is not running"):
        await rooms.say(rt, actor=you, room="ops", text="executions")


async def test_a_web_line_goes_in_through_the_web_rooms_inlet(tmp_path: Path) -> None:
    async with serve(tmp_path) as served:
        rt = served.rt
        assert rt.live_rooms.web is not None, "the web app's room registers its inlet"
        you = await access.actor_by_name(rt, name="you", door="api")
        await rooms.say(rt, actor=you, room="ops", text="executions")
        said = await rooms.history_of(rt, room="ops", limit=2)
        assert [(m.author, m.kind) for m in said] == [("you", "person"), ("opsroom", "bot")], said
