"""A whole opsroom in this process with the fake chat adapter: boot, settle, read what was said."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from opsroom import server
from opsroom.chat.base import Message
from opsroom.chat.fake import FakeAdapter
from opsroom.config import Settings
from opsroom.runtime import Runtime
from tests.factories import PASSWORDS


@asynccontextmanager
async def booted(tmp: Path, catalog: Path) -> AsyncIterator[tuple[Runtime, FakeAdapter]]:
    """Start every engine but the schedule (tests feed results); keep the event history."""
    rt = await server.open_runtime(Settings(data=tmp / "data", catalog=catalog))
    fake = FakeAdapter()
    await server.start(rt, adapters=[fake], schedule=False, passwords=PASSWORDS)
    rt.bus.keep_history = True
    try:
        yield rt, fake
    finally:
        await settle(rt)
        await server.stop(rt)


async def settle(rt: Runtime) -> None:
    """Wait until every event handler, execution and rule bookkeeping write started so far is done."""
    assert rt.executor is not None
    rules = rt.rules
    while True:
        await rt.bus.drain()
        pending = [*rt.executor.tasks.values(), *rules._tasks]
        if not pending:
            break
        await asyncio.gather(*pending, return_exceptions=True)
    # Announcements are made by the log's consumer after the change commits: wait until it has read
    # everything logged so far, and for what its rounds published.
    if rt.rooms is not None and rt.rooms.announcer is not None:
        await rt.rooms.announcer.consumer.caught_up(timeout=10)
        await rt.bus.drain()


async def said(rt: Runtime, fake: FakeAdapter, since: int = 0) -> list[str]:
    """Everything the bot said so far (a barrier message flushes the room's ordered queue)."""
    await settle(rt)
    assert rt.rooms is not None
    await rt.rooms.post(Message(room="ops", text="(barrier)", kind="notice"))
    return [m.text for m in fake.sent[since:] if m.text != "(barrier)" and m.author is None]


async def ask(fake: FakeAdapter, user: str, text: str, room: str = "ops") -> str:
    """Say something as a person and return the bot's last reply to it."""
    before = len(fake.sent)
    await fake.say(room, user, text)
    replies = [m for m in fake.sent[before:] if m.kind == "bot"]
    assert replies, f"no reply to {text!r}"
    return replies[-1].text
