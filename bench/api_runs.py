"""Runs asked for through the API by 200 concurrent clients: request -> execution `running`.

A real `opsroom serve` on loopback (its own process) with a small catalog whose runbook
`stamp` needs no approval and has one step, `date +%s.%N N`: a tiny binary that prints the
wall-clock instant its process ran. 200 clients, each with a bearer token of its own (all of
user `you`, an operator) and a keep-alive connection of its own (aiohttp, one session each),
POST /api/v1/runbooks/stamp/run with a parameter n unique to the request (identical runs would
be refused as already in progress: the lock key).

When is an execution "running"? opsroom inserts a run that needs no approval already as
`running`, owned by the server that answers, in the transaction that records the request
(and its audit record), and starts its steps' task before it answers 202. So the figure is:

  running    request sent -> the 202 answer, which must say status `running` (any other status
             is counted and then observed as the row's started_at, polled; none was seen)
  spawned    request sent -> the step's process ran (`date`'s own wall clock, read back from
             the execution's output afterwards): the stricter "something is running" time,
             reported beside it, never instead of it

How the 200 clients load the server (each phase with a fixed total count):

  burst      (the headline) all 200 clients send at one instant, the next round once all
             200 runs have finished; quick 2 rounds, full 10 (400 / 2,000 runs). 200 requests
             in flight at once: the p99 is the time the server needs for ~200 runs, so it is
             bounded by its throughput (Little's law), not by one request's cost.
  steady     each client asks on its own fixed schedule, one run every 200/RATE s with a
             random phase (open loop: nothing waits for answers), RATE = 25 runs/s offered
             (--rate; below what the 2-core machine sustains, so this is latency, not a queue
             growing for as long as the phase lasts); quick 400 runs, full 2,000
  capacity   each client in a closed loop (next request when its answer is in), quick 400,
             full 2,000 runs: runs/s the server sustains with 200 in flight

Baselines, measured in the same run with the same clients and the same pattern: GET /healthz
(no auth, no store: the floor of a request to this server) and GET /api/v1/runbooks (bearer
authentication and one audit record, no run): the figure is reported as a ratio to both.

Also reported: the server's CPU time per run (user + system, /proc), which a busy shared
machine inflates far less than wall-clock latency.

    .venv/bin/python bench/api_runs.py --quick          # about a minute
    .venv/bin/python bench/api_runs.py
    .venv/bin/python bench/api_runs.py --quick --pg postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, fmt_ms, info, loadavg, percentile, r, repo_on_path, run_cleaned
from chat_roundtrip import cpu_seconds

TARGET_P99_MS = 50.0
RUNBOOK = "stamp"
USER = "you"


def write_catalog(tmp: Path) -> Path:
    repo_on_path()
    import yaml
    from tests.factories import small_catalog

    base = small_catalog(tmp)
    data: dict[str, Any] = yaml.safe_load((base / "catalog.yaml").read_text())
    data["checks"] = []  # nothing else on the server's loop than what is measured
    data["runbooks"].append({
        "name": RUNBOOK, "approval": "none", "environment": "test",
        "parameters": {"n": {"type": "string", "pattern": "[0-9]{1,9}"}},
        # Digits only in the format: `date` prints its wall clock and n, nothing else.
        "steps": [{"command": ["date", "+%s.%N {{ params.n }}"]}]})
    (base / "catalog.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return base


def make_tokens(count: int) -> None:
    """In a child process on the server's store (as `opsroom token create` does): print tokens."""
    from opsroom.access import service as access
    from opsroom.cli.admin import store
    from opsroom.cli.common import local_admin

    async def body() -> list[str]:
        async with store(None, None) as rt:
            return [await access.create_token(rt, actor=local_admin(), user=USER, name=f"bench-{i}")
                    for i in range(count)]

    print("\n".join(asyncio.run(body())))


@dataclass
class Phase:
    """What one phase saw: per request (sent wall, sent perf, latency s, execution id)."""

    latency: list[float] = field(default_factory=list)
    sent_wall: dict[int, float] = field(default_factory=dict)  # execution id -> wall clock at send
    statuses: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    late: int = 0
    seconds: float = 0.0


