"""In-process event bus: publishers never wait on slow subscribers.

Handlers run as tasks so a slow room (a phone on a poor link) never delays the
rule that recovers the service. Cross-node fan-out is a later layer on top.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from opsroom.events import Event

Handler = Callable[[Any], Awaitable[None]]
log = structlog.get_logger(__name__)


class Bus:
    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._tasks: set[asyncio.Task[None]] = set()
        self.history: list[Event] = []
        self.keep_history = False

    def subscribe(self, event_type: type[Event] | str, handler: Handler) -> None:
        key = event_type if isinstance(event_type, str) else event_type.type
        self._handlers[key].append(handler)

    def publish(self, event: Event) -> None:
        if self.keep_history:
            self.history.append(event)
        for handler in (*self._handlers.get(event.type, ()), *self._handlers.get("*", ())):
            task = asyncio.get_running_loop().create_task(self._run(handler, event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, handler: Handler, event: Event) -> None:
        try:
            await handler(event)
        except Exception:
            # One broken subscriber must not silence the others.
            log.exception("event handler failed", event_type=event.type, handler=repr(handler))

    async def drain(self) -> None:
        """Wait until every handler started so far (and those they started) is done."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
