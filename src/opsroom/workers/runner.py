"""The worker's side of a step: check the task, claim the step, run it, stream its output, stop it.

A task names a step (its row id, the random token the server stored with it, the execution and
the step index); it never carries an argv. The worker rebuilds the argv from its own catalog and
the execution's stored parameters, and runs nothing the store does not hold as queued for its
environment: a message forged on the queue, or one meant for another environment, runs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import socket
import sys
import time
from typing import Any

import structlog
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from opsroom.automation.templates import render
from opsroom.cluster.membership import Membership
from opsroom.errors import OpsroomError
from opsroom.runbooks import processes
from opsroom.runbooks import service as runbooks
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime
from opsroom.secrets import masking
from opsroom.workers import statements
from opsroom.workers.dispatch import end_step, interrupted_message
from opsroom.workers.models import WorkerOutputRow, WorkerStepRow

log = structlog.get_logger(__name__)
CANCEL_GRACE_S = 5.0  # as the executor's: SIGTERM, then SIGKILL after this
MAX_OUTPUT = 64_000  # characters stored per step, as the executor keeps per execution
FLUSH_S = 0.1
WATCH_S = 0.2  # how often a running step's cancel flag and execution status are read
_KEYS = {"step_id": int, "token": str, "execution_id": int, "index": int, "environment": str}
# What a step needs of its execution (not its output, which grows with every step before it).
_EXECUTION = (ExecutionRow.id, ExecutionRow.status, ExecutionRow.environment, ExecutionRow.runbook,
              ExecutionRow.runbook_hash, ExecutionRow.params, ExecutionRow.secret_params)
_STEP = (WorkerStepRow.id, WorkerStepRow.step, WorkerStepRow.execution_id)
# The claim, built once (its parameters p_*): a conditional UPDATE, so of two workers handed the
# same task one claims it. On PostgreSQL it reads the execution in the same statement, in the
# snapshot the UPDATE ran in; on SQLite, the same transaction reads it after.
_CLAIM = (update(WorkerStepRow).where(
    WorkerStepRow.id == bindparam("p_step"), WorkerStepRow.token == bindparam("p_token"),
    WorkerStepRow.status == "queued", WorkerStepRow.environment == bindparam("p_environment"),
    WorkerStepRow.execution_id == bindparam("p_execution"), WorkerStepRow.step == bindparam("p_index"))
    .values(status="running", worker=bindparam("p_worker"), started_at=bindparam("p_received"))
    .returning(*_STEP))
_CLAIMED = _CLAIM.cte("claimed")
_CLAIM_WITH_EXECUTION = (select(_CLAIMED.c.id, _CLAIMED.c.step, _CLAIMED.c.execution_id, *_EXECUTION)
                         .select_from(_CLAIMED).outerjoin(ExecutionRow, ExecutionRow.id == _CLAIMED.c.execution_id))
_EXECUTION_OF = select(*_EXECUTION).where(ExecutionRow.id == bindparam("p_execution"))
# A first attempt whose answer was lost (statements.py): this worker's mark, with the time it took the task.
_MINE_WITH_EXECUTION = (select(*_STEP, *_EXECUTION)
                        .outerjoin(ExecutionRow, ExecutionRow.id == WorkerStepRow.execution_id)
                        .where(WorkerStepRow.id == bindparam("p_step"), WorkerStepRow.status == "running",
                               WorkerStepRow.worker == bindparam("p_worker"),
                               WorkerStepRow.started_at == bindparam("p_received")))


class Refused(Exception):
    """A task this worker will not run; the message says why (logged, never raised to Celery)."""


def parse_task(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The task's fields, typed and bounded, or Refused: a broker message is input like any other."""
    if args or set(kwargs) != set(_KEYS):
        raise Refused(f"malformed task: fields {sorted(map(str, kwargs))[:8]} (expected {sorted(_KEYS)})")
    for key, kind in _KEYS.items():
        value = kwargs[key]
        if type(value) is not kind or (isinstance(value, str) and not 0 < len(value) <= 64):
            raise Refused(f"malformed task: {key} is not a {kind.__name__} of the expected size")
    return kwargs


