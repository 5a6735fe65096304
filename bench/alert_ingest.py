"""Alerts in: Alertmanager webhook v4 deliveries into POST /api/v1/alerts/prometheus, deduplicated.

A real `opsroom demo` server (its own process, a copy of the demo catalog plus an
`alert_sources` item of kind alertmanager and three more services of System A). Every
delivery is one Alertmanager group of 10 alerts, mapped by `{{ labels.service }}` onto five
services of one system, so the room gets one notice per delivery that has a change:

  40% new       3 alerts with a fingerprint never sent, 1 an earlier resolved alert firing
                again with a new startsAt (a new occurrence of a known fingerprint)
  50% repeats   5 alerts already firing, sent again unchanged (a repeat_interval's re-send)
  10% resolved  1 firing alert, now status resolved

Every response's counts are checked against what was sent: fired == new, repeats ==
repeats, resolved == resolved, nothing stale or stored twice (dedup that is not honest fails).

Two phases of --duration seconds each (full 20 s, --quick 5 s):

  capacity   closed loop: --senders concurrent senders (default 8) post as fast as they are
             answered: the alerts/s the server sustains
  at target  open loop at --rate alerts/s (default 1,000: 100 deliveries/s on a fixed
             schedule, whatever the answers do): request latency, and the problem-notice
             latency: POST sent -> the room notice naming that delivery's new alerts arrives
             on a WebSocket of `dev` in the ops room, read by a separate listener process (so
             the timing reader does not share a loop with the senders; perf_counter is
             CLOCK_MONOTONIC, comparable across the two processes)

Also reported: the server process's CPU time per delivery (user + system, from /proc).

    .venv/bin/python bench/alert_ingest.py --quick    # 2 x 5 s, < 60 s
    .venv/bin/python bench/alert_ingest.py            # 2 x 20 s
    .venv/bin/python bench/alert_ingest.py --quick --pg postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, fmt_ms, info, loadavg, percentile, r, repo_on_path, run_cleaned

TOKEN = "bench-alert-token-0123456789"
SERVICES = ["service-b", "service-c", "service-d", "service-e", "service-f"]
NAMES = ["HighLatency", "ErrorRate", "DiskFull", "PodCrashLooping", "TargetDown", "QueueBacklog"]
SEVERITIES = ["page", "warning", "critical", "warning"]
GROUP = 10
NEW_FRESH, NEW_AGAIN, REPEATS, RESOLVES = 3, 1, 5, 1
MIX = "40% new (30% new fingerprints, 10% a resolved one firing again), 50% repeats, 10% resolved"
TARGET_RATE = 1000.0
TARGET_P99_MS = 100.0
MARK = re.compile(r"\bd(\d+)x\d\b")  # the delivery a fired alert's summary names

ALERTS_YAML = f"""
services:
  - {{name: service-d, system: system-a}}
  - {{name: service-e, system: system-a}}
  - {{name: service-f, system: system-a}}

alert_sources:
  - name: prometheus
    kind: alertmanager
    token: {TOKEN}
    service: "{{{{ labels.service }}}}"
