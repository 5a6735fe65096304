"""Boot and shut down a complete opsroom: store, engines, rooms. Used by serve, demo and tests."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import threading
import time

import structlog

from opsroom.access.reconcile import reconcile_users
from opsroom.alerts.book import AlertBook
from opsroom.approvals import service as approvals
from opsroom.audit import checkpointer
from opsroom.automation.rules import RulesEngine
from opsroom.catalog import service as catalog_service
from opsroom.catalog.catalog import Catalog
from opsroom.catalog.errors import CatalogError
from opsroom.chat.base import ChatAdapter
from opsroom.chat.hub import RoomHub
from opsroom.chat.platforms import build_adapters
from opsroom.checks.monitor import Monitor
from opsroom.cluster import node as cluster_node
from opsroom.config import Settings
from opsroom.errors import OpsroomError
from opsroom.eventlog import retention
from opsroom.eventlog.relay import Relay
from opsroom.integrity import monitor as integrity
from opsroom.runbooks import service as runbooks
from opsroom.runbooks.executor import Executor
from opsroom.runtime import Runtime
from opsroom.store.lease import lease_for
from opsroom.store.lease import refusal as lease_refusal
from opsroom.store.migrate import upgrade, upgrade_unless_served
from opsroom.ticks import ticks

log = structlog.get_logger(__name__)


async def open_runtime(settings: Settings, catalog: Catalog | None = None, *, migrate: bool = True) -> Runtime:
    """A runtime with a migrated store and no engines running (CLI commands use this; they migrate
    only a store no server runs on). A server passes migrate=False and has `start` migrate once
    it holds the store's lease."""
    if catalog is None:
        if settings.catalog is None:
            catalog = Catalog()
        else:
            catalog = catalog_service.read_catalog(settings.catalog)
    settings.data.mkdir(parents=True, exist_ok=True)
    rt = Runtime(settings=settings, catalog=catalog)
    if migrate:
        await upgrade_unless_served(rt.engine)
    return rt


async def start(rt: Runtime, *, adapters: list[ChatAdapter] | None = None, schedule: bool = True,
                passwords: dict[str, str] | None = None, migrate: bool = False) -> None:
    """Start every engine. Order matters: rooms listen before checks can announce.

    Raises LeaseHeld, before anything starts, when another server runs against the same store.
    With `migrate`, the store is migrated after the lease is taken: a newer server refused
    because the older one still runs must not change the schema under it.
    """
    lease = lease_for(rt.engine, on_lost=lambda holder: _lease_lost(rt, holder))
    await lease.acquire()
    rt.lease = lease
    try:
        await _start_engines(rt, adapters=adapters, schedule=schedule, passwords=passwords, migrate=migrate)
    except BaseException:
        # A half-started server must not keep the store: stop what did start, give the lease back.
        try:
            await stop(rt)
        except Exception:
            log.exception("stopping a server that failed to start failed too")
        raise


async def _start_engines(rt: Runtime, *, adapters: list[ChatAdapter] | None, schedule: bool,
                         passwords: dict[str, str] | None, migrate: bool) -> None:
    if migrate:
        await upgrade(rt.engine)
    await reconcile_users(rt, passwords=passwords)
    await cluster_node.join(rt)  # PostgreSQL: this server's heartbeat (docs/cluster.md)
    rt.rooms = RoomHub(rt)
    for adapter in [*(adapters or []), *build_adapters(rt)]:
        rt.rooms.add_adapter(adapter)
    await rt.rooms.start()
    rt.executor = Executor(rt)
    rt.executor.attach()  # runs what the services say is ready (ExecutionReady), stops what they cancel
    rules = RulesEngine(rt)
    await rules.load()
    rules.attach()
    rt.rules = rules
    rt.monitor = Monitor(rt, shared=rt.membership is not None)
    await rt.monitor.load()
    alert_book = AlertBook(rt)
    await alert_book.load()
    rt.alerts = alert_book
    interrupted = await runbooks.recover_interrupted(rt)
    if interrupted:
        log.warning("executions interrupted by a previous stop", ids=[r.id for r in interrupted])
    rt.monitor.start(schedule=schedule)
    await cluster_node.share_checks(rt, schedule=schedule)
    relay = Relay(rt)
    await relay.start()
    rt.outbox = relay
    await integrity.start(rt)  # baseline scan, then inotify and scheduled rescans
    checkpointer.start(rt)  # signed audit checkpoints off the database (a refused key file stops here)
    _reload_on_hangup(rt)
    stopping = rt.housekeeping_stop = asyncio.Event()
    rt.housekeeping = asyncio.get_running_loop().create_task(_housekeeping(rt, stopping))
    rt.catalog.prepare()
    _ = rt.catalog_hash  # computed now, not by the first run request (executions record it)
    # The catalog and engines live as long as the process: move them out of the cyclic
    # collector's view, whose full passes over 20,000 checks otherwise pause the loop 40-80 ms.
    gc.collect()
    gc.freeze()