class _Sink:
    """A step's output on its way to the store: masked, bounded, written every FLUSH_S."""

    def __init__(self, rt: Runtime, step_id: int) -> None:
        self.rt, self.step_id = rt, step_id
        self.pending: list[str] = []
        self.size = 0
        self.cut = False

    def write(self, text: str) -> None:
        text = masking.mask(text)
        room = MAX_OUTPUT - self.size
        if room <= 0:
            if not self.cut:
                self.cut = True
                self.pending.append(f"[output over {MAX_OUTPUT} characters: the rest is not kept]\n")
            return
        self.pending.append(text[:room])
        self.size += len(text[:room])

    async def flush(self) -> None:
        if not self.pending:
            return
        text, self.pending = "".join(self.pending), []
        row = {"step_id": self.step_id, "text": text, "at": time.time()}

        def body(s: Session) -> None:
            s.execute(insert(WorkerOutputRow), [row])

        await self.rt.transact(body)

    async def pump(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self.flush()
            except Exception:
                log.exception("could not store a step's output", step_id=self.step_id)


class StepRunner:
    def __init__(self, rt: Runtime, *, environment: str, membership: Membership) -> None:
        self.rt, self.environment, self.membership = rt, environment, membership
        self.node_id = rt.node_id
        self.running: int | None = None  # the step id being run, for the heartbeat's info
        self._home = processes.home_dir(rt.settings.data)
        # On PostgreSQL the claim is one statement on a connection kept for it (workers/statements.py).
        self._kept = statements.KeptConnection(rt) if statements.usable(rt) else None

    async def handle(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """Run one task; the outcome word (ran, refused, duplicate, interrupted) for logs and tests."""
        try:
            task = parse_task(args, kwargs)
            return await self._handle(task)
        except Refused as exc:
            log.warning("task refused", reason=str(exc), environment=self.environment)
            return "refused"

    async def _handle(self, task: dict[str, Any]) -> str:
        if task["environment"] != self.environment:
            raise Refused(f"a task for environment {task['environment']!r} reached the worker of "
                          f"{self.environment!r}: not run")
        claimed = await self._claim(task, received=time.time())
        if claimed is None:  # not queued with these names and this token: find out why
            async with self.rt.read() as s:
                row = await s.get(WorkerStepRow, task["step_id"])
            if (row is None or not hmac.compare_digest(row.token, task["token"])
                    or (row.execution_id, row.step, row.environment) != (task["execution_id"], task["index"],
                                                                         self.environment)):
                raise Refused(f"no step #{task['step_id']} was queued for environment {self.environment} with "
                              "this token: a forged or stale message, not run")
            return await self._already_taken(row)
        if isinstance(claimed, str):
            log.warning("step not run", step_id=task["step_id"], reason=claimed)
            return "refused"
        row, execution = claimed
        self.running = row.id
        try:
            await self._run(row, execution)
        finally:
            self.running = None
        return "ran"

    async def _already_taken(self, row: WorkerStepRow) -> str:
        """A redelivered (or duplicated) task: never a second run. Its worker died: the step is interrupted."""
        if row.status == "running" and row.worker and row.worker != self.node_id \
                and row.worker in await self.membership.dead([row.worker]):
            await end_step(self.rt, step_id=row.id, status="interrupted",
                           error=interrupted_message(row.worker, row.step), only_from=("running",), worker=row.worker)
            log.warning("redelivered step of a dead worker: interrupted, not re-run", step_id=row.id, worker=row.worker)
            return "interrupted"
        log.warning("step already taken: not run again", step_id=row.id, status=row.status, worker=row.worker)
        return "duplicate"

    def _problem(self, index: int, execution: ExecutionRow | None) -> str | None:
        if execution is None or execution.status != "running":
            return f"execution #{execution.id if execution else '?'} is not running"
        if execution.environment != self.environment:
            return f"execution #{execution.id} acts on environment {execution.environment}, not {self.environment}"
        runbook = self.rt.catalog.runbooks.get(execution.runbook)
        if runbook is None or runbook.content_hash != execution.runbook_hash:
            return (f"the catalog of worker {self.node_id} has {'another version of' if runbook else 'no'} runbook "
                    f"{execution.runbook}: deploy the server's catalog to the worker and restart it")
        if runbook.target != "local" or not 0 <= index < len(runbook.steps) or runbook.steps[index].command is None:
            return f"step {index + 1} of runbook {runbook.name} is not a command step this worker can run"
        return None

    async def _claim(self, task: dict[str, Any], *, received: float) -> tuple[WorkerStepRow, ExecutionRow] | str | None:
        """Claim the step and read its execution (the path to the spawn).

        None: nothing was queued under these names and token (or it is taken already); a str: it
        was, but cannot run here (the step is failed with that reason); else the step and execution.
        The claim is a conditional UPDATE: of two workers handed the same task, one claims it.
        `started_at` is when this worker took the task off the queue.
        """
        params = {"p_step": task["step_id"], "p_token": task["token"], "p_environment": self.environment,
                  "p_execution": task["execution_id"], "p_index": task["index"], "p_worker": self.node_id,
                  "p_received": received}
        if self._kept is not None:
            # PostgreSQL: one statement on the kept connection (workers/statements.py), one round
            # trip where the pooled transaction took seven (the ping's three, BEGIN, UPDATE, SELECT,
            # COMMIT). It commits before the spawn, as the transaction did.
            claimed = await self._kept.run(_CLAIM_WITH_EXECUTION, params, recover=(_MINE_WITH_EXECUTION, params))
            found = tuple(claimed) if claimed is not None else None
        else:
            def body(s: Session) -> tuple[Any, ...] | None:
                claimed = s.execute(_CLAIM, params).one_or_none()
                if claimed is None:
                    return None
                execution = s.execute(_EXECUTION_OF, params).one_or_none()
                return (*claimed, *(execution or (None,) * len(_EXECUTION)))

            found = await self.rt.transact(body)
        if found is None:
            return None
        row = WorkerStepRow(id=found[0], step=found[1], execution_id=found[2])
        execution = (ExecutionRow(**{c.key: v for c, v in zip(_EXECUTION, found[3:], strict=True)})
                     if found[3] is not None else None)  # a transient row: the columns the step needs
        problem = self._problem(task["index"], execution)
        if problem is not None:
            # Claimed by this worker: failed by it (were it to die first, its step would be
            # interrupted by the server that follows it, as any step of a dead worker).
            await end_step(self.rt, step_id=row.id, status="failed", error=problem, only_from=("running",),
                           worker=self.node_id)
            return problem
        assert execution is not None
        return row, execution

    async def open(self) -> None:
        if self._kept is not None:
            await self._kept.open()

    async def close(self) -> None:
        if self._kept is not None:
            await self._kept.close()

    async def _run(self, row: WorkerStepRow, execution: ExecutionRow) -> None:
        runbook = self.rt.catalog.runbooks[execution.runbook]
        step = runbook.steps[row.step]
        assert step.command is not None
        sink = _Sink(self.rt, row.id)
        pump = asyncio.get_running_loop().create_task(sink.pump())
        status, error, code = "failed", None, None
        cancel: list[str] = []
        try:
            ctx: dict[str, Any] = {
                "params": {**execution.params, **runbooks.secret_params(self.rt, execution)},
                "execution": {"id": execution.id}, "runbook": execution.runbook, "python": sys.executable,
                "environment": execution.environment, "data_dir": str(self.rt.settings.data)}
            argv = [render(a, ctx) for a in step.command]
            env = processes.minimal_env(home=self._home, inherit=runbook.inherit_env,
                                        extra={k: render(v, ctx) for k, v in step.env.items()})
            sink.write(f"$ {' '.join(argv)}\n")
            command = asyncio.get_running_loop().create_task(processes.run_command(
                argv, env=env, cwd=render(step.cwd, ctx) if step.cwd else None, timeout=step.timeout,
                write=sink.write, spawned=lambda pid: self._spawned(row.id, pid),
                graceful=lambda: cancel[:1] == ["term"], grace_s=CANCEL_GRACE_S))
            watch = asyncio.get_running_loop().create_task(self._watch(row.id, execution.id, cancel, command))
            try:
                code = await command
                status = "succeeded" if code == 0 else "failed"
                error = None if code == 0 else f"exit code {code}"
            except asyncio.CancelledError:
                if not cancel:
                    raise
                status, error = "cancelled", f"stopped on worker {self.node_id} ({cancel[0]})"
            finally:
                watch.cancel()
        except processes.SpawnFailed as exc:
            error = str(exc)
        except processes.StepTimedOut as exc:
            status, error = "timed_out", str(exc)
        except OpsroomError as exc:  # a template of the step that does not render with these parameters
            error = exc.message
        except Exception as exc:
            log.exception("step crashed on the worker", step_id=row.id)
            error = f"internal error on worker {self.node_id}: {type(exc).__name__}"
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        error = masking.mask(error) if error else error  # the server writes it into the output, as in-process
        await sink.flush()  # before the status: a server that reads the status has all the output
        await end_step(self.rt, step_id=row.id, status=status, error=error, only_from=("running",),
                       worker=self.node_id, exit_code=code)

    def _spawned(self, step_id: int, pid: int) -> None:
        at, started = time.time(), processes.start_time(pid)

        async def record() -> None:
            def body(s: Session) -> None:
                s.execute(update(WorkerStepRow).where(WorkerStepRow.id == step_id).values(
                    spawned_at=at, pgid=pid, pg_started=started))

            try:
                await self.rt.transact(body)
            except Exception:
                log.exception("could not store a step's process group", step_id=step_id)

        asyncio.get_running_loop().create_task(record())

    async def _watch(self, step_id: int, execution_id: int, cancel: list[str], command: asyncio.Task[int]) -> None:
        """Stop the step when the server flags it, or when its execution ended (another server
        recovered it): its group gets SIGTERM then SIGKILL for 'term', SIGKILL at once otherwise."""
        while not command.done():
            await asyncio.sleep(WATCH_S)
            try:
                async with self.rt.read() as s:
                    flag, status = (await s.execute(
                        select(WorkerStepRow.cancel, ExecutionRow.status).join(
                            ExecutionRow, ExecutionRow.id == WorkerStepRow.execution_id)
                        .where(WorkerStepRow.id == step_id))).one()
            except Exception as exc:  # the store is away: the step goes on
                log.warning("could not read a step's cancel flag", step_id=step_id, error=type(exc).__name__)
                continue
            if flag or status != "running":
                cancel.append(flag if flag in ("term", "kill") else "kill")
                command.cancel()
                return

    async def kill_orphans(self) -> int:
        """At start: the process groups of steps whose worker died on this host (they outlive a
        kill -9 of their worker: a session of their own) are killed, if still the ones started."""
        host = socket.gethostname()
        async with self.rt.read() as s:
            rows = (await s.execute(select(WorkerStepRow.worker, WorkerStepRow.pgid, WorkerStepRow.pg_started)
                                    .where(WorkerStepRow.status.in_(("running", "interrupted")),
                                           WorkerStepRow.pgid.is_not(None),
                                           WorkerStepRow.worker.like(f"{host}:%")))).all()
        dead = await self.membership.dead(sorted({r[0] for r in rows if r[0] and r[0] != self.node_id}))
        return sum(processes.kill_if_ours(pgid, started) for worker, pgid, started in rows if worker in dead)
