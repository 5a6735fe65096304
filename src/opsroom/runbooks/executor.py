"""The executor: runs an execution's steps as argv subprocesses, checks and HTTP calls.

One task per execution; output is captured, masked and streamed to the room
at a bounded rate so a chatty command cannot flood a phone. A runbook with another
`target:` (ssh) hands its steps to that target, found through the plugin hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import structlog

from opsroom import plugins
from opsroom.automation.templates import render
from opsroom.catalog.schema import Runbook, Step
from opsroom.errors import OpsroomError
from opsroom.events import Event, ExecutionCancelRequested, ExecutionFinished, ExecutionOutput, ExecutionReady
from opsroom.integrity import service as integrity
from opsroom.runbooks import processes
from opsroom.runbooks import service as store
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime
from opsroom.secrets import masking

if TYPE_CHECKING:
    from opsroom.workers.dispatch import Dispatcher

log = structlog.get_logger(__name__)
MAX_OUTPUT = 64_000
STREAM_EVERY_S = 1.0
# A cancelled step's group gets SIGTERM, then SIGKILL once this has passed: time to clean up, bounded.
CANCEL_GRACE_S = 5.0


class Writer(Protocol):
    """Where a step's output goes: the execution's _Output, or a target's per-host view of it."""

    def write(self, text: str) -> None: ...


class StepFailed(Exception):
    def __init__(self, message: str, status: str = "failed") -> None:
        super().__init__(message)
        self.status = status


