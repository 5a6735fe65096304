"""`opsroom worker`: a Celery worker on one environment's queue, its store and its heartbeat.

Celery's own worker (solo pool: one step at a time per process, prefetch one) consumes the
queue on the main thread; the store, the membership heartbeat and the steps' processes live
on an asyncio loop in a thread of their own, so the heartbeat goes on while a step runs. A
task's body hands the task to that loop and waits for the step's end, then Celery acks it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

import structlog

from opsroom.catalog.catalog import Catalog
from opsroom.cluster.membership import Membership
from opsroom.config import Settings
from opsroom.runtime import Runtime
from opsroom.workers import queues
from opsroom.workers.runner import StepRunner

log = structlog.get_logger(__name__)


class WorkerError(Exception):
    """A worker that cannot start: what, and how to fix it; `code` is the exit code."""

    def __init__(self, message: str, hint: str, code: int) -> None:
        super().__init__(message)
        self.message, self.hint, self.code = message, hint, code


def preflight(broker: str, environment: str) -> None:
    """Before consuming: can these credentials declare and read the environment's queue?

    RabbitMQ checks permissions per queue and exchange; Celery would log the refusal and
    retry forever. This says it once, clearly, and the worker exits non-zero. Redis has no
    per-queue permissions: nothing to check beyond the connection.
    """
    from amqp.exceptions import AccessRefused, NotAllowed  # type: ignore[import-untyped]
    from kombu.connection import Connection

    name = queues.queue_name(environment)
    shown = queues.shown_url(broker)
    user = urlsplit(broker).username or "guest"
    with Connection(broker, connect_timeout=5) as conn:  # type: ignore[no-untyped-call]
        try:
            conn.ensure_connection(max_retries=1)
        except Exception as exc:
            raise WorkerError(f"cannot reach the broker {shown}: {exc}",
                              "check the broker URL (OPSROOM_BROKERS, OPSROOM_BROKER_URL) and that it runs",
                              5) from None
        if not broker.startswith(("amqp", "pyamqp")):
            return
        try:
            channel = conn.channel()
            channel.basic_qos(0, 1, False)
            queues.queue(environment)(channel).declare()  # type: ignore[no-untyped-call]
            # A consume (cancelled at once) is what needs the read permission.
            tag = channel.basic_consume(name, no_ack=False, callback=lambda _message: None)
            channel.basic_cancel(tag)
        except (AccessRefused, NotAllowed) as exc:
            raise WorkerError(
                f"the broker credentials of user {user!r} cannot read queue {name} on {shown}: {exc}",
                f"a worker of environment {environment} needs that environment's credentials (configure, write and "
                f"read on ^opsroom\\.{environment}$, docs/workers.md); or start it with the --environment its "
                "credentials are for", 3) from None


class Worker:
    """The loop thread, the runtime on it, the membership row and the step runner."""

    def __init__(self, settings: Settings, catalog: Catalog, *, environment: str) -> None:
        self.settings, self.catalog, self.environment = settings, catalog, environment
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="opsroom-worker-loop", daemon=True)
        self.rt: Runtime | None = None
        self.membership: Membership | None = None
        self.runner: StepRunner | None = None

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self.loop).result()

    async def _open(self) -> None:
        self.settings.data.mkdir(parents=True, exist_ok=True)
        rt = self.rt = Runtime(settings=self.settings, catalog=self.catalog)
        self.membership = Membership(rt, kind="worker", environment=self.environment, info=self._info)
        self.runner = StepRunner(rt, environment=self.environment, membership=self.membership)
        await self.membership.start()
        killed = await self.runner.kill_orphans()
        if killed:
            log.warning("killed process groups left by dead workers of this host", count=killed)
        await self.runner.open()

    def _info(self) -> dict[str, Any]:
        return {"queue": queues.queue_name(self.environment),
                "running_step": self.runner.running if self.runner is not None else None}

    def handle(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """Called on Celery's thread: the step runs on the loop; this waits for its end (then the ack)."""
        assert self.runner is not None
        return asyncio.run_coroutine_threadsafe(self.runner.handle(args, kwargs), self.loop).result()

    def stop(self) -> None:
        async def close() -> None:
            if self.membership is not None and self.membership.beats:  # it has a row to mark stopped
                await self.membership.stop()
            if self.runner is not None:
                await self.runner.close()
            if self.rt is not None:
                await self.rt.close()

        try:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=15)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)


def serve(settings: Settings, catalog: Catalog, *, environment: str, broker: str) -> None:
    """Consume `opsroom.<environment>` until stopped (SIGTERM/SIGINT: the running step ends first)."""
    preflight(broker, environment)
    worker = Worker(settings, catalog, environment=environment)
    try:
        worker.start()
    except Exception as exc:
        worker.stop()
        from opsroom.store.lease import refusal

        reason = refusal(exc)
        message, _, hint = (reason or f"cannot use the store: {type(exc).__name__}").partition("\n  hint: ")
        raise WorkerError(message, hint or "check OPSROOM_DATABASE_URL, and that `opsroom migrate` ran on that store",
                          1) from None
    try:
        app = queues.make_app(broker, environments=[environment])

        def run_step(*args: Any, **kwargs: Any) -> str:
            return worker.handle(args, kwargs)

        app.task(run_step, name=queues.TASK, acks_late=True, reject_on_worker_lost=False, ignore_result=True,
                 typing=False)

        app.worker_main(["worker", "--pool=solo", "--concurrency=1", "--prefetch-multiplier=1",
                         f"--queues={queues.queue_name(environment)}", "--without-gossip", "--without-mingle",
                         "--without-heartbeat", "--loglevel=WARNING",
                         f"--hostname=opsroom-{environment}@{socket.gethostname()}-{os.getpid()}"])
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        worker.stop()
