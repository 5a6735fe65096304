"""In-process event bus: publishers never wait on slow subscribers.

Handlers run as tasks so a slow room (a phone on a poor link) never delays the
rule that recovers the service. The bus is the fast path inside one process; the
durable event log (eventlog/) carries events to other processes and to consumers
that must not miss one.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from opsroom.events import Event

Handler = Callable[[Any], Awaitable[None]]
Listener = Callable[[Event], None]
log = structlog.get_logger(__name__)

# Test-only (tests/eventlog/test_kill.py): the event type after whose commit the process freezes
# before publishing it, so a kill -9 lands between a change's commit and its announcement. Unset
# (the default) it costs one comparison per publish.
HANG_BEFORE_PUBLISH_ENV = "OPSROOM_TEST_HANG_BEFORE_PUBLISH"


class Bus:
    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._tasks: set[asyncio.Task[None]] = set()
        self.history: list[Event] = []
        self.keep_history = False
        # Called in publish itself, synchronously: cheap wake-ups (an event log consumer's nudge).
        self._listeners: list[Listener] = []
        self._hang_before = os.environ.get(HANG_BEFORE_PUBLISH_ENV) or None

    def subscribe(self, event_type: type[Event] | str, handler: Handler) -> None:
        key = event_type if isinstance(event_type, str) else event_type.type
        self._handlers[key].append(handler)

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(event)` in every publish; it must not block (set a flag, wake a task)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def publish(self, event: Event) -> None:
        if self._hang_before is not None and event.type == self._hang_before:
            log.warning("test hook: frozen before publishing", env=HANG_BEFORE_PUBLISH_ENV, event_type=event.type,
                        uid=event.uid)
            time.sleep(3600)  # blocks the whole process on purpose: the test kills it here
        if self.keep_history:
            self.history.append(event)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed", event_type=event.type, listener=repr(listener))
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
