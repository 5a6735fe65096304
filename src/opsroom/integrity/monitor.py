"""The server's integrity engine: inotify (watchdog) for changes as they happen, a full rescan on
a schedule for what inotify cannot promise.

inotify drops events when its queue overflows (fs.inotify.max_queued_events) and sees nothing of
changes made on another host of a network filesystem; watchdog reports the first as
EventsLostEvent, which here triggers a full rescan at once, and the schedule covers the second.
Events are gathered for a moment and judged as one batch (an editor's save is several events).
The watcher's thread only hands paths to the event loop; reading and hashing run in a worker
thread; the store is written by the service layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from watchdog.events import EventsLostEvent, FileClosedNoWriteEvent, FileOpenedEvent, FileSystemEvent
from watchdog.observers import Observer

from opsroom.events import CatalogReloaded, Event
from opsroom.integrity import live, service
from opsroom.integrity.scope import Scope

if TYPE_CHECKING:
    from watchdog.observers.api import BaseObserver

    from opsroom.runtime import Runtime

log = structlog.get_logger(__name__)

GATHER_S = 0.05  # events within this long after the first are judged in one batch
_IGNORED = (FileOpenedEvent, FileClosedNoWriteEvent)  # reads (ours too: hashing opens the file)


@dataclass
class Monitor:
    rt: Runtime
    scope: Scope
    pending: set[str] = field(default_factory=set)  # paths inotify named, not judged yet
    judging: set[str] = field(default_factory=set)  # the batch being judged now
    rescan_due: bool = False
    overflows: int = 0
    watching: bool = False
    last_scan_at: float = 0.0
    observer: BaseObserver | None = None
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    loop: asyncio.AbstractEventLoop | None = None

    # --- the watcher's thread -> the loop ---------------------------------------------------

    def dispatch(self, event: FileSystemEvent) -> None:
        """watchdog's callback (its thread): hand the paths to the loop, never block."""
        if isinstance(event, _IGNORED) or self.loop is None:
            return
        paths = [os.fsdecode(p) for p in (event.src_path, getattr(event, "dest_path", "")) if p]
        try:
            if isinstance(event, EventsLostEvent):
                self.loop.call_soon_threadsafe(self.overflowed)
            else:
                self.loop.call_soon_threadsafe(self.heard, paths)
        except RuntimeError:  # the loop closed under a stopping server: nothing left to tell
            pass

    def heard(self, paths: list[str]) -> None:
        for p in paths:
            if self.scope.covers(p):
                self.pending.add(p)
        if self.pending:
            self.wake.set()

    def overflowed(self) -> None:
        self.overflows += 1
        self.rescan_due = True
        log.warning("inotify dropped events (queue overflow): rescanning every watched file",
                    overflows=self.overflows)
        self.wake.set()

    # --- watches ------------------------------------------------------------------------------

    def watch(self) -> None:
        """(Re)start inotify on the scope's directories; without it, rescans alone keep watch."""
        self.unwatch()
        if not self.rt.settings.integrity_watch:
            return
        handler = _Handler(self)
        observer = Observer()
        try:
            for path, recursive in self.scope.watch_dirs():
                observer.schedule(handler, path, recursive=recursive)  # type: ignore[arg-type]
            observer.start()
        except OSError as exc:  # e.g. fs.inotify.max_user_instances or max_user_watches reached
            log.error("file integrity: inotify unavailable, scheduled rescans only", error=str(exc))
            with contextlib.suppress(Exception):
                observer.stop()
            return
        self.observer, self.watching = observer, True

    def unwatch(self) -> None:
        observer, self.observer, self.watching = self.observer, None, False
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        every = self.rt.settings.integrity_scan_minutes * 60
        failures = 0
        while not self.stopping.is_set():
            waited = self.last_scan_at + every - time.time()
            if waited > 0 and not self.rescan_due:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken(), timeout=waited)
            if self.stopping.is_set():
                return
            try:
                await self.pass_once()
                failures = 0
            except Exception:  # one bad pass must not end the watch: a full rescan tries again
                failures += 1
                self.rescan_due = True  # what the failed pass held is judged by the rescan
                log.exception("file integrity pass failed", failures=failures)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), timeout=min(60.0, 2.0 ** failures))

    async def _woken(self) -> None:
        stop = asyncio.ensure_future(self.stopping.wait())
        wake = asyncio.ensure_future(self.wake.wait())
        try:
            await asyncio.wait({stop, wake}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            wake.cancel()

    async def pass_once(self) -> None:
        """A full rescan when one is due (schedule, overflow), else the batch inotify named."""
        self.wake.clear()
        every = self.rt.settings.integrity_scan_minutes * 60
        if self.rescan_due or time.time() >= self.last_scan_at + every:
            found_by = "overflow" if self.rescan_due else "scan"
            self.rescan_due = False
            self.judging, self.pending = self.judging | self.pending, set()
            try:
                await service.scan_now(self.rt, found_by=found_by, sc=self.scope)
            finally:
                self.judging = set()
            self.last_scan_at = time.time()
            return
        if not self.pending:
            return
        await asyncio.sleep(GATHER_S)
        self.judging, self.pending = self.pending, set()
        try:
            await service.scan_now(self.rt, found_by="watch", paths=self.judging, sc=self.scope)
        finally:
            self.judging = set()

    async def catalog_reloaded(self, _ev: Event) -> None:
        """A new catalog may name other scripts: watch what it names, and rescan."""
        new = service.scope(self.rt)
        if new != self.scope:
            self.scope = new
            await asyncio.to_thread(self.watch)
        self.rescan_due = True
        self.wake.set()


class _Handler:
    """watchdog's handler protocol (dispatch), without subclassing its untyped base."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def dispatch(self, event: FileSystemEvent) -> None:
        self.monitor.dispatch(event)


@dataclass
class Handle:
    monitor: Monitor


async def start(rt: Runtime) -> Handle:
    """Scan once (the first start makes the baseline), then watch and rescan until stop()."""
    sc = service.scope(rt)
    monitor = Monitor(rt=rt, scope=sc, loop=asyncio.get_running_loop())
    # Watch before the first scan: a change made while it reads is then heard, not lost between.
    await asyncio.to_thread(monitor.watch)
    try:
        await service.scan_now(rt, found_by="start", sc=sc)
    except BaseException:
        await asyncio.to_thread(monitor.unwatch)
        raise
    monitor.last_scan_at = time.time()
    rt.bus.subscribe(CatalogReloaded, monitor.catalog_reloaded)
    monitor.task = asyncio.get_running_loop().create_task(monitor.run(), name="integrity")
    live.register(rt, monitor)
    return Handle(monitor)


async def stop(handle: Handle) -> None:
    monitor = handle.monitor
    monitor.stopping.set()
    live.unregister(monitor.rt)
    await asyncio.to_thread(monitor.unwatch)
    if monitor.task is not None:
        try:
            await asyncio.wait_for(asyncio.shield(monitor.task), timeout=30)
        except TimeoutError:
            monitor.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor.task


async def stop_for(rt: Runtime) -> None:
    """Stop the engine start(rt) began, if any (the Runtime holds no field for it)."""
    monitor = live.engine(rt)
    if isinstance(monitor, Monitor):
        await stop(Handle(monitor))


def describe(rt: Runtime) -> dict[str, Any]:
    """What this server's engine is doing (for status): watching, overflows, last rescan."""
    monitor = live.engine(rt)
    if not isinstance(monitor, Monitor):
        return {"running": False}
    return {"running": True, "watching": monitor.watching, "overflows": monitor.overflows,
            "last_scan_at": monitor.last_scan_at, "pending": len(monitor.pending)}