class Executor:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.spawned_at: dict[int, float] = {}  # first process spawned (for the dispatch benchmark)
        self._http: aiohttp.ClientSession | None = None
        self._home: Path | None = None
        # Per execution: the write storing its running process group (awaited before the next one).
        self._recording: dict[int, asyncio.Task[None]] = {}
        self._targets: dict[str, Any] = {}  # kind -> target instance (ssh), made on first use
        # Per execution: the task running its steps (cancel stops that one, never the bookkeeping
        # around it) and who asked to cancel it.
        self._bodies: dict[int, asyncio.Task[None]] = {}
        self._cancelled_by: dict[int, str] = {}
        # Per execution: its runbook as it started; a catalog reload never changes a running one.
        self._runbooks: dict[int, Runbook] = {}
        # Per running execution: its captured output, which a live stream replays (web/streams.py).
        self._live: dict[int, _Output] = {}
        # Steps on Celery workers (workers/): made on the first step of an environment with a
        # broker, so a server with none never imports Celery. Executions that used a worker end
        # with a conditional write: another server may have recovered them from a dead worker.
        self._dispatch: Dispatcher | None = None
        self._on_workers: set[int] = set()

    def attach(self) -> None:
        """Start the runs the services say are ready and stop those they say to cancel (events)."""
        self.rt.bus.add_listener(self._on_event)
        self.rt.runs_here = True

    def _on_event(self, ev: Event) -> None:
        """A listener, called in publish itself: the run's task exists once its publisher's call
        returns (a caller may wait for it), and a dispatch takes no extra turn of the loop.
        Only the Runtime's executor acts: a second one on the same bus would run each run twice."""
        if self.rt.executor is not self:
            return
        if isinstance(ev, ExecutionReady):
            self.start(ev.execution_id, claimed=ExecutionRow(**ev.claimed) if ev.claimed is not None else None)
        elif isinstance(ev, ExecutionCancelRequested):
            self.cancel(ev.execution_id, by=ev.by)  # relayed from another server too: the run may be ours

    def start(self, execution_id: int, *, claimed: ExecutionRow | None = None) -> asyncio.Task[None]:
        """Run an execution; `claimed` is a row this process already stored as running."""
        task = asyncio.get_running_loop().create_task(self._run(execution_id, claimed))
        self.tasks[execution_id] = task
        task.add_done_callback(lambda _t: self.tasks.pop(execution_id, None))
        return task

    def cancel(self, execution_id: int, *, by: str) -> bool:
        """Stop a run of this process; False when it is not running here, or its steps are over (it
        finishes as it is). Its end (ExecutionFinished) follows the SIGTERM, grace and SIGKILL."""
        if execution_id not in self.tasks:
            return False  # not run by this process
        body = self._bodies.get(execution_id)
        stopping = body is None or not body.done()
        if stopping and execution_id not in self._cancelled_by:  # a second cancel would cut the grace short
            self._cancelled_by[execution_id] = by
            if body is not None:
                body.cancel()
        return stopping

    def live_output(self, execution_id: int) -> tuple[str, int] | None:
        """A running execution's output published so far and the id of its last ExecutionOutput
        event: a stream that subscribed first replays this and skips the events up to that id."""
        out = self._live.get(execution_id)
        return None if out is None else (out.text[:out.flushed], out.last_event)

    async def wait(self, execution_id: int) -> None:
        task = self.tasks.get(execution_id)
        if task is not None:
            await asyncio.shield(task)

    async def close(self) -> None:
        self.rt.bus.remove_listener(self._on_event)
        self.rt.runs_here = False
        for task in list(self.tasks.values()):
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        if self._dispatch is not None:
            await self._dispatch.close()
        for target in self._targets.values():
            await target.close()

    async def _run(self, execution_id: int, claimed: ExecutionRow | None = None) -> None:
        rt = self.rt
        row = claimed if claimed is not None else await store.mark_running(rt, execution_id)
        if row is None:
            self._cancelled_by.pop(execution_id, None)
            return
        runbook = self._runbooks[row.id] = rt.catalog.runbooks[row.runbook]
        rt.bus.publish(store.started_event(row))  # in the event log already, with the running row
        out = self._live[row.id] = _Output(self, row.id, row.runbook, row.room)
        # Messages and summaries see the stored, masked parameters; only steps see the secrets.
        shown = {"params": row.params, "execution": {"id": row.id}, "runbook": row.runbook,
                 "python": sys.executable, "environment": row.environment, "data_dir": str(rt.settings.data)}
        ctx = dict(shown)
        started = time.monotonic()
        status, error = "succeeded", None
        body: asyncio.Task[None] | None = None
        try:
            if claimed is None:  # approved (or resumed) since it was asked: its files may have changed
                quarantined = await integrity.refusal(rt, runbook=row.runbook, environment=row.environment)
                if quarantined is not None:
                    raise StepFailed(quarantined)
            ctx["params"] = {**row.params, **store.secret_params(rt, row)}
            body = self._bodies[row.id] = asyncio.get_running_loop().create_task(self._steps(runbook, ctx, out, row.id))
            if row.id in self._cancelled_by:  # asked before the steps began
                body.cancel()
            await body
        except StepFailed as exc:
            status, error = exc.status, str(exc)
        except TimeoutError:
            status, error = "timed_out", f"runbook timed out after {runbook.timeout:g}s"
        except asyncio.CancelledError:
            if body is not None and not body.done():  # opsroom stops: its steps' kill runs before the write
                await asyncio.wait({body}, timeout=CANCEL_GRACE_S + 10)
            by = self._cancelled_by.get(row.id)
            status, error = ("cancelled", f"cancelled by {by}") if by else (
                "interrupted", "opsroom stopped while it ran")
        except OpsroomError as exc:
            status, error = "failed", exc.message
        except Exception as exc:
            log.exception("execution crashed", execution_id=row.id)
            status, error = "failed", f"internal error: {type(exc).__name__}"
        # Errors quote what failed (a URL, an argv[0]) and go to the store, the room and the
        # append-only audit log: mask them like the output.
        self._bodies.pop(row.id, None)
        self._cancelled_by.pop(row.id, None)
        self._runbooks.pop(row.id, None)
        error = masking.mask(error) if error else error
        out.flush()
        duration = time.monotonic() - started
        message = masking.mask(_final_message(runbook, shown, status, row.id, duration, error))
        recording = self._recording.pop(row.id, None)
        if recording is not None:
            await asyncio.gather(recording, return_exceptions=True)
        announce = True
        finished = ExecutionFinished(  # in the event log with the finished row, published after it
            execution_id=row.id, runbook=row.runbook, summary=row.summary, status=status, duration_s=duration,
            message=message, rule=row.rule, error=error, correlation_id=row.correlation_id,
            source=f"execution:{row.id}", room=row.room)
        if row.id in self._on_workers:
            self._on_workers.discard(row.id)
            announce = await store.finish_if_running(rt, row.id, status=status, output=out.text, error=error,
                                                     message=message, event=finished)
        else:
            await store.mark_finished(rt, row.id, status=status, output=out.text, error=error, message=message,
                                      event=finished)
        self._live.pop(row.id, None)  # after the stored output: a reader sees one or the other
        if not announce:  # already ended (and announced) by the server that recovered it
            return
        rt.bus.publish(finished)

    async def _steps(self, runbook: Runbook, ctx: dict[str, Any], out: _Output, execution_id: int) -> None:
        """The steps, in a task of their own: what a cancel stops."""
        async with asyncio.timeout(runbook.timeout):
            if runbook.target != "local":
                await self._target(runbook.target).run(runbook, ctx, out, execution_id)
            for index, step in enumerate(runbook.steps if runbook.target == "local" else ()):
                try:
                    await self._step(step, index, ctx, out, execution_id)
                except StepFailed as exc:
                    out.write(f"step {index + 1} ({step.label}) {exc.status}: {exc}\n")
                    # An interrupted step (its worker died) may have done part of its work:
                    # nothing after it runs, continue_on_error or not.
                    if not step.continue_on_error or exc.status == "interrupted":
                        raise

    def _target(self, kind: str) -> Any:
        """The runbook target registered for `kind` (opsroom_runbook_targets), one per executor."""
        target = self._targets.get(kind)
        if target is None:
            spec = plugins.runbook_targets().get(kind)
            if spec is None:
                raise StepFailed(f"no runbook target {kind!r} is installed")
            target = self._targets[kind] = spec.load()(self)
        return target

    async def _step(self, step: Step, index: int, ctx: dict[str, Any], out: Writer, execution_id: int) -> None:
        if step.command is not None:
            runbook = self._runbooks.get(execution_id)
            local = runbook is not None and runbook.target == "local"
            broker = self.rt.settings.broker_for(ctx["environment"]) if local else None
            if broker:
                await self._on_worker(index, ctx, out, execution_id, broker)
                return
            argv = [render(a, ctx) for a in step.command]
            await self._command(step, argv, ctx, out, execution_id)
        elif step.check is not None:
            await self._check(step, render(step.check, ctx), out)
        elif step.http is not None:
            await self._http_call(step, ctx, out)

    async def _command(self, step: Step, argv: list[str], ctx: dict[str, Any], out: Writer,
                       execution_id: int) -> None:
        if self._home is None:
            self._home = processes.home_dir(self.rt.settings.data)
        runbook = self._runbooks.get(execution_id) or self.rt.catalog.runbooks[ctx["runbook"]]
        # Never the server's environment: it holds the store's URL, passwords and tokens.
        env = processes.minimal_env(home=self._home, inherit=runbook.inherit_env,
                                    extra={k: render(v, ctx) for k, v in step.env.items()})
        out.write(f"$ {' '.join(argv)}\n")

        def spawned(pid: int) -> None:
            self.spawned_at.setdefault(execution_id, time.perf_counter())
            # Stored after the spawn, off its path: a crash of the server in between leaves at most
            # one process unrecorded, where a write before the spawn would delay every recovery.
            self._record(execution_id, pid)

        try:
            code = await processes.run_command(
                argv, env=env, cwd=render(step.cwd, ctx) if step.cwd else None, timeout=step.timeout,
                write=out.write, spawned=spawned, graceful=lambda: execution_id in self._cancelled_by,
                grace_s=CANCEL_GRACE_S)
        except processes.SpawnFailed as exc:
            raise StepFailed(str(exc)) from None
        except processes.StepTimedOut as exc:
            raise StepFailed(str(exc), "timed_out") from None
        if code != 0:
            raise StepFailed(f"exit code {code}")

    async def _on_worker(self, index: int, ctx: dict[str, Any], out: Writer, execution_id: int,
                         broker: str) -> None:
        """A command step of an environment with a broker: sent to its queue, never run here."""
        if self._dispatch is None:
            from opsroom.workers.dispatch import Dispatcher

            self._dispatch = Dispatcher(self.rt)
        self._on_workers.add(execution_id)
        result = await self._dispatch.run_step(
            execution_id=execution_id, index=index, environment=ctx["environment"], broker=broker,
            write=out.write, graceful=lambda: execution_id in self._cancelled_by, grace_s=CANCEL_GRACE_S)
        if result.status == "succeeded":
            return
        status = result.status if result.status in ("timed_out", "interrupted") else "failed"
        raise StepFailed(result.error or f"step {result.status} on worker {result.worker}", status)

    def _record(self, execution_id: int, pid: int) -> None:
        previous = self._recording.get(execution_id)

        async def record() -> None:
            if previous is not None:  # in step order, so the last step's group is the one stored
                await asyncio.gather(previous, return_exceptions=True)
            try:
                await store.record_process(self.rt, execution_id, pgid=pid, started=processes.start_time(pid))
            except Exception:
                log.exception("could not store the process group of a running step", execution_id=execution_id)

        self._recording[execution_id] = asyncio.get_running_loop().create_task(record())

    async def _check(self, step: Step, check: str, out: Writer) -> None:
        if check not in self.rt.catalog.checks or self.rt.monitor is None:
            raise StepFailed(f"no check called {check!r}")
        deadline = time.monotonic() + step.deadline
        while True:
            result = await self.rt.monitor.run_check(check)
            if result.state == "OK":
                out.write(f"check {check}: OK ({result.output})\n")
                return
            if time.monotonic() + step.poll > deadline:
                raise StepFailed(f"check {check} still {result.state} after {step.deadline:g}s: {result.output}")
            await asyncio.sleep(step.poll)

    async def _http_call(self, step: Step, ctx: dict[str, Any], out: Writer) -> None:
        assert step.http is not None
        if self._http is None:
            self._http = aiohttp.ClientSession()
        call = step.http
        url = render(call.url, ctx)
        try:
            async with self._http.request(
                call.method, url, headers={k: render(v, ctx) for k, v in call.headers.items()},
                data=render(call.body, ctx) if call.body else None,
                timeout=aiohttp.ClientTimeout(total=step.timeout)) as resp:
                body = await resp.text(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StepFailed(f"{call.method} {url} failed: {exc or type(exc).__name__}") from None
        out.write(f"{call.method} {url} -> HTTP {resp.status}\n{body[:2000]}\n")
        if resp.status not in call.expect_status:
            raise StepFailed(f"HTTP {resp.status} (expected {', '.join(map(str, call.expect_status))})")


def _final_message(runbook: Runbook, ctx: dict[str, Any], status: str, execution_id: int, duration: float,
                   error: str | None) -> str:
    if status == "cancelled":  # neither the success nor the failure text: nothing failed, someone stopped it
        return f"runbook {runbook.name}: execution #{execution_id} {error} after {duration:.1f} s"
    ok = status == "succeeded"
    template = runbook.success_message if ok else runbook.failure_message
    head = ""
    if template:
        with contextlib.suppress(Exception):
            head = render(template, ctx)
    head = head or f"runbook {runbook.name} {status.replace('_', ' ')}"
    tail = f"execution #{execution_id} {status.replace('_', ' ')} in {duration:.1f} s"
    return f"{head} ({tail}{': ' + error if error and not ok else ''})"


class _Output:
    """Captured output: masked, bounded, streamed to the room at most once a second."""

    def __init__(self, executor: Executor, execution_id: int, runbook: str, room: str | None) -> None:
        self.executor, self.execution_id, self.runbook, self.room = executor, execution_id, runbook, room
        self.parts: list[str] = []
        self.size = 0
        self.unsent: list[str] = []
        self.last_sent = 0.0
        self.flushed = 0  # characters published so far
        self.last_event = 0  # id of the last ExecutionOutput published
        self._later: asyncio.TimerHandle | None = None

    def write(self, text: str) -> None:
        # The one masker: secret parameters (and their encodings) and the catalog's secrets.
        text = masking.mask(text)
        if self.size < MAX_OUTPUT:
            self.parts.append(text[: MAX_OUTPUT - self.size])
            self.size += len(text)
        self.unsent.append(text)
        wait = STREAM_EVERY_S - (time.monotonic() - self.last_sent)
        if wait <= 0:
            self.flush()
        elif self._later is None:
            # A line printed within the second is sent when the second is over, not when the
            # runbook next prints (a line and then a long pause would otherwise show late).
            self._later = asyncio.get_running_loop().call_later(wait, self.flush)

    def flush(self) -> None:
        if self._later is not None:
            self._later.cancel()
            self._later = None
        if not self.unsent:
            return
        chunk = "".join(self.unsent)[-4000:]
        self.unsent.clear()
        self.last_sent = time.monotonic()
        event = ExecutionOutput(execution_id=self.execution_id, runbook=self.runbook, step="", text=chunk,
                                source=f"execution:{self.execution_id}", room=self.room)
        self.flushed, self.last_event = self.size, event.id
        self.executor.rt.bus.publish(event)

    @property
    def text(self) -> str:
        return "".join(self.parts)