HOUSEKEEPING_EVERY_S = 5.0  # expired approvals and dead servers' executions are swept this often
PRUNE_EVERY_S = 3600.0  # the event log is pruned this often (the first time an hour after start)


async def _housekeeping(rt: Runtime, stopping: asyncio.Event) -> None:
    next_prune = time.monotonic() + PRUNE_EVERY_S
    async for _ in ticks(stopping, HOUSEKEEPING_EVERY_S):
        try:
            await approvals.expire_due(rt)
        except Exception:
            log.exception("expiring approvals failed")
        try:
            # Executions of a server that died on any host: closed within its dead window + a pass.
            await runbooks.recover_interrupted(rt)
        except Exception:
            log.exception("closing executions of dead servers failed")
        if time.monotonic() >= next_prune:
            next_prune = time.monotonic() + PRUNE_EVERY_S
            try:
                await retention.prune(rt, keep_s=rt.settings.event_log_keep_days * 86400)
            except Exception:
                log.exception("pruning the event log failed")


def _reload_on_hangup(rt: Runtime) -> None:
    """SIGHUP reloads the catalog, as for nginx or Prometheus. Only a server with a catalog path,
    in the main thread, and the first runtime of the process (tests start several in one loop)."""
    if rt.settings.catalog is None or threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    if getattr(loop, "_opsroom_hangup", False):
        return
    wake = asyncio.Event()
    try:
        loop.add_signal_handler(signal.SIGHUP, wake.set)
    except (NotImplementedError, RuntimeError, ValueError):  # no signals here (Windows, a nested loop)
        return
    loop._opsroom_hangup = True  # type: ignore[attr-defined]
    rt.hangup = loop.create_task(_hangups(rt, wake), name="opsroom-sighup")


async def _hangups(rt: Runtime, wake: asyncio.Event) -> None:
    # Signals while a reload runs are one more reload after it (the files may have changed since
    # it read them), however many came: never a queue of reloads.
    while True:
        await wake.wait()
        wake.clear()
        log.info("SIGHUP: reloading the catalog", path=str(rt.settings.catalog))
        try:
            await catalog_service.reload_catalog(rt, actor=catalog_service.SIGNAL_ACTOR, wait=True)
        except OpsroomError as exc:
            log.error(f"catalog reload on SIGHUP refused: {exc.message}")
        except Exception:
            log.exception("catalog reload on SIGHUP failed; the running catalog stays")


def _stop_hangups(rt: Runtime) -> asyncio.Task[None] | None:
    task, rt.hangup = rt.hangup, None
    if task is not None:
        loop = asyncio.get_running_loop()
        loop.remove_signal_handler(signal.SIGHUP)
        loop._opsroom_hangup = False  # type: ignore[attr-defined]
        task.cancel()
    return task


def refusal(exc: BaseException) -> str | None:
    """Why a server could not start, as a message with a hint, for the failures a person can fix
    (the store held by another server or unreachable, a store migrated by a newer opsroom);
    None for anything else, which deserves its traceback."""
    if isinstance(exc, CatalogError):
        return f"the catalog has problems:\n{exc.render()}"
    if isinstance(exc, OpsroomError):
        return exc.message + (f"\n  hint: {exc.hint}" if exc.hint else "")
    return lease_refusal(exc)


def _lease_lost(rt: Runtime, holder: str) -> None:
    # Another server has the store now: it runs the checks and recoveries, this one must not.
    log.critical("server lease lost to another server; checks and rules stop here", holder=holder)
    if rt.rules is not None:
        rt.rules.suspend(f"server lease lost to {holder}")
    if rt.monitor is not None:
        rt.lease_lost = asyncio.get_running_loop().create_task(rt.monitor.scheduler.stop())


async def stop(rt: Runtime) -> None:
    hangups = _stop_hangups(rt)
    if hangups is not None:
        with contextlib.suppress(asyncio.CancelledError):
            await hangups
    relay, rt.outbox = rt.outbox, None
    if relay is not None:
        await relay.stop()
    task, rt.housekeeping = rt.housekeeping, None
    if task is not None:
        assert rt.housekeeping_stop is not None
        rt.housekeeping_stop.set()
        try:
            await asyncio.wait_for(task, 10)
        except TimeoutError:
            log.warning("housekeeping did not stop within 10 s; cancelled")
    await cluster_node.stop_sharing(rt)
    await integrity.stop_for(rt)
    if rt.monitor is not None:
        await rt.monitor.stop()
    if rt.executor is not None:
        await rt.executor.close()
    await rt.bus.drain()
    if rt.rules is not None:
        await rt.rules.drain()
    if rt.rooms is not None:
        await asyncio.sleep(0)  # let queued room posts reach the store
        await rt.rooms.stop()
    await checkpointer.stop(rt)  # after the last audited write: the final checkpoint covers it
    lease, rt.lease = rt.lease, None
    if lease is not None:
        await lease.release()
    await cluster_node.leave(rt)
    await rt.close()
