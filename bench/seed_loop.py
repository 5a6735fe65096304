"""The seed story's automated loop, timed: service-b killed -> "System A is healthy again" in the room.

What runs: the packaged demo (System A = service-b + service-c, real HTTP processes on
loopback, checks every 1 s, retry 0.5 s, hard after 2 attempts, rule recover-service-b
running start-service with no approval, then verifying) served by a real `opsroom serve`
process, with a `dev` WebSocket in the ops room like a phone.

Why not `opsroom demo --auto` itself: its rule is limited to cooldown 20 s and 3 runs an
hour (a sane production policy), so it could recover only 3 times per hour. The bench
therefore copies the packaged demo catalog to a temp dir and changes only that rule's
policy (cooldown 1 s, max_runs 1000) and gives the users password_env entries (serve
has no demo passwords). Everything else is what `opsroom demo` does: the same
services.json and services started by opsroom.demo.ctl in DATA/demo, the same
OPSROOM_DEMO_* variables (interval 1 s, retry 0.5 s, auto true), the same runbook.

Each run: kill -9 service-b's pid, t0; wait for the room message "System A is healthy
again", t1; value = t1 - t0. The unhealthy and "recovery runbook triggered" notices are
timed too. Between runs the bench waits for the new service-b, for the cooldown, and a
few OK results (so the repeated outages do not make the check flap), plus a random
0..interval so each kill lands at a random phase of the check schedule.

Baseline (the floor with this check configuration, not a competitor): the mean time
to a hard CRITICAL when a kill lands at a random moment (interval/2 + retry), plus the
measured wall time of the runbook's own command (`python -m opsroom.demo.ctl start
service-b`, run bare before the server starts) and one retry-less poll.

    .venv/bin/python bench/seed_loop.py --quick    # 5 outages, < 60 s
    .venv/bin/python bench/seed_loop.py            # 20 outages
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    ROOT,
    Deadline,
    TimedRoom,
    demo_service_procs,
    emit,
    info,
    kill_all,
    loadavg,
    message,
    percentile,
    pids_from_files,
    r,
    repo_on_path,
    stop_demo,
)

repo_on_path()
from tests.e2e.harness import login, start_server  # noqa: E402
from tests.factories import free_port  # noqa: E402

DEMO_CATALOG = ROOT / "src" / "opsroom" / "demo" / "catalog"
RULE = "recover-service-b"
TARGET_S = 3.0
INTERVAL_S, RETRY_S, MAX_ATTEMPTS = 1.0, 0.5, 2
PASSWORDS = {"you": "bench-you-password", "boss": "bench-boss-password", "dev": "bench-dev-password"}
HEALTHY = "System A is healthy again"


def prepare_catalog(dst: Path) -> None:
    """The packaged demo catalog with only the rule's rate limits relaxed and password_env set."""
    dst.mkdir(parents=True)
    for f in DEMO_CATALOG.glob("*.yaml"):
        shutil.copy(f, dst / f.name)
    changed_rule = changed_users = False
    for f in dst.glob("*.yaml"):
        doc = yaml.safe_load(f.read_text())
        touched = False
        for rule in doc.get("rules", []) or []:
            if rule["name"] == RULE:
                rule["policy"]["cooldown"] = "1s"
                rule["policy"]["max_runs"] = 1000
                changed_rule = touched = True
        for user in doc.get("users", []) or []:
            if user["name"] in PASSWORDS:
                user["password_env"] = f"OPSROOM_BENCH_PW_{user['name'].upper()}"
                changed_users = touched = True
        if touched:
            f.write_text(yaml.safe_dump(doc, sort_keys=False))
    if not (changed_rule and changed_users):
        raise RuntimeError(f"the demo catalog no longer has rule {RULE} or users {sorted(PASSWORDS)}")


