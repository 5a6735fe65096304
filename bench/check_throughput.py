"""How many checks per second opsroom runs, next to what bare aiohttp/asyncio do on this machine.

A local aiohttp target runs in its own process (so the client and the target
each get a core), on 127.0.0.1 only. For HTTP and then TCP:

  baseline  a bare loop at concurrency 200 (one ClientSession / open_connection)
  opsroom   the server's own path: a 20,000-check catalog written as YAML and loaded,
            server.start on a fresh SQLite store (scheduler, probes, Monitor with the
            state machine, result and state persistence, bus, rules, rooms), with the
            interval chosen for the offered load (http 2,500/s, tcp 5,000/s). The store
            holds the check states of a server that has run a while (--fresh: empty). It also
            reports results stored per second and the unstored backlog at the end, so a
            figure bought by falling behind on the store would show. Results are kept as
            the server keeps them: every problem and change, steady OK once a minute
            per check (check_result_ok_interval; --keep-all keeps every one).

The last line printed is one JSON object with the figures.

    .venv/bin/python bench/check_throughput.py --quick    # < 60 s
    .venv/bin/python bench/check_throughput.py            # 60 s windows
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import socket
import struct
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web
from sqlalchemy import func, insert, select

from opsroom import server
from opsroom.checks.models import CheckResultRow, CheckStateRow
from opsroom.config import Settings
from opsroom.domain.check_state import HISTORY_SIZE
from opsroom.runtime import Runtime

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
    stored_per_s: float
    sampled_per_s: float
    backlog: int
    dropped: int
    load_s: float


def catalog_yaml(kind: str, port: int, n: int, interval: float) -> str:
    """n checks over 100 systems of one service each, a room that hears them all, and a rule."""
    systems = 100
    out = ["environments:\n  - name: bench\n    protected: true\nsystems:\n"]
    out += [f"  - name: sys-{s:03d}\n    environment: bench\n" for s in range(systems)]
    out.append("services:\n")
    out += [f"  - name: svc-{s:03d}\n    system: sys-{s:03d}\n" for s in range(systems)]
    out.append("checks:\n")
    target = f"    url: http://{HOST}:{port}/health\n" if kind == "http" else f"    host: {HOST}\n    port: {port}\n"
    out += [f"  - name: {kind}-{i:05d}\n    type: {kind}\n    service: svc-{i % systems:03d}\n{target}"
            f"    interval: {interval:g}s\n    timeout: 10s\n" for i in range(n)]
    # Present so the path is the server's (rules and rooms subscribed); all checks stay OK.
    out.append("runbooks:\n  - name: noop\n    steps:\n      - command: [\"true\"]\n"
               "rules:\n  - name: recover\n    when:\n      system: sys-000\n      state: CRITICAL\n"
               "    then:\n      runbook: noop\n"
               "rooms:\n  - name: ops\n")
    return "".join(out)


async def _stored(rt: Runtime) -> int:
    async with rt.read() as s:
        return int(await s.scalar(select(func.count()).select_from(CheckResultRow)) or 0)


async def _seed_steady(rt: Runtime) -> None:
    """The stored states of a server that has run a while: every check OK with a full history.

    A fresh start needs 21 results per check (minutes at these intervals) before the state
    machine's steady-state path applies; a restart restores the history from these rows.
    """
    rows = [{"check": name, "state": "OK", "state_type": "hard", "attempt": 1, "since": 0.0, "last_check": None,
             "last_output": "", "last_latency_ms": None, "down": False, "flapping": False,
             "history": ["OK"] * HISTORY_SIZE} for name in rt.catalog.checks]
    await rt.transact(lambda s: s.connection().execute(insert(CheckStateRow), rows))


async def opsroom_run(kind: str, port: int, n: int, interval: float, warmup: float, seconds: float,
                      fresh: bool = False, keep_all: bool = False) -> Run:
    """The real server path: catalog loaded from YAML, server.start (scheduler, Monitor with its
    state machine, bus, rules, rooms), results and states persisted to a SQLite store."""
    tmp = Path(tempfile.mkdtemp(prefix="opsroom-checks-"))
    try:
        (tmp / "catalog").mkdir()
        (tmp / "catalog" / "checks.yaml").write_text(catalog_yaml(kind, port, n, interval))
        t0 = time.monotonic()
        rt = await server.open_runtime(Settings(data=tmp / "data", catalog=tmp / "catalog",
                                                check_result_ok_interval=0 if keep_all else 60.0))
        load_s = time.monotonic() - t0
        if not fresh:
            await _seed_steady(rt)
        await server.start(rt, schedule=True)  # gc.freeze() after loading, as in serve
        monitor = rt.monitor
        assert monitor is not None
        sched = monitor.scheduler
        # The scheduler keeps the last 20,000 lags; the bench wants every one in the window.
        sched._lags = deque(maxlen=10_000_000)
        try:
            await asyncio.sleep(warmup)
            sched.reset_lag()
            start_done, start_cpu, skipped0 = monitor.checks_run, time.process_time(), sched.skipped_late
            stored0 = await _stored(rt)
            assert monitor.results is not None
            sampled0 = monitor.results.sampled_out
            CPU.start()
            t0 = time.monotonic()
            await asyncio.sleep(seconds)
            elapsed = time.monotonic() - t0
            cores = CPU.cores()
            done = monitor.checks_run - start_done
            cpu = time.process_time() - start_cpu
            lag = sched.lag_percentiles()
            skipped = sched.skipped_late - skipped0
            stored = await _stored(rt) - stored0
            assert monitor.results is not None
            backlog, dropped = len(monitor.results.pending), monitor.results.dropped
            sampled = monitor.results.sampled_out - sampled0
            states = Counter(st.state for st in monitor.status.values())
        finally:
            await server.stop(rt)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Run(done / elapsed, n / interval, lag, states, cpu / max(done, 1) * 1e6, skipped, cores,
               stored / elapsed, sampled / elapsed, backlog, dropped, load_s)


def sustained(run: Run) -> bool:
    """Kept the schedule at the offered load: ran (nearly) all of it on time and stored it."""
    return (run.checks_per_s >= 0.98 * run.offered_per_s and run.skipped_late == 0 and run.lag["p99"] <= 0.1
            and run.backlog <= run.offered_per_s and run.dropped == 0)


def _report(kind: str, run: Run, baseline: float, target: int) -> None:
    bad = {k: v for k, v in run.states.items() if k != "OK"}
    print(f"{kind} opsroom:   {run.checks_per_s:,.0f} checks/s of {run.offered_per_s:,.0f}/s offered "
          f"(target {target:,}; {run.checks_per_s / baseline:.0%} of baseline), "
          f"lag p50 {run.lag['p50'] * 1000:.1f} ms p99 {run.lag['p99'] * 1000:.1f} ms "
          f"max {run.lag['max'] * 1000:.0f} ms, {run.cpu_us_per_check:.0f} us CPU/check"
          + (f", NOT OK: {bad}" if bad else "")
          + (f", {run.skipped_late} runs skipped late" if run.skipped_late else ""))
    print(f"                stored {run.stored_per_s:,.0f} results/s (+{run.sampled_per_s:,.0f}/s steady OK not kept: "
          f"one a minute per check), {run.backlog:,} waiting at the end, "
          f"{run.dropped:,} dropped; "
          f"catalog load + migrate {run.load_s:.1f} s; {fmt_cores(run.cores)}")
    print(f"                sustained (>= 98% of offered on time, no skips, lag p99 <= 100 ms, store keeping up): "
          f"{'yes' if sustained(run) else 'NO'}")


async def bench(port: int, args: argparse.Namespace) -> dict[str, Any]:
    url = f"http://{HOST}:{port}/health"

    base_http = await http_baseline(url, args.baseline)
    print(f"http baseline:  {base_http:,.0f} GETs/s (bare aiohttp, concurrency {BASELINE_CONCURRENCY}, "
          f"one session); {fmt_cores(CPU.cores())}")
    http = await opsroom_run("http", port, args.checks, args.http_interval, args.warmup, args.window, args.fresh,
                             args.keep_all)
    _report("http", http, base_http, 2000)

    base_tcp = await tcp_baseline(port, args.baseline)
    print(f"tcp baseline:   {base_tcp:,.0f} connects/s (bare asyncio.open_connection, "
          f"concurrency {BASELINE_CONCURRENCY}); {fmt_cores(CPU.cores())}")
    base_sock = await tcp_baseline(port, args.baseline, raw=True)
    print(f"tcp baseline:   {base_sock:,.0f} connects/s (bare socket + loop.sock_connect, as the probe "
          f"does); {fmt_cores(CPU.cores())}")
    tcp = await opsroom_run("tcp", port, args.checks, args.tcp_interval, args.warmup, args.window, args.fresh,
                             args.keep_all)
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
        "http_sustained": sustained(http),
        "lag_max_ms": round(http.lag["max"] * 1000, 1),
        "http_stored_per_s": round(http.stored_per_s, 1),
        "http_sampled_out_per_s": round(http.sampled_per_s, 1),
        "http_backlog": http.backlog,
        "http_dropped": http.dropped,
        "tcp_checks_per_s": round(tcp.checks_per_s, 1),
        "tcp_baseline": round(base_tcp, 1),
        "tcp_target": 5000,
        "tcp_sock_baseline": round(base_sock, 1),
        "tcp_lag_p99_ms": round(tcp.lag["p99"] * 1000, 2),
        "tcp_sustained": sustained(tcp),
        "tcp_lag_max_ms": round(tcp.lag["max"] * 1000, 1),
        "tcp_stored_per_s": round(tcp.stored_per_s, 1),
        "tcp_sampled_out_per_s": round(tcp.sampled_per_s, 1),
        "tcp_backlog": tcp.backlog,
        "tcp_dropped": tcp.dropped,
        "catalog_load_s": round(http.load_s, 2),
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
    parser.add_argument("--tcp-interval", type=float, default=4.0, help="20,000 / 4 s = 5,000 checks/s offered")
    parser.add_argument("--keep-all", action="store_true",
                        help="store every result (check_result_ok_interval=0) instead of steady OK once a minute")
    parser.add_argument("--fresh", action="store_true",
                        help="start with an empty store (no check has a history yet) instead of a restarted server's")
    args = parser.parse_args()
    args.baseline, args.warmup, args.window = (2.5, 4.0, 9.0) if args.quick else (15.0, 20.0, 60.0)
    global CPU
    target = TargetProcess()
    with target as port:
        CPU = CpuShare(target.pid)
        print(f"target: aiohttp on {HOST}:{port} in its own process; opsroom pid {os.getpid()}; store: "
              + ("empty (first start)" if args.fresh else "a restarted server's (states with full history)"))
        figures = asyncio.run(bench(port, args))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
