"""Where a worker-mode dispatch spends its time: timestamps on both sides of the broker.

Not part of the figure: dispatch_overhead.py --worker runs its measured iterations against a
plain `opsroom worker`, then (--phases N) restarts the worker through `traced_worker_main`,
which wraps the worker's functions on the path with wall-clock stamps (the same host's clock
as the server's) written one JSON line per step to a file. The server side is wrapped in the
bench's own process by `ServerTrace`. `report` joins both by step id.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from _common import info, percentile

# (label, from stamp, to stamp): the order of the path, server then worker.
HOPS = [
    ("record -> request_run starts (monitor, bus, rule)", "t0", "request_run_in"),
    ("request_run (execution row + audit, commit)", "request_run_in", "request_run_out"),
    ("request_run -> Dispatcher.run_step (executor)", "request_run_out", "dispatch_in"),
    ("worker_steps row inserted (one statement)", "dispatch_in", "inserted"),
    ("inserted -> publish starts (thread hop)", "inserted", "publish_in"),
    ("publish (kombu, publisher confirm)", "publish_in", "publish_out"),
    ("publish starts -> message on the worker's socket", "publish_in", "received"),
    ("received -> task body runs (Celery)", "received", "task_body"),
    ("task body -> runner on the worker's loop (hop)", "task_body", "on_loop"),
    ("on loop -> claim starts", "on_loop", "claim_in"),
    ("claim (the store: conditional UPDATE, its execution)", "claim_in", "claim_out"),
    ("claim -> create_subprocess_exec (argv, env)", "claim_out", "exec_call"),
    ("create_subprocess_exec (fork/exec)", "exec_call", "exec_out"),
]


class Patches:
    """Monkeypatches of one instrumented pass, restored by undo() (also the in-process mode's Phases)."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, str, Any]] = []

    def _patch(self, owner: Any, name: str, new: Any) -> None:
        self._undo.append((owner, name, getattr(owner, name)))
        setattr(owner, name, new)

    def undo(self) -> None:
        for owner, name, old in reversed(self._undo):
            setattr(owner, name, old)
        self._undo.clear()


class ServerTrace(Patches):
    """Stamps on the server's side of the path, keyed by the step's row id (from the task)."""

    def __init__(self) -> None:
        super().__init__()
        self.cur: dict[str, float] = {}
        self.rows: dict[int, dict[str, float]] = {}
        self.slices: list[tuple[float, float, str]] = []  # (start, seconds, what) of the loop's longer steps

    def install(self) -> None:
        from opsroom.runbooks import service as runbooks_service
        from opsroom.workers import dispatch, queues

        tr = self
        orig_request = runbooks_service.request_run
        orig_run_step = dispatch.Dispatcher.run_step
        orig_publish = queues.publish

        async def request_run(*a: Any, **kw: Any) -> Any:
            tr.cur.setdefault("request_run_in", time.time())
            try:
                return await orig_request(*a, **kw)
            finally:
                tr.cur.setdefault("request_run_out", time.time())

        async def run_step(self: Any, **kw: Any) -> Any:
            tr.cur.setdefault("dispatch_in", time.time())
            return await orig_run_step(self, **kw)

        def publish(app: Any, *, environment: str, kwargs: dict[str, Any], **more: Any) -> Any:
            # On the publishing thread (asyncio.to_thread, below, stamps `inserted` before the hop).
            cur = tr.cur
            cur.setdefault("publish_in", time.time())
            try:
                return orig_publish(app, environment=environment, kwargs=kwargs, **more)
            finally:
                cur.setdefault("publish_out", time.time())
                tr.rows[kwargs["step_id"]] = cur

        self._patch(runbooks_service, "request_run", request_run)
        self._patch(dispatch.Dispatcher, "run_step", run_step)
        self._patch(queues, "publish", publish)
        orig_to_thread = asyncio.to_thread

        async def to_thread(fn: Any, /, *a: Any, **kw: Any) -> Any:
            if fn is publish:
                tr.cur.setdefault("inserted", time.time())
            return await orig_to_thread(fn, *a, **kw)

        self._patch(asyncio, "to_thread", to_thread)
        orig_run = asyncio.events.Handle._run

        def _run(handle: Any) -> None:
            start = time.time()
            try:
                orig_run(handle)
            finally:
                took = time.time() - start
                if took > 0.0003:
                    tr.slices.append((start, took, _what(handle._callback)))

        self._patch(asyncio.events.Handle, "_run", _run)


def _what(callback: Any) -> str:
    """A loop step's name: its task's coroutine, else the callback."""
    task = getattr(callback, "__self__", None)
    coro = task.get_coro() if isinstance(task, asyncio.Task) else None
    return getattr(coro, "__qualname__", None) or getattr(callback, "__qualname__", repr(callback))[:60]


def busy_report(slices: list[tuple[float, float, str]], rows: list[dict[str, float]]) -> None:
    """What else held the server's loop between request_run's return and the publish (other than
    the dispatching task itself): the steps of other tasks that ran while the insert waited."""
    per: dict[str, list[float]] = {}
    for row in rows:
        a, b = row.get("request_run_out"), row.get("publish_in")
        if a is None or b is None:
            continue
        for start, took, what in slices:
            if a <= start < b and "Executor" not in what and "Dispatcher" not in what:
                per.setdefault(what, []).append(took)
    info("  other work on the server's loop between request_run and the publish (steps over 0.3 ms):")
    for what, steps in sorted(per.items(), key=lambda kv: -sum(kv[1]))[:8]:
        info(f"    {what[:60]:60s} {len(steps) / max(len(rows), 1):4.1f} per dispatch, "
             f"{sum(steps) * 1000 / max(len(rows), 1):6.2f} ms per dispatch")


def traced_worker_main(trace: str, argv: list[str]) -> None:
    """`opsroom worker ...` with stamps on its path, one JSON line per step appended to `trace`."""
    from kombu import messaging

    from opsroom.workers import consumer, runner

    out = open(trace, "a", buffering=1)  # for the worker's whole life, line-buffered
    last: dict[str, float] = {}
    cur: dict[str, float] = {}

    orig_receive = messaging.Consumer._receive_callback
    orig_handle = consumer.Worker.handle
    orig_runner_handle = runner.StepRunner.handle
    orig_claim = runner.StepRunner._claim
    orig_exec = asyncio.create_subprocess_exec

    def _receive_callback(self: Any, message: Any) -> Any:
        last["received"] = time.time()
        return orig_receive(self, message)  # type: ignore[no-untyped-call]

    def handle(self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        cur.clear()
        cur.update(last, task_body=time.time())
        try:
            return orig_handle(self, args, kwargs)
        finally:
            out.write(json.dumps({"step_id": kwargs.get("step_id"), **cur}) + "\n")

    async def runner_handle(self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        cur.setdefault("on_loop", time.time())
        return await orig_runner_handle(self, args, kwargs)

    async def claim(self: Any, task: dict[str, Any], **kw: Any) -> Any:
        cur.setdefault("claim_in", time.time())
        try:
            return await orig_claim(self, task, **kw)
        finally:
            cur.setdefault("claim_out", time.time())

    async def create_subprocess_exec(*a: Any, **kw: Any) -> Any:
        cur.setdefault("exec_call", time.time())
        try:
            return await orig_exec(*a, **kw)
        finally:
            cur.setdefault("exec_out", time.time())

    messaging.Consumer._receive_callback = _receive_callback  # type: ignore[method-assign]
    consumer.Worker.handle = handle  # type: ignore[method-assign]
    runner.StepRunner.handle = runner_handle  # type: ignore[method-assign]
    runner.StepRunner._claim = claim  # type: ignore[method-assign]
    asyncio.create_subprocess_exec = create_subprocess_exec  # this process only: the worker
    sys.argv = ["opsroom", *argv]
    from opsroom.cli import main

    main()


def report(server: dict[int, dict[str, float]], trace: Path, spawned: dict[int, tuple[float, float]],
           slices: list[tuple[float, float, str]]) -> dict[str, float]:
    """Medians (p90) of each hop over the steps both sides stamped; `spawned` maps a step id to
    (t0, spawned_at) as the bench measured them."""
    worker: dict[int, dict[str, float]] = {}
    if trace.exists():
        for line in trace.read_text().splitlines():
            row = json.loads(line)
            worker[int(row.pop("step_id"))] = row
    rows = []
    for step_id, (t0, at) in spawned.items():
        if step_id in server and step_id in worker:
            rows.append({"t0": t0, **server[step_id], **worker[step_id], "spawned": at})
    out: dict[str, float] = {}
    info(f"--- where the time goes: {len(rows)} instrumented worker dispatches (medians; p90) ---")
    for label, a, b in [*HOPS, ("exec returned -> spawned_at stamped", "exec_out", "spawned"),
                        ("total record -> spawned", "t0", "spawned")]:
        vals = [row[b] - row[a] for row in rows if a in row and b in row]
        if not vals:
            continue
        out[f"{a}->{b}"] = percentile(vals, 50) * 1000
        info(f"  {label:52s} {percentile(vals, 50) * 1000:7.2f} ms  (p90 {percentile(vals, 90) * 1000:6.2f}, "
             f"max {max(vals) * 1000:6.2f})")
    info("  the slowest instrumented dispatches, their hops over 2 ms:")
    for row in sorted(rows, key=lambda row: row["spawned"] - row["t0"])[-3:]:
        hops = ", ".join(f"{b} {(row[b] - row[a]) * 1000:.1f}" for _, a, b in HOPS
                         if a in row and b in row and row[b] - row[a] > 0.002)
        info(f"    {(row['spawned'] - row['t0']) * 1000:6.1f} ms: {hops}")
    busy_report(slices, rows)
    return out
