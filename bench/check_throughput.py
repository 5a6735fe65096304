"""How many checks per second opsroom runs, next to what bare aiohttp/asyncio do on this machine.

A local aiohttp target runs in its own process (so the client and the target
each get a core), on 127.0.0.1 only. For HTTP and then TCP:

  baseline  a bare loop at concurrency 200 (one ClientSession / open_connection)
  opsroom   20,000 checks through Scheduler + probe + check_state.apply, with the
            interval chosen for the offered load (http 2,500/s, tcp ~6,700/s)

The last line printed is one JSON object with the figures.

    .venv/bin/python bench/check_throughput.py --quick    # < 60 s
    .venv/bin/python bench/check_throughput.py            # 60 s windows
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing as mp
import os
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import psutil
from aiohttp import web

from opsroom.catalog.schema import HttpCheck, TcpCheck
from opsroom.checks.probes import ProbeContext, get_probe
from opsroom.checks.scheduler import Scheduler
from opsroom.domain.check_state import CheckStatus, apply, initial

HOST = "127.0.0.1"
BASELINE_CONCURRENCY = 200
LINGER0 = struct.pack("ii", 1, 0)


# --- the target, in its own process ------------------------------------------


def _serve(conn: Connection) -> None:
    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/health", health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, HOST, 0, backlog=4096)
        await site.start()
        conn.send(runner.addresses[0][1])
        # Serve until the parent says stop (or dies: recv raises EOFError).
        await asyncio.get_running_loop().run_in_executor(None, _wait_parent, conn)
        await runner.cleanup()

    # The target is not what is measured: uvloop (installed with uvicorn[standard])
    # lets its one core accept connections faster than the client can open them.
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def _wait_parent(conn: Connection) -> None:
    try:
        conn.recv()
    except EOFError:
        pass


class TargetProcess:
    def __enter__(self) -> int:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self._proc.start()
        if not self._conn.poll(20):
            raise RuntimeError("target server did not start")
        port: int = self._conn.recv()
        self.pid = self._proc.pid
        return port

    def __exit__(self, *exc: object) -> None:
        try:
            self._conn.send("stop")
        except OSError:
            pass
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()


# --- who used the CPU --------------------------------------------------------


class CpuShare:
    """Cores used by this client, the target and everything else over a window.

    The machine may be shared (other people's tests): a figure measured while
    other processes held a core is not this code's figure, so it is printed.
    """

    def __init__(self, target_pid: int | None) -> None:
        self.client = psutil.Process()
        self.target = psutil.Process(target_pid) if target_pid else None
        self._t0 = 0.0
        self._snap: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def _now(self) -> tuple[float, float, float]:
        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) \
            + getattr(t, "steal", 0.0)
        c = self.client.cpu_times()
        mine = c.user + c.system
        theirs = 0.0
        if self.target is not None:
            with contextlib.suppress(psutil.Error):
                tt = self.target.cpu_times()
                theirs = tt.user + tt.system
        return busy, mine, theirs

    def start(self) -> None:
        self._t0, self._snap = time.monotonic(), self._now()

    def cores(self) -> dict[str, float]:
        wall = max(time.monotonic() - self._t0, 1e-9)
        now = self._now()
        busy, mine, theirs = ((a - b) / wall for a, b in zip(now, self._snap, strict=True))
        return {"client": mine, "target": theirs, "others": max(0.0, busy - mine - theirs)}


def fmt_cores(c: dict[str, float]) -> str:
    return f"cores: client {c['client']:.2f}, target {c['target']:.2f}, other processes {c['others']:.2f}"


CPU = CpuShare(None)


# --- baselines --------------------------------------------------------------


async def _for(seconds: float, worker: Any, n: int) -> int:
    done = 0
    deadline = time.monotonic() + seconds

    async def loop() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await worker()
            done += 1

    await asyncio.gather(*(loop() for _ in range(n)))
    return done


async def http_baseline(url: str, seconds: float) -> float:
    connector = aiohttp.TCPConnector(limit=BASELINE_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def get() -> None:
            async with session.get(url) as resp:
                await resp.read()

        await _for(0.5, get, BASELINE_CONCURRENCY)  # open the pool before measuring
        CPU.start()
        t0 = time.monotonic()
        done = await _for(seconds, get, BASELINE_CONCURRENCY)
        return done / (time.monotonic() - t0)


async def tcp_baseline(port: int, seconds: float, *, raw: bool = False) -> float:
    """Bare asyncio.open_connection (raw=False) or a bare socket + loop.sock_connect (raw=True,
    what the tcp probe does)."""
    loop = asyncio.get_running_loop()

    # Both close with a reset like the probe does, so the comparison is fair and
    # neither fills the one host:port tuple with TIME_WAIT sockets for the next run.
    async def streams() -> None:
        _r, w = await asyncio.open_connection(HOST, port)
        w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        w.close()
        await w.wait_closed()

    async def sock() -> None:
        with socket.socket() as s:
            s.setblocking(False)
            await loop.sock_connect(s, (HOST, port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)

    CPU.start()
    t0 = time.monotonic()
    done = await _for(seconds, sock if raw else streams, BASELINE_CONCURRENCY)
    return done / (time.monotonic() - t0)


# --- opsroom ----------------------------------------------------------------


@dataclass
class Run:
    checks_per_s: float
    offered_per_s: float
    lag: dict[str, float]
    states: Counter[str]
    cpu_us_per_check: float
    skipped_late: int
    cores: dict[str, float]


async def opsroom_run(checks: list[Any], interval: float, warmup: float, seconds: float, *,
                      freeze: bool = True) -> Run:
    if freeze:
        # What a long-running opsroom should do after loading its catalog: move the
        # long-lived objects out of the collector's reach, or a full collection over
        # 20,000 checks stalls the loop for tens of ms (shows as scheduler lag p99).
        gc.collect()
        gc.freeze()
    by_name = {c.name: c for c in checks}
    status: dict[str, CheckStatus] = {}
    states: Counter[str] = Counter()
    completed = 0
    ctx = ProbeContext()

    async def run_check(name: str) -> None:
        nonlocal completed
        check = by_name[name]
        result = await get_probe(check.type).run(check, ctx)
        tr = apply(status.get(name) or initial(), result.state, now=time.time(),
                   max_attempts=check.max_attempts, flap_low=check.flap_low, flap_high=check.flap_high)
        status[name] = tr.status
        states[result.state] += 1
        completed += 1

    sched = Scheduler(run_check, concurrency=500)
    for c in checks:
        sched.add(c.name, interval)
    sched.start()
    try:
        await asyncio.sleep(warmup)
        sched.reset_lag()
        states.clear()
        start_done, start_cpu, skipped0 = completed, time.process_time(), sched.skipped_late
        CPU.start()
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - t0
        cores = CPU.cores()
        done = completed - start_done
        cpu = time.process_time() - start_cpu
        lag = sched.lag_percentiles()
        skipped = sched.skipped_late - skipped0
    finally:
        await sched.stop()
        await ctx.close()
        gc.unfreeze()
    return Run(done / elapsed, len(checks) / interval, lag, states, cpu / max(done, 1) * 1e6, skipped,
               cores)


def _report(kind: str, run: Run, baseline: float, target: int) -> None:
    bad = {k: v for k, v in run.states.items() if k != "OK"}
    print(f"{kind} opsroom:   {run.checks_per_s:,.0f} checks/s of {run.offered_per_s:,.0f}/s offered "
          f"(target {target:,}; {run.checks_per_s / baseline:.0%} of baseline), "
          f"lag p50 {run.lag['p50'] * 1000:.1f} ms p99 {run.lag['p99'] * 1000:.1f} ms, "
          f"{run.cpu_us_per_check:.0f} us CPU/check" + (f", NOT OK: {bad}" if bad else "")
          + (f", {run.skipped_late} runs skipped late" if run.skipped_late else ""))
    print(f"                {fmt_cores(run.cores)}")


async def bench(port: int, args: argparse.Namespace) -> dict[str, Any]:
    url = f"http://{HOST}:{port}/health"

    base_http = await http_baseline(url, args.baseline)
    print(f"http baseline:  {base_http:,.0f} GETs/s (bare aiohttp, concurrency {BASELINE_CONCURRENCY}, "
          f"one session); {fmt_cores(CPU.cores())}")
    http_checks = [HttpCheck(name=f"web-{i:05d}", type="http", url=url, timeout=10.0)
                   for i in range(args.checks)]
    http = await opsroom_run(http_checks, args.http_interval, args.warmup, args.window, freeze=args.gc_freeze)
    _report("http", http, base_http, 2000)

    base_tcp = await tcp_baseline(port, args.baseline)
    print(f"tcp baseline:   {base_tcp:,.0f} connects/s (bare asyncio.open_connection, "
          f"concurrency {BASELINE_CONCURRENCY}); {fmt_cores(CPU.cores())}")
    base_sock = await tcp_baseline(port, args.baseline, raw=True)
    print(f"tcp baseline:   {base_sock:,.0f} connects/s (bare socket + loop.sock_connect, as the probe "
          f"does); {fmt_cores(CPU.cores())}")
    tcp_checks = [TcpCheck(name=f"port-{i:05d}", type="tcp", host=HOST, port=port, timeout=10.0)
                  for i in range(args.checks)]
    tcp = await opsroom_run(tcp_checks, args.tcp_interval, args.warmup, args.window, freeze=args.gc_freeze)
    _report("tcp", tcp, base_tcp, 5000)

    return {
        "figure": "http_checks_per_s",
        "value": round(http.checks_per_s, 1),
        "unit": "checks/s",
        "target": 2000,
        "baseline": round(base_http, 1),
        "ratio": round(http.checks_per_s / base_http, 3),
        "lag_p99_ms": round(http.lag["p99"] * 1000, 2),
        "lag_p50_ms": round(http.lag["p50"] * 1000, 2),
        "tcp_checks_per_s": round(tcp.checks_per_s, 1),
        "tcp_baseline": round(base_tcp, 1),
        "tcp_target": 5000,
        "tcp_sock_baseline": round(base_sock, 1),
        "tcp_lag_p99_ms": round(tcp.lag["p99"] * 1000, 2),
        "others_cores_http": round(http.cores["others"], 2),
        "others_cores_tcp": round(tcp.cores["others"], 2),
        "checks": args.checks,
        "window_s": args.window,
        "cores": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short windows, whole run under 60 s")
    parser.add_argument("--checks", type=int, default=20_000)
    parser.add_argument("--http-interval", type=float, default=8.0, help="20,000 / 8 s = 2,500 checks/s offered")
    parser.add_argument("--tcp-interval", type=float, default=3.0, help="20,000 / 3 s = 6,667 checks/s offered")
    parser.add_argument("--no-gc-freeze", dest="gc_freeze", action="store_false",
                        help="leave the 20,000 check objects to the cyclic GC (raises lag p99)")
    args = parser.parse_args()
    args.baseline, args.warmup, args.window = (4.0, 2.0, 15.0) if args.quick else (15.0, 10.0, 60.0)
    global CPU
    target = TargetProcess()
    with target as port:
        CPU = CpuShare(target.pid)
        print(f"target: aiohttp on {HOST}:{port} in its own process; client pid {os.getpid()}; "
              f"gc.freeze() after loading checks: {'yes' if args.gc_freeze else 'no'}")
        figures = asyncio.run(bench(port, args))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
