"""The server's side of a step on a worker: queue it, follow it, stop it, notice its worker die.

The output comes back through the store (worker_output), not over the broker: a server that
restarts, or another server, can still read what a step printed; the worker needs the store
anyway (its claim and its heartbeat), and a worker's broker credentials then need nothing but
its own environment's queue (a reply queue per server would need more permissions on it).
The server polls every POLL_S; the rooms stream at most once a second, so the delay is unseen.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from celery import Celery  # type: ignore[import-untyped]
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from opsroom.cluster.membership import Membership
from opsroom.runtime import Runtime
from opsroom.workers import queues, statements
from opsroom.workers.models import WorkerOutputRow, WorkerStepRow

log = structlog.get_logger(__name__)
POLL_S = 0.05
DEAD_CHECK_S = 1.0  # how often a running step's worker is looked up in the membership
WAITING_NOTE_S = 5.0  # a step still queued after this gets a line saying so in its output
FINAL = frozenset({"succeeded", "failed", "timed_out", "cancelled", "interrupted"})

_ADD_STEP = insert(WorkerStepRow)
_ADD_STEP_RETURNING = insert(WorkerStepRow).returning(WorkerStepRow.id)
_FIND_STEP = select(WorkerStepRow.id).where(WorkerStepRow.execution_id == bindparam("execution_id"),
                                            WorkerStepRow.step == bindparam("step"),
                                            WorkerStepRow.token == bindparam("token"))


@dataclass(frozen=True)
class StepResult:
    status: str  # one of FINAL
    error: str | None
    worker: str | None


class Dispatcher:
    """One per executor: a Celery app per broker URL, made on first use and kept (warm connections)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._apps: dict[str, Celery] = {}
        self._membership: Membership | None = None
        self._kept = statements.KeptConnection(rt) if statements.usable(rt) else None

    def _app(self, broker: str) -> Celery:
        app = self._apps.get(broker)
        if app is None:
            app = self._apps[broker] = queues.make_app(broker)
        return app

    async def close(self) -> None:
        for app in self._apps.values():
            await asyncio.to_thread(app.close)
        self._apps.clear()
        if self._kept is not None:
            await self._kept.close()

    async def run_step(self, *, execution_id: int, index: int, environment: str, broker: str,
                       write: Callable[[str], None], graceful: Callable[[], bool], grace_s: float) -> StepResult:
        """Queue step `index` of the execution for a worker of `environment` and follow it to its end.

        A cancel (of the task running this) asks the worker to stop the step, waits for it to say
        so within the grace period, and re-raises.
        """
        token = secrets.token_hex(16)
        values = {"execution_id": execution_id, "step": index, "environment": environment, "token": token,
                  "status": "queued", "queued_at": time.time()}

        def add(s: Session) -> int:
            return int(s.connection().execute(_ADD_STEP, values).inserted_primary_key[0])  # type: ignore[index]

        if self._kept is not None:  # one round trip (workers/statements.py); its token finds it after a retry
            row = await self._kept.run(_ADD_STEP_RETURNING, values, recover=(_FIND_STEP, values))
            if row is None:
                raise RuntimeError(f"step {index + 1} of execution #{execution_id} could not be queued")
            step_id = int(row[0])
        else:
            step_id = await self.rt.transact(add)
        kwargs = queues.task_kwargs(step_id=step_id, token=token, execution_id=execution_id, index=index,
                                    environment=environment)
        try:
            await asyncio.to_thread(queues.publish, self._app(broker), environment=environment, kwargs=kwargs)
        except Exception as exc:
            error = (f"cannot send step {index + 1} to the broker of environment {environment} "
                     f"({queues.shown_url(broker)}): {type(exc).__name__}: {exc}"[:500])
            await self._end(step_id, "failed", error, only_from=("queued",))
            return StepResult("failed", error, None)
        return await self._follow(step_id, index, environment, write, graceful, grace_s)

    async def _follow(self, step_id: int, index: int, environment: str, write: Callable[[str], None],
                      graceful: Callable[[], bool], grace_s: float) -> StepResult:
        last = 0
        queued_since = time.monotonic()
        noted = False
        next_check = time.monotonic() + DEAD_CHECK_S
        try:
            while True:
                row, last = await self._read(step_id, last, write)
                if row.status in FINAL:
                    return StepResult(row.status, row.error, row.worker)
                now = time.monotonic()
                if row.status == "queued" and not noted and now - queued_since > WAITING_NOTE_S:
                    noted = True
                    write(f"[waiting for a worker of environment {environment} on queue "
                          f"{queues.queue_name(environment)}]\n")
                if row.status == "running" and row.worker and now >= next_check:
                    next_check = now + DEAD_CHECK_S
                    if row.worker in await self._dead([row.worker]):
                        await self._end(step_id, "interrupted", interrupted_message(row.worker, index),
                                        only_from=("running",), worker=row.worker)
                        continue
                await asyncio.sleep(POLL_S)
        except asyncio.CancelledError:
            mode = "term" if graceful() else "kill"
            await asyncio.shield(self._stop(step_id, mode))
            deadline = time.monotonic() + (grace_s if mode == "term" else 0) + 5
            while time.monotonic() < deadline:
                row, last = await self._read(step_id, last, write)
                if row.status in FINAL:
                    break
                await asyncio.sleep(POLL_S * 2)
            raise

    async def _read(self, step_id: int, after: int, write: Callable[[str], None]) -> tuple[WorkerStepRow, int]:
        """The step's row, then its output after `after`: read in that order, a finished step's
        whole output is seen (the worker stores the last chunk before, or with, its status)."""
        async with self.rt.read() as s:
            row = (await s.execute(select(WorkerStepRow).where(WorkerStepRow.id == step_id))).scalar_one()
            chunks = (await s.execute(select(WorkerOutputRow.id, WorkerOutputRow.text).where(
                WorkerOutputRow.step_id == step_id, WorkerOutputRow.id > after)
                .order_by(WorkerOutputRow.id))).all()
        for chunk_id, text in chunks:
            write(text)
            after = chunk_id
        return row, after

    async def _dead(self, nodes: list[str]) -> set[str]:
        if self._membership is None:
            self._membership = Membership(self.rt, kind="server")  # only its dead(): never started here
        return await self._membership.dead(nodes)

    async def _stop(self, step_id: int, mode: str) -> None:
        """A queued step is closed before any worker claims it; a running one is flagged for its worker."""
        def body(s: Session) -> None:
            s.execute(update(WorkerStepRow).where(WorkerStepRow.id == step_id, WorkerStepRow.status == "queued")
                      .values(status="cancelled", finished_at=time.time(), error="cancelled before a worker took it"))
            s.execute(update(WorkerStepRow).where(WorkerStepRow.id == step_id, WorkerStepRow.status == "running")
                      .values(cancel=mode))

        try:
            await self.rt.transact(body)
        except Exception:
            log.exception("could not ask the worker to stop a step", step_id=step_id)

    async def _end(self, step_id: int, status: str, error: str, *, only_from: tuple[str, ...],
                   worker: str | None = None) -> bool:
        return await end_step(self.rt, step_id=step_id, status=status, error=error, only_from=only_from,
                              worker=worker)


def interrupted_message(worker: str, index: int) -> str:
    return (f"worker {worker} stopped while step {index + 1} ran (no heartbeat); the step was not re-run: "
            "check the system and run the runbook again if needed")


async def end_step(rt: Runtime, *, step_id: int, status: str, error: str | None, only_from: tuple[str, ...],
                   worker: str | None = None, exit_code: int | None = None) -> bool:
    """Move a step to its final status if it is still in `only_from` (and claimed by `worker`):
    a conditional UPDATE, so of a server and a worker that both see a dead worker, one wins."""
    def body(s: Session) -> bool:
        stmt = update(WorkerStepRow).where(WorkerStepRow.id == step_id, WorkerStepRow.status.in_(only_from))
        if worker is not None:
            stmt = stmt.where(WorkerStepRow.worker == worker)
        done = s.execute(stmt.values(status=status, error=error, exit_code=exit_code, finished_at=time.time()))
        return bool(done.rowcount)  # type: ignore[attr-defined]

    return await rt.transact(body)