"""


# --- the listener process ---------------------------------------------------------


async def listener_main(base: str, cookie: str) -> None:
    """One socket into the ops room; print `seen SEQ T` for each delivery a fired notice names."""
    from websockets.asyncio.client import connect

    out = sys.stdout
    ws = await connect(base.replace("http", "ws", 1) + "/rooms/ops/ws", additional_headers={"Cookie": cookie},
                       open_timeout=20, max_queue=None)

    async def read() -> None:
        with contextlib.suppress(Exception):
            async for raw in ws:
                t = time.perf_counter()
                if "ALERT" not in raw:
                    continue
                f = json.loads(raw)
                if f.get("type") != "message":
                    continue
                for seq in sorted({int(m) for m in MARK.findall(f.get("text") or "")}):
                    out.write(f"seen {seq} {t!r}\n")
                out.flush()

    task = asyncio.get_running_loop().create_task(read())
    out.write("ready\n")
    out.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    with contextlib.suppress(Exception):
        await ws.close()
    task.cancel()


# --- the load ----------------------------------------------------------------------


def rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


@dataclass
class Delivery:
    seq: int
    body: bytes
    want: Counter[str]
    new: list[dict[str, Any]]
    touched: list[str]
    gone: list[dict[str, Any]]


class Load:
    """Alertmanager groups of 10 with the stated mix; remembers what fires, to repeat and resolve it.

    An alert is repeated or resolved only once the delivery that fired it was answered, and
    resolved only when no delivery in flight carries it, so the server's counts are exact
    whatever order concurrent deliveries take its lock in.
    """

    def __init__(self, seed: int = 11) -> None:
        self.rng = random.Random(seed)
        self.firing: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []  # the firing fingerprints, for random picks
        self.where: dict[str, int] = {}  # fingerprint -> its index in order
        self.resolved: list[dict[str, Any]] = []
        self.busy: Counter[str] = Counter()
        self.next_fp = 0
        self.seq = 0

    def _new(self, seq: int, j: int) -> dict[str, Any]:
        self.next_fp += 1
        svc = self.rng.choice(SERVICES)
        labels = {"alertname": self.rng.choice(NAMES), "service": svc, "severity": self.rng.choice(SEVERITIES),
                  "instance": f"10.0.{self.next_fp // 250}.{self.next_fp % 250}:9100", "job": "node"}
        return {"status": "firing", "labels": labels, "annotations": {"summary": f"bench d{seq}x{j}"},
                "startsAt": rfc3339(time.time()), "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.example:9090/graph?g0.expr=up",
                "fingerprint": f"{self.next_fp:016x}"}

    def delivery(self) -> Delivery:
        self.seq += 1
        seq = self.seq
        want: Counter[str] = Counter()
        n_again = min(NEW_AGAIN, len(self.resolved))
        new = [self._new(seq, j) for j in range(NEW_FRESH + NEW_AGAIN - n_again)]
        for _ in range(n_again):
            old = self.resolved.pop(self.rng.randrange(len(self.resolved)))
            new.append({**old, "status": "firing", "startsAt": rfc3339(time.time()),
                        "endsAt": "0001-01-01T00:00:00Z",
                        "annotations": {"summary": f"bench d{seq}x{len(new)} again"}})
        want["fired"] = len(new)
        # O(1) picks: the client must not slow down as the firing set grows (20 s: ~20,000).
        fps = self.order
        repeats = [self.firing[fps[k]] for k in self.rng.sample(range(len(fps)), min(REPEATS, len(fps)))]
        want["repeats"] = len(repeats)
        chosen = {a["fingerprint"] for a in repeats}
        gone: list[dict[str, Any]] = []
        for _ in range(50 if len(fps) > REPEATS + RESOLVES else 0):
            if len(gone) == RESOLVES:
                break
            fp = fps[self.rng.randrange(len(fps))]
            if not self.busy[fp] and fp not in chosen:
                gone.append(self._drop(fp))
        want["resolved"] = len(gone)
        ended = [{**a, "status": "resolved", "endsAt": rfc3339(time.time())} for a in gone]
        alerts = [*new, *repeats, *ended]
        touched = [a["fingerprint"] for a in repeats]
        self.busy.update(touched)
        body = {"version": "4", "status": "firing", "receiver": "opsroom", "groupKey": '{}:{alertname=~".*"}',
                "truncatedAlerts": 0, "groupLabels": {}, "commonLabels": {"job": "node"}, "commonAnnotations": {},
                "externalURL": "http://alertmanager.example:9093", "alerts": alerts}
        return Delivery(seq, json.dumps(body).encode(), want, new, touched, gone)

    def _drop(self, fp: str) -> dict[str, Any]:
        """Take an alert out of the firing set (swap with the last: O(1))."""
        k = self.where.pop(fp)
        last = self.order.pop()
        if last != fp:
            self.order[k] = last
            self.where[last] = k
        return self.firing.pop(fp)

    def answered(self, d: Delivery) -> None:
        """What an answered delivery fired may now be repeated and resolved; what it resolved may fire again."""
        for a in d.new:
            fp = a["fingerprint"]
            self.firing[fp] = a
            self.where[fp] = len(self.order)
            self.order.append(fp)
        self.busy.subtract(d.touched)
        self.resolved.extend(d.gone)


class Stats:
    def __init__(self) -> None:
        self.latency: list[float] = []
        self.sent_at: dict[int, float] = {}
        self.alerts = 0
        self.got: Counter[str] = Counter()
        self.want: Counter[str] = Counter()
        self.errors: list[str] = []


async def post(http: Any, url: str, load: Load, stats: Stats) -> None:
    d = load.delivery()
    t0 = time.perf_counter()
    stats.sent_at[d.seq] = t0
    try:
        async with http.post(url, data=d.body, headers={"Authorization": f"Bearer {TOKEN}",
                                                      "Content-Type": "application/json"}) as resp:
            text = await resp.text()
            status = resp.status
    except Exception as exc:  # a failed request is counted, the run goes on
        stats.errors.append(f"{type(exc).__name__}: {exc}")
        return
    stats.latency.append(time.perf_counter() - t0)
    if status != 200:
        stats.errors.append(f"{status}: {text[:200]}")
        return
    answer = json.loads(text)
    stats.alerts += answer["received"]
    for key in ("fired", "repeats", "resolved", "stored", "stale"):
        stats.got[key] += answer[key]
    stats.want.update(d.want)
    load.answered(d)


async def closed_loop(http: Any, url: str, load: Load, senders: int, seconds: float) -> tuple[Stats, float]:
    stats = Stats()
    end = time.perf_counter() + seconds
    t0 = time.perf_counter()

    async def sender() -> None:
        while time.perf_counter() < end:
            await post(http, url, load, stats)

    await asyncio.gather(*(sender() for _ in range(senders)))
    return stats, time.perf_counter() - t0


async def open_loop(http: Any, url: str, load: Load, rate: float, seconds: float) -> tuple[Stats, float, int]:
    """One delivery every GROUP/rate seconds on a fixed schedule; returns (stats, elapsed, late starts)."""
    stats = Stats()
    gap = GROUP / rate
    start = time.perf_counter()
    n = int(seconds / gap)
    tasks = []
    late = 0
    for i in range(n):
        at = start + i * gap
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -gap:
            late += 1
        tasks.append(asyncio.get_running_loop().create_task(post(http, url, load, stats)))
    await asyncio.gather(*tasks)
    return stats, time.perf_counter() - start, late


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def check_counts(stats: Stats, phase: str) -> None:
    if stats.errors:
        raise RuntimeError(f"{phase}: {len(stats.errors)} failed deliveries, first: {stats.errors[0]}")
    for key in ("fired", "repeats", "resolved"):
        if stats.got[key] != stats.want[key]:
            raise RuntimeError(f"{phase}: server counted {stats.got[key]} {key}, {stats.want[key]} were sent")
    if stats.got["stale"] or stats.got["stored"]:
        raise RuntimeError(f"{phase}: unexpected stale/stored: {dict(stats.got)}")


async def bench(args: argparse.Namespace, tmp: Path, started: list[Any], children: list[Any]) -> dict[str, Any]:
    import aiohttp

    repo_on_path()
    from tests.e2e.harness import DEMO_PASSWORDS, login, start_demo

    from opsroom.cli.demo import CATALOG

    catalog = tmp / "catalog"
    shutil.copytree(CATALOG, catalog)
    (catalog / "alerts.yaml").write_text(ALERTS_YAML)
    env = {"OPSROOM_DATABASE_URL": args.db_url} if args.db_url else None
    demo = start_demo(tmp, interval="5s", extra=["--catalog", str(catalog)], env_extra=env)
    started.append(demo)
    store = "PostgreSQL" if args.db_url else "SQLite"
    info(f"opsroom demo pid {demo.proc.pid} on {demo.base}, {store} store")
    info(f"deliveries of {GROUP} alerts: {MIX}")
    dev_http = await login(demo.base, "dev", DEMO_PASSWORDS["dev"])
    cookie = "; ".join(f"{k}={v}" for k, v in dev_http.cookies.items())
    await dev_http.aclose()
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--listener-child", "--base", demo.base, "--cookie", cookie,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    children.append(child)
    assert child.stdout is not None and child.stdin is not None
    line = await asyncio.wait_for(child.stdout.readline(), 60)
    if line.strip() != b"ready":
        raise RuntimeError(f"listener process failed: {line!r}")
    seen: dict[int, float] = {}

    async def read_seen() -> None:
        assert child.stdout is not None
        async for raw in child.stdout:
            parts = raw.split()
            if parts and parts[0] == b"seen":
                seen.setdefault(int(parts[1]), float(parts[2]))

    reader = asyncio.get_running_loop().create_task(read_seen())
    url = f"{demo.base}/api/v1/alerts/prometheus"
    load = Load()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:
            warm, _ = await closed_loop(http, url, load, 2, 1.0)  # warm-up, and alerts to repeat
            check_counts(warm, "warm-up")

            cpu0 = cpu_seconds(demo.proc.pid)
            cap, cap_s = await closed_loop(http, url, load, args.senders, args.duration)
            cpu1 = cpu_seconds(demo.proc.pid)
            check_counts(cap, "capacity")
            cap_rate = cap.alerts / cap_s
            info(f"capacity, {args.senders} senders closed loop, {cap_s:.1f} s: {cap_rate:,.0f} alerts/s "
                 f"({len(cap.latency) / cap_s:.0f} deliveries/s); request {fmt_ms(cap.latency)}")
            await asyncio.sleep(2.0)  # the capacity phase's notices drain before the timed phase

            cpu2 = cpu_seconds(demo.proc.pid)
            at, at_s, late = await open_loop(http, url, load, args.rate, args.duration)
            cpu3 = cpu_seconds(demo.proc.pid)
            check_counts(at, "at target")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not all(s in seen for s in at.sent_at):
                await asyncio.sleep(0.05)
    finally:
        with contextlib.suppress(Exception):
            child.stdin.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(child.wait(), 10)
        reader.cancel()

    at_rate = at.alerts / at_s
    notice = [seen[s] - t for s, t in at.sent_at.items() if s in seen]
    missing = len(at.sent_at) - len(notice)
    notice_p99 = percentile(notice, 99) * 1000
    info(f"at target, open loop {args.rate:,.0f} alerts/s offered, {at_s:.1f} s: {at_rate:,.0f} alerts/s "
         f"answered ({late} deliveries started late)")
    info(f"request (POST -> 200):             {fmt_ms(at.latency)}")
    info(f"problem notice (POST -> room frame): {fmt_ms(notice)}" + (f", {missing} never seen" if missing else ""))
    cpu_cap = (cpu1 - cpu0) * 1000 / max(1, len(cap.latency)) if cpu0 is not None and cpu1 is not None else None
    cpu_at = (cpu3 - cpu2) * 1000 / max(1, len(at.latency)) if cpu2 is not None and cpu3 is not None else None
    if cpu_cap is not None and cpu_at is not None:
        info(f"server CPU per delivery of {GROUP}: {cpu_cap:.2f} ms at capacity, {cpu_at:.2f} ms at target")
    info(f"dedup: server counted {dict(at.got + cap.got)} for what was sent: match")
    throughput_ok = cap_rate >= TARGET_RATE and at_rate >= 0.98 * args.rate
    latency_ok = notice_p99 <= TARGET_P99_MS and missing == 0
    info(f"target >= {TARGET_RATE:,.0f} alerts/s sustained: {'met' if throughput_ok else 'MISSED'}; "
         f"notice p99 <= {TARGET_P99_MS:g} ms: {'met' if latency_ok else 'MISSED'}")
    return {
        "figure": "alert_ingest_alerts_per_s",
        "value": r(cap_rate, 1),
        "unit": "alerts/s",
        "target": TARGET_RATE,
        "baseline": None,
        "baseline_kind": "none: the capacity phase's closed loop is the ceiling",
        "store": store,
        "mix": MIX,
        "group": GROUP,
        "senders": args.senders,
        "capacity_request_p50_ms": r(percentile(cap.latency, 50) * 1000),
        "capacity_request_p99_ms": r(percentile(cap.latency, 99) * 1000),
        "offered_alerts_per_s": args.rate,
        "at_target_alerts_per_s": r(at_rate, 1),
        "at_target_late_starts": late,
        "request_p50_ms": r(percentile(at.latency, 50) * 1000),
        "request_p99_ms": r(percentile(at.latency, 99) * 1000),
        "notice_p50_ms": r(percentile(notice, 50) * 1000),
        "notice_p99_ms": r(notice_p99),
        "notice_target_ms": TARGET_P99_MS,
        "notices_missing": missing,
        "server_cpu_ms_per_delivery": r(cpu_at) if cpu_at is not None else None,
        "server_cpu_ms_per_delivery_capacity": r(cpu_cap) if cpu_cap is not None else None,
        "seconds_per_phase": args.duration,
        "target_met": throughput_ok and latency_ok,
        "loadavg": loadavg(),
    }


def pg_database(admin_url: str) -> tuple[str, Any]:
    """A fresh PostgreSQL database for one run, and the function that drops it."""
    import asyncpg

    name = f"opsroom_bench_{uuid.uuid4().hex[:8]}"

    def run(sql: str) -> None:
        async def go() -> None:
            conn = await asyncpg.connect(admin_url)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()
        asyncio.run(go())

    run(f'CREATE DATABASE "{name}"')
    return f"{admin_url.rsplit('/', 1)[0]}/{name}", lambda: run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 s phases (< 60 s)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per phase (default 20, --quick 5)")
    parser.add_argument("--senders", type=int, default=8, help="concurrent senders in the capacity phase")
    parser.add_argument("--rate", type=float, default=TARGET_RATE, help="alerts/s offered in the timed phase")
    parser.add_argument("--pg", metavar="ADMIN_URL", default=None,
                        help="run on a fresh PostgreSQL database made through this admin URL (dropped after)")
    parser.add_argument("--listener-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--cookie", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.listener_child:
        asyncio.run(listener_main(args.base, args.cookie))
        return
    if args.duration is None:
        args.duration = 5.0 if args.quick else 20.0
    args.db_url, drop = pg_database(args.pg) if args.pg else (None, None)
    try:
        emit(run_cleaned(lambda tmp, started, children: bench(args, tmp, started, children), "opsroom-alerts-"))
    finally:
        if drop is not None:
            drop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
