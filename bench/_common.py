"""Helpers shared by the bench scripts: percentiles, the result line, process cleanup.

Every bench prints human-readable lines and then, as its last line, exactly one
JSON object: {"figure", "value", "unit", "target", "baseline", ...}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent


def repo_on_path() -> None:
    """Make `tests.e2e.harness` importable (the demo/server helpers live there)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sample."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99),
            "max": max(values) if values else math.nan, "min": min(values) if values else math.nan}


def fmt_ms(values: Sequence[float]) -> str:
    """'p50 1.23 ms, p90 ..., p99 ..., max ...' for a sample in seconds."""
    s = summary(values)
    return ", ".join(f"{k} {v * 1000:.2f} ms" for k, v in s.items() if k != "min") + f" (n={len(values)})"


def r(value: float, digits: int = 3) -> float | None:
    """Round for JSON; NaN/inf become null so the line stays valid JSON."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def emit(result: dict[str, Any]) -> None:
    """Print the one JSON result line; it must be the last line of output."""
    for key in ("figure", "value", "unit", "target", "baseline"):
        assert key in result, key
    sys.stdout.flush()
    print(json.dumps(result), flush=True)


def info(msg: str) -> None:
    print(msg, flush=True)


# --- processes ------------------------------------------------------------


def tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (empty if it is gone)."""
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def pids_from_files(files: Iterable[Path]) -> list[int]:
    out = []
    for f in files:
        with contextlib.suppress(OSError, ValueError):
            out.append(int(f.read_text().strip()))
    return out


def demo_service_procs(data: Path) -> list[psutil.Process]:
    """Live demo services named by DATA/demo/*.pid (checked by command line, so a reused pid is spared)."""
    out = []
    for pid in pids_from_files((data / "demo").glob("*.pid")) if (data / "demo").exists() else []:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE and "opsroom.demo.service" in " ".join(p.cmdline()):
                out.append(p)
    return out


def kill_all(procs: Iterable[psutil.Process | int], *, grace: float = 5.0) -> None:
    """SIGTERM, wait up to `grace`, then SIGKILL what is left. Only the processes given."""
    ps: list[psutil.Process] = []
    for p in procs:
        try:
            ps.append(p if isinstance(p, psutil.Process) else psutil.Process(p))
        except psutil.Error:
            continue
    for p in ps:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _gone, alive = psutil.wait_procs(ps, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=grace)


def stop_demo(demo: Any) -> None:
    """Stop a harness Demo and everything it started, including orphaned demo services.

    Services that a runbook restarted were spawned by a short-lived ctl process, so they
    are no longer the server's children; their pid files in DATA/demo still name them.
    """
    if demo is None:
        return
    own_children = tree(demo.proc.pid)[1:]
    with contextlib.suppress(Exception):
        demo.stop()
    if demo.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(demo.proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            demo.proc.wait(5)
    # Only processes we know we (or the server we started) spawned: its children and the pid files.
    leftovers: list[psutil.Process] = []
    for p in own_children:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                leftovers.append(p)
    leftovers.extend(demo_service_procs(demo.data))
    if leftovers:
        kill_all(leftovers, grace=3.0)


def run_cleaned(bench: Callable[[Path, list[Any], list[Any]], Coroutine[Any, Any, dict[str, Any]]],
                prefix: str) -> dict[str, Any]:
    """Run an async bench body with a temp dir and lists it fills with the demos and child
    processes it starts; whatever happens, they are stopped and the temp dir removed."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    started: list[Any] = []
    children: list[Any] = []
    try:
        return asyncio.run(bench(tmp, started, children))
    finally:
        for child in children:
            if child.returncode is None:
                with contextlib.suppress(Exception):
                    kill_all([child.pid], grace=3.0)
        for demo in started:
            stop_demo(demo)
        shutil.rmtree(tmp, ignore_errors=True)


class Deadline:
    """A wall-clock budget for a bench loop (keeps --quick under its limit)."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    @property
    def left(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return time.monotonic() >= self.end


# --- a room listener with receive timestamps ----------------------------------


class TimedRoom:
    """One WebSocket into a room; every frame kept with the perf_counter time it arrived."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[tuple[float, dict[str, Any]]] = []
        self._new: Any = None
        self._task: Any = None

    @classmethod
    async def open(cls, base: str, cookies: dict[str, str], room: str = "ops") -> TimedRoom:
        import asyncio

        from websockets.asyncio.client import connect

        cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
        ws = await connect(base.replace("http", "ws", 1) + f"/rooms/{room}/ws",
                           additional_headers={"Cookie": cookie}, open_timeout=10, max_queue=None)
        self = cls(ws)
        self._new = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.ws:
                self.frames.append((time.perf_counter(), json.loads(raw)))
                self._new.set()

    async def say(self, text: str) -> None:
        await self.ws.send(json.dumps({"type": "say", "text": text}))

    async def wait_for(self, predicate: Any, *, start: int = 0, timeout: float = 20.0) -> tuple[float, dict[str, Any]]:
        """(arrival time, frame) of the first frame at index >= start that matches."""
        import asyncio

        seen = start
        async with asyncio.timeout(timeout):
            while True:
                while seen < len(self.frames):
                    t, f = self.frames[seen]
                    seen += 1
                    if predicate(f):
                        return t, f
                self._new.clear()
                if seen < len(self.frames):
                    continue
                await self._new.wait()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self._task is not None:
            self._task.cancel()


def message(contains: str, kind: str | None = None) -> Any:
    """A predicate: a room message frame whose text contains `contains` (and of `kind`)."""
    def pred(f: dict[str, Any]) -> bool:
        return (f.get("type") == "message" and contains in (f.get("text") or "")
                and (kind is None or f.get("kind") == kind))
    return pred


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
