"""A platform that is slow or rate-limited fills its own send queue and nobody else's.

Acceptance: a burst of 200 messages to a platform limited to 1 message/s does not change the
web room's reply latency, and the overflow is counted (in the hub and in /metrics).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import httpx

from opsroom.chat.base import Message
from tests.chat.drivers.web import _Person
from tests.chat.harness import serve

ROUNDS = 15


async def _reply_ms(person: _Person) -> float:
    """One `status` in the web room to its reply, as the person's socket sees it."""
    before = len(person.frames)
    assert person.ws is not None
    started = time.perf_counter()
    await person.ws.send('{"type": "say", "text": "status"}')
    async with asyncio.timeout(10):
        while not any(f.get("type") == "message" and f.get("author") == "opsroom" and "Sys" in f.get("text", "")
                      for f in person.frames[before:]):
            await asyncio.sleep(0.001)
    return (time.perf_counter() - started) * 1000


async def test_a_burst_to_a_slow_platform_leaves_the_web_room_alone(tmp_path: Path) -> None:
    slow = {"name": "slow", "type": "fake", "rate_per_s": 1, "burst": 1, "queue_size": 50}
    async with serve(tmp_path, platforms=[slow], rooms=[{"name": "ops", "bind": ["slow:C1"]}]) as served:
        rooms = served.rt.rooms
        assert rooms is not None
        person = _Person(served.base, "you")
        await person.login()
        await person.open()
        try:
            for _ in range(3):
                await _reply_ms(person)  # warm up
            quiet = [await _reply_ms(person) for _ in range(ROUNDS)]
            for i in range(200):
                rooms.post_nowait(Message(room="ops", text=f"burst {i}", kind="notice"))
            # The room's own work on the 200 (storing them, the web room's copies) is done first:
            # what is measured next is the web room while the slow platform's queue is still full
            # (it sends one a second), which is what must not slow it down.
            await asyncio.wait_for(rooms.flushed(), 30)
            assert len(rooms.queues["slow"]) > 0
            busy = [await _reply_ms(person) for _ in range(ROUNDS)]
        finally:
            await person.close()
            assert person.http is not None
            await person.http.aclose()
        queue = rooms.queues["slow"]
        # The slow platform got what its rate allows, in order; the rest waits or was dropped.
        slow_adapter = rooms.adapters["slow"]
        got = [o.text for o in slow_adapter.sent]  # type: ignore[attr-defined]
        assert len(got) <= 1 + 1 + len(quiet + busy), got  # burst 1, 1/s: the test takes a few seconds
        assert queue.stats.overflow >= 200 - 50 - len(got), queue.stats
        assert len(queue) <= 50
        # The web room answered as fast with the burst as without it (the 200 notices themselves
        # pass the web room too; that is its normal work, not the slow platform's queue).
        q, b = statistics.median(quiet), statistics.median(busy)
        assert b <= q * 2 + 10, f"web room reply median {q:.1f} ms quiet, {b:.1f} ms with the burst"
        async with httpx.AsyncClient(base_url=served.base) as http:
            text = (await http.get("/metrics")).text
        line = next(x for x in text.splitlines() if x.startswith('opsroom_chat_overflow_total{platform="slow"}'))
        assert float(line.split()[-1]) == queue.stats.overflow