class Clients:
    def __init__(self, base: str, tokens: list[str]) -> None:
        self.base = base
        self.tokens = tokens
        self.sessions: list[Any] = []
        self.numbers = itertools.count(1)

    async def open(self) -> None:
        import aiohttp

        for token in self.tokens:
            self.sessions.append(aiohttp.ClientSession(
                base_url=self.base, headers={"Authorization": f"Bearer {token}"},
                # Dropped idle before uvicorn's 5 s keep-alive timeout closes it under a request.
                connector=aiohttp.TCPConnector(limit=1, keepalive_timeout=4), timeout=aiohttp.ClientTimeout(total=60)))

    async def close(self) -> None:
        for s in self.sessions:
            await s.close()

    async def request(self, i: int, what: str, phase: Phase) -> None:
        """One request of client i; a run's answer must say `running`."""
        http = self.sessions[i]
        wall = time.time()
        t0 = time.perf_counter()
        try:
            if what == "run":
                async with http.post(f"/api/v1/runbooks/{RUNBOOK}/run",
                                     json={"params": {"n": str(next(self.numbers))}}) as resp:
                    body = await resp.json()
                    t1 = time.perf_counter()
                    if resp.status != 202:
                        phase.errors.append(f"{resp.status} {body}")
                        return
                    phase.statuses[body["status"]] += 1
                    if body["status"] != "running":  # observed later as its started_at
                        phase.sent_wall[body["id"]] = wall
                        phase.latency.append(await self._started_at(http, body["id"]) - wall)
                        return
                    phase.sent_wall[body["id"]] = wall
            else:
                async with http.get("/healthz" if what == "healthz" else "/api/v1/runbooks") as resp:
                    await resp.read()
                    t1 = time.perf_counter()
                    if resp.status != 200:
                        phase.errors.append(f"{what} {resp.status}")
                        return
        except Exception as exc:  # counted and shown: a bench must not hide its failures
            phase.errors.append(f"{type(exc).__name__}: {exc}")
            return
        phase.latency.append(t1 - t0)

    async def _started_at(self, http: Any, eid: int) -> float:
        while True:
            async with http.get(f"/api/v1/executions/{eid}") as resp:
                row = await resp.json()
            if row.get("started_at"):
                started = row["started_at"]
                return float(started) if not isinstance(started, str) else _iso(started)
            await asyncio.sleep(0.002)

    async def burst(self, what: str, rounds: int, wait_done: Any) -> Phase:
        phase = Phase()
        start = time.perf_counter()
        for _ in range(rounds):
            go = asyncio.Event()

            async def one(i: int, go: asyncio.Event = go) -> None:
                await go.wait()
                await self.request(i, what, phase)

            tasks = [asyncio.create_task(one(i)) for i in range(len(self.sessions))]
            await asyncio.sleep(0.05)  # every client waiting at the barrier
            go.set()
            await asyncio.gather(*tasks)
            if what == "run":
                await wait_done()
        phase.seconds = time.perf_counter() - start
        return phase

    async def steady(self, what: str, total: int, rate: float) -> Phase:
        """Open loop: client i sends at its own phase + k * period, whatever the answers do."""
        phase = Phase()
        n = len(self.sessions)
        period = n / rate
        per_client = max(1, total // n)
        rng = random.Random(7)
        start = time.perf_counter() + 0.05

        async def client(i: int) -> None:
            offset = rng.uniform(0, period)
            pending = []
            for k in range(per_client):
                at = start + offset + k * period
                delay = at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -0.005:
                    phase.late += 1
                pending.append(asyncio.create_task(self.request(i, what, phase)))
            await asyncio.gather(*pending)

        await asyncio.gather(*(client(i) for i in range(n)))
        phase.seconds = time.perf_counter() - start
        return phase

    async def closed(self, what: str, total: int) -> Phase:
        phase = Phase()
        n = len(self.sessions)
        start = time.perf_counter()

        async def client(i: int) -> None:
            for _ in range(max(1, total // n)):
                await self.request(i, what, phase)

        await asyncio.gather(*(client(i) for i in range(n)))
        phase.seconds = time.perf_counter() - start
        return phase


def _iso(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def spawn_times(clients: Clients, phase: Phase) -> list[float]:
    """Request sent -> `date` ran, from each execution's output (its process's wall clock)."""
    out: list[float] = []
    ids = list(phase.sent_wall)
    sem = asyncio.Semaphore(16)

    async def one(k: int, eid: int) -> None:
        async with sem, clients.sessions[k % len(clients.sessions)].get(f"/api/v1/executions/{eid}") as resp:
            row = await resp.json()
        for line in row.get("output", "").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].replace(".", "").isdigit():
                out.append(float(parts[0]) - phase.sent_wall[eid])

    await asyncio.gather(*(one(k, eid) for k, eid in enumerate(ids)))
    return out


def check(phase: Phase, name: str) -> None:
    if phase.errors:
        raise RuntimeError(f"{name}: {len(phase.errors)} failed requests, first: {phase.errors[0]}")


async def bench(args: argparse.Namespace, tmp: Path, started: list[Any], children: list[Any]) -> dict[str, Any]:
    repo_on_path()
    from tests.e2e.harness import start_server

    catalog = write_catalog(tmp)
    env = {"OPSROOM_DATABASE_URL": args.db_url} if args.db_url else {}
    server = start_server(tmp, ["serve", "--catalog", str(catalog)], env_extra=env)
    started.append(server)
    store = "PostgreSQL" if args.db_url else "SQLite"
    info(f"opsroom serve pid {server.proc.pid} on {server.base}, {store} store")
    made = subprocess.run([sys.executable, __file__, "--make-tokens", str(args.clients)], capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, **env, "OPSROOM_DATA": str(server.data),
                               "OPSROOM_CATALOG": str(catalog)})
    tokens = made.stdout.split()
    if made.returncode != 0 or len(tokens) != args.clients:
        raise RuntimeError(f"token creation failed: {made.stderr}")
    clients = Clients(server.base, tokens)
    await clients.open()
    pid = server.proc.pid

    async def all_done() -> None:
        """Until no execution is active (the executions of a round finish before the next)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            async with clients.sessions[0].get("/api/v1/executions", params={"status": "running",
                                                                            "limit": 1}) as resp:
                if not await resp.json():
                    return
            await asyncio.sleep(0.05)
        raise RuntimeError("runs still running after 60 s")

    result: dict[str, Any] = {}
    try:
        warm = await clients.burst("run", 1, all_done)
        check(warm, "warm-up")
        await clients.burst("healthz", 1, all_done)
        info(f"{args.clients} clients connected, each with its own token; warm-up {len(warm.latency)} runs")

        base_burst = await clients.burst("healthz", args.rounds, all_done)
        auth_burst = await clients.burst("get", args.rounds, all_done)
        cpu0 = cpu_seconds(pid)
        burst = await clients.burst("run", args.rounds, all_done)
        cpu1 = cpu_seconds(pid)
        for name, ph in (("healthz", base_burst), ("authenticated GET", auth_burst), ("burst", burst)):
            check(ph, name)
        burst_spawn = await spawn_times(clients, burst)
        info(f"burst, {args.rounds} rounds of {args.clients} at one instant:")
        info(f"  GET /healthz                 {fmt_ms(base_burst.latency)}")
        info(f"  GET /api/v1/runbooks (auth)  {fmt_ms(auth_burst.latency)}")
        info(f"  run -> 202 running           {fmt_ms(burst.latency)}")
        info(f"  run -> step process ran      {fmt_ms(burst_spawn)}")

        base_steady = await clients.steady("healthz", args.total, args.rate)
        await all_done()
        cpu2 = cpu_seconds(pid)
        steady = await clients.steady("run", args.total, args.rate)
        cpu3 = cpu_seconds(pid)
        check(base_steady, "steady healthz")
        check(steady, "steady")
        await all_done()
        steady_spawn = await spawn_times(clients, steady)
        info(f"steady, {args.clients} clients open loop, {args.rate:g} runs/s offered, "
             f"{len(steady.latency) / steady.seconds:.0f}/s answered ({steady.late} sends late):")
        info(f"  GET /healthz                 {fmt_ms(base_steady.latency)}")
        info(f"  run -> 202 running           {fmt_ms(steady.latency)}")
        info(f"  run -> step process ran      {fmt_ms(steady_spawn)}")

        cap = await clients.closed("run", args.total)
        check(cap, "capacity")
        await all_done()
        cap_rate = len(cap.latency) / cap.seconds
        info(f"capacity, {args.clients} clients closed loop: {cap_rate:.0f} runs/s; {fmt_ms(cap.latency)}")
        statuses = burst.statuses + steady.statuses + cap.statuses
        info(f"statuses in the answers: {dict(statuses)}")
        cpu_burst = (cpu1 - cpu0) * 1000 / len(burst.latency) if cpu0 is not None and cpu1 is not None else None
        cpu_steady = (cpu3 - cpu2) * 1000 / len(steady.latency) if cpu2 is not None and cpu3 is not None else None
        if cpu_burst is not None and cpu_steady is not None:
            info(f"server CPU per run (request, run, finish): {cpu_burst:.2f} ms burst, {cpu_steady:.2f} ms steady")

        p99 = percentile(burst.latency, 99) * 1000
        met = p99 <= TARGET_P99_MS
        info(f"target p99 <= {TARGET_P99_MS:g} ms with {args.clients} at once: {'met' if met else 'MISSED'}; "
             f"steady p99 {percentile(steady.latency, 99) * 1000:.1f} ms")

        def ms(values: list[float], q: float) -> float | None:
            return r(percentile(values, q) * 1000)

        base99 = percentile(base_burst.latency, 99) * 1000
        result = {
            "figure": "api_runs_burst_p99_ms",
            "value": r(p99),
            "unit": "ms",
            "target": TARGET_P99_MS,
            "baseline": r(base99),
            "baseline_kind": f"GET /healthz p99, the same {args.clients} clients at one instant",
            "ratio_to_healthz": r(p99 / base99, 2),
            "ratio_to_authenticated_get": r(p99 / (percentile(auth_burst.latency, 99) * 1000), 2),
            "store": store,
            "clients": args.clients,
            "burst_p50_ms": ms(burst.latency, 50),
            "burst_spawned_p50_ms": ms(burst_spawn, 50),
            "burst_spawned_p99_ms": ms(burst_spawn, 99),
            "authenticated_get_burst_p99_ms": ms(auth_burst.latency, 99),
            "steady_offered_runs_per_s": args.rate,
            "steady_p50_ms": ms(steady.latency, 50),
            "steady_p99_ms": ms(steady.latency, 99),
            "steady_spawned_p99_ms": ms(steady_spawn, 99),
            "steady_healthz_p99_ms": ms(base_steady.latency, 99),
            "capacity_runs_per_s": r(cap_rate, 1),
            "capacity_p99_ms": ms(cap.latency, 99),
            "server_cpu_ms_per_run": r(cpu_steady) if cpu_steady is not None else None,
            "runs": len(burst.latency) + len(steady.latency) + len(cap.latency),
            "not_running_in_answer": sum(v for k, v in statuses.items() if k != "running"),
            "target_met": met,
            "loadavg": loadavg(),
        }
    finally:
        await clients.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 bursts, 400 steady and closed-loop runs")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=None, help="bursts (default 10, --quick 2)")
    parser.add_argument("--total", type=int, default=None, help="runs per steady/capacity phase (2,000; quick 400)")
    parser.add_argument("--rate", type=float, default=25.0, help="runs/s offered in the steady phase")
    parser.add_argument("--pg", metavar="ADMIN_URL", default=None,
                        help="run on a fresh PostgreSQL database made through this admin URL (dropped after)")
    parser.add_argument("--make-tokens", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_tokens is not None:
        make_tokens(args.make_tokens)
        return
    args.rounds = args.rounds or (2 if args.quick else 10)
    args.total = args.total or (400 if args.quick else 2000)
    from alert_ingest import pg_database

    args.db_url, drop = pg_database(args.pg) if args.pg else (None, None)
    try:
        emit(run_cleaned(lambda tmp, started, children: bench(args, tmp, started, children), "opsroom-api-runs-"))
    finally:
        if drop is not None:
            with contextlib.suppress(Exception):
                drop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