def ctl(data: Path, *args: str) -> float:
    """Run the demo's ctl as the runbook does (a fresh python); return its wall time."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "opsroom.demo.ctl", "--data", str(data), *args], check=True,
                   capture_output=True, timeout=30)
    return time.perf_counter() - t0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def outage(room: TimedRoom, data: Path, timeout: float) -> dict[str, float]:
    pidfile = data / "demo" / "service-b.pid"
    pid = int(pidfile.read_text())
    mark = len(room.frames)
    os.kill(pid, signal.SIGKILL)
    t0 = time.perf_counter()
    t_unhealthy, _ = await room.wait_for(message("System A is unhealthy"), start=mark, timeout=timeout)
    t_triggered, _ = await room.wait_for(message(f"rule {RULE}"), start=mark, timeout=timeout)
    t_healthy, _ = await room.wait_for(message(HEALTHY), start=mark, timeout=timeout)
    failed = [f.get("text") for _, f in room.frames[mark:]
              if f.get("type") == "message" and ("needs a human" in f.get("text", "") or "flapping" in
                                                 f.get("text", ""))]
    if failed:
        info(f"  warning: {failed}")
    return {"total": t_healthy - t0, "unhealthy": t_unhealthy - t0, "triggered": t_triggered - t0,
            "recovered_after_trigger": t_healthy - t_triggered, "at": t_healthy, "old_pid": pid}


async def settle(data: Path, old_pid: int, since: float, cooldown: float, ok_results: float) -> None:
    """Until the new service-b runs, the cooldown is over and the check has some OK results."""
    pidfile = data / "demo" / "service-b.pid"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        pids = pids_from_files([pidfile])
        if pids and pids[0] != old_pid and alive(pids[0]):
            break
        await asyncio.sleep(0.05)
    else:
        raise RuntimeError("service-b was not restarted")
    wait = max(cooldown + 0.2 - (time.perf_counter() - since), ok_results)
    # A random phase against the 1 s check schedule, so detection time is sampled fairly.
    await asyncio.sleep(wait + random.uniform(0, INTERVAL_S))


async def bench(args: argparse.Namespace, tmp: Path, started: list[Any]) -> dict[str, Any]:
    catalog, data = tmp / "catalog", tmp / "data"
    prepare_catalog(catalog)
    (data / "demo").mkdir(parents=True)
    port_b, port_c = free_port(), free_port()
    (data / "demo" / "services.json").write_text(
        f'{{"service-b": {{"port": {port_b}}}, "service-c": {{"port": {port_c}}}}}')
    env = {"OPSROOM_DEMO_PORT_B": str(port_b), "OPSROOM_DEMO_PORT_C": str(port_c),
           "OPSROOM_DEMO_INTERVAL": f"{INTERVAL_S:g}s", "OPSROOM_DEMO_RETRY": f"{RETRY_S:g}s",
           "OPSROOM_DEMO_AUTO": "true",
           **{f"OPSROOM_BENCH_PW_{u.upper()}": p for u, p in PASSWORDS.items()}}

    # Baseline part: the runbook's command, bare (start; stop between samples).
    bare = []
    for i in range(args.bare):
        bare.append(ctl(data, "start", "service-b"))
        if i < args.bare - 1:
            ctl(data, "stop", "service-b")
    ctl(data, "start", "service-c")
    bare_start = statistics.median(bare)
    detect_floor = INTERVAL_S / 2 + RETRY_S * (MAX_ATTEMPTS - 1)
    floor = detect_floor + bare_start
    info(f"bare `ctl start service-b` (the runbook's command): median {bare_start * 1000:.0f} ms "
         f"({', '.join(f'{b * 1000:.0f}' for b in bare)} ms)")
    info(f"floor: mean detection {detect_floor:.2f} s (interval/2 + retry) + bare start = {floor:.2f} s")

    demo = start_server(tmp, ["serve", "--catalog", str(catalog)], data=data, env_extra=env)
    started.append(demo)
    info(f"opsroom serve pid {demo.proc.pid} on {demo.base}; rule {RULE}: cooldown 1s, max_runs 1000")
    http = await login(demo.base, "dev", PASSWORDS["dev"])
    room = await TimedRoom.open(demo.base, dict(http.cookies.items()))
    runs: list[dict[str, float]] = []
    budget = Deadline(args.budget)
    try:
        await asyncio.sleep(args.warm)  # let the first checks establish OK
        for i in range(args.n):
            if budget.expired():
                info(f"time budget spent after {i} runs")
                break
            run = await outage(room, data, timeout=args.timeout)
            runs.append(run)
            info(f"run {i + 1:2d}: healthy again after {run['total']:.2f} s "
                 f"(unhealthy notice {run['unhealthy']:.2f} s, rule triggered {run['triggered']:.2f} s, "
                 f"recovered {run['recovered_after_trigger']:.2f} s after the trigger)")
            if i < args.n - 1:
                await settle(data, int(run["old_pid"]), run["at"], cooldown=1.0, ok_results=args.gap)
    finally:
        await room.close()
        await http.aclose()

    totals = [x["total"] for x in runs]
    if not totals:
        raise RuntimeError("no outage completed")
    med = statistics.median(totals)
    info(f"median {med:.2f} s over {len(totals)} outages (p90 {percentile(totals, 90):.2f} s, "
         f"max {max(totals):.2f} s); target <= {TARGET_S:g} s: {'met' if med <= TARGET_S else 'MISSED'}")
    return {
        "figure": "seed_loop_recovery_median_s",
        "value": r(med),
        "unit": "s",
        "target": TARGET_S,
        "baseline": r(floor),
        "baseline_kind": "floor: mean detection (interval/2 + retry) + bare ctl start",
        "p90_s": r(percentile(totals, 90)),
        "max_s": r(max(totals)),
        "min_s": r(min(totals)),
        "unhealthy_notice_median_s": r(statistics.median(x["unhealthy"] for x in runs)),
        "triggered_median_s": r(statistics.median(x["triggered"] for x in runs)),
        "trigger_to_healthy_median_s": r(statistics.median(x["recovered_after_trigger"] for x in runs)),
        "bare_ctl_start_s": r(bare_start),
        "detect_floor_s": r(detect_floor),
        "runs": len(totals),
        "interval_s": INTERVAL_S,
        "retry_s": RETRY_S,
        "target_met": med <= TARGET_S,
        "loadavg": loadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 outages (< 60 s)")
    parser.add_argument("-n", type=int, default=None, help="outages (default 20, --quick 5)")
    parser.add_argument("--gap", type=float, default=2.5, help="seconds of OK results between outages")
    parser.add_argument("--timeout", type=float, default=20.0, help="per outage")
    args = parser.parse_args()
    if args.n is None:
        args.n = 5 if args.quick else 20
    args.bare = 3 if args.quick else 5
    args.warm = 1.5
    args.budget = 38.0 if args.quick else 600.0
    tmp = Path(tempfile.mkdtemp(prefix="opsroom-seed-"))
    started: list[Any] = []
    try:
        result = asyncio.run(bench(args, tmp, started))
    finally:
        for demo in started:
            stop_demo(demo)
        # Services the bench started itself (before the server) or the runbook restarted.
        leftover = demo_service_procs(tmp / "data")
        if leftover:
            kill_all(leftover, grace=3.0)
        shutil.rmtree(tmp, ignore_errors=True)
    emit(result)


if __name__ == "__main__":
    main()
