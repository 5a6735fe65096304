"""Chat round trip in a busy room: `you` asks "is service-c running", 100 phones listen.

A real `opsroom demo` server (harness.start_demo; checks every 2 s as in the plain
demo). `you` logs in and opens the ops room over WebSocket; 100 more WebSockets are
opened as `dev` (each receives every room message) by a separate listener process,
so the 100 readers do not share an event loop with the timing client.

For N sequential questions (quick 50, full 200, after 5 warm-up ones):

  round trip   send of `is service-c running` -> the bot's reply frame ("service-c
               is ...") arrives on `you`'s socket
  fan-out      send -> the reply has reached all 100 listeners (perf_counter is
               CLOCK_MONOTONIC, comparable across the two processes)
  echo         send -> `you`'s own message comes back (stored and fanned out)

The next question is sent once every listener has the reply.

Baseline: GET /healthz over one HTTP keep-alive connection (httpx), same count, in the
same run with the 100 listeners connected: the floor of a request to this server.

Also reported: the server process's CPU time per question (user + system, from /proc), which a
busy machine inflates far less than it inflates the wall-clock figures: the way to compare two
versions of the fan-out on a shared host.

    .venv/bin/python bench/chat_roundtrip.py --quick    # 50 questions, < 60 s
    .venv/bin/python bench/chat_roundtrip.py            # 200 questions
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    TimedRoom,
    emit,
    fmt_ms,
    info,
    loadavg,
    percentile,
    r,
    repo_on_path,
    run_cleaned,
)

QUESTION = "is service-c running"
REPLY_PREFIX = "service-c is"
TARGET_P99_MS = 50.0


def is_reply(f: dict[str, Any]) -> bool:
    return f.get("type") == "message" and f.get("kind") == "bot" and (f.get("text") or "").startswith(REPLY_PREFIX)


# --- the listener process -------------------------------------------------------


async def listener_main(base: str, cookie: str, count: int) -> None:
    """Open `count` sockets; print `done K MAX MEDIAN` when all have the K-th reply."""
    from websockets.asyncio.client import connect

    arrivals: dict[int, list[float]] = {}
    seen = [0] * count
    url = base.replace("http", "ws", 1) + "/rooms/ops/ws"
    out = sys.stdout

    async def one(i: int, ws: Any) -> None:
        with contextlib.suppress(Exception):
            async for raw in ws:
                t = time.perf_counter()
                # Cheap pre-filter, then parse: every listener parses every frame it gets.
                if REPLY_PREFIX not in raw:
                    continue
                if not is_reply(json.loads(raw)):
                    continue
                k = seen[i]
                seen[i] += 1
                got = arrivals.setdefault(k, [])
                got.append(t)
                if len(got) == count:
                    got.sort()
                    out.write(f"done {k} {got[-1]!r} {got[len(got) // 2]!r}\n")
                    out.flush()
                    del arrivals[k]

    sockets = []
    for start in range(0, count, 20):
        batch = await asyncio.gather(*(connect(url, additional_headers={"Cookie": cookie}, open_timeout=20,
                                               max_queue=None) for _ in range(start, min(count, start + 20))))
        sockets.extend(batch)
    tasks = [asyncio.get_running_loop().create_task(one(i, ws)) for i, ws in enumerate(sockets)]
    out.write("ready\n")
    out.flush()
    # Until the parent closes stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for ws in sockets:
        with contextlib.suppress(Exception):
            await ws.close()
    for t in tasks:
        t.cancel()


# --- the timing side ------------------------------------------------------------


async def healthz_baseline(http: Any, n: int) -> list[float]:
    for _ in range(5):
        await http.get("/healthz")
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        resp = await http.get("/healthz")
        out.append(time.perf_counter() - t0)
        assert resp.status_code == 200
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), None where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bench(args: argparse.Namespace, tmp: Path, started: list[Any], children: list[Any]) -> dict[str, Any]:
    repo_on_path()
    from tests.e2e.harness import DEMO_PASSWORDS, login, start_demo

    demo = start_demo(tmp, interval="2s")
    started.append(demo)
    info(f"opsroom demo pid {demo.proc.pid} on {demo.base}")
    you_http = await login(demo.base, "you", DEMO_PASSWORDS["you"])
    dev_http = await login(demo.base, "dev", DEMO_PASSWORDS["dev"])
    dev_cookie = "; ".join(f"{k}={v}" for k, v in dev_http.cookies.items())
    you = await TimedRoom.open(demo.base, dict(you_http.cookies.items()))
    child = None
    if args.listeners:
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--listener-child", "--base", demo.base, "--cookie", dev_cookie,
            "--listeners", str(args.listeners), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        children.append(child)
        assert child.stdout is not None and child.stdin is not None
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"listener process failed: {line!r}")
    info(f"{args.listeners} listeners connected as dev" + (f" (pid {child.pid})" if child else "")
         + "; `you` connected")
    await asyncio.sleep(0.5)  # presence notices settle

    base = await healthz_baseline(you_http, args.n)
    info(f"baseline GET /healthz keep-alive: {fmt_ms(base)}")

    rtt, fan, echo, fan_median = [], [], [], []
    cpu_start: float | None = None
    cpu_end: float | None = None
    try:
        for i in range(args.warmup + args.n):
            if i == args.warmup:
                cpu_start = cpu_seconds(demo.proc.pid)
            mark = len(you.frames)
            t0 = time.perf_counter()
            await you.say(QUESTION)
            t_echo, _ = await you.wait_for(
                lambda f: f.get("type") == "message" and f.get("kind") != "bot" and f.get("text") == QUESTION,
                start=mark, timeout=10)
            t_reply, frame = await you.wait_for(is_reply, start=mark, timeout=10)
            if child is not None:
                assert child.stdout is not None
                line = await asyncio.wait_for(child.stdout.readline(), 20)
                parts = line.decode().split()
                if not parts or parts[0] != "done" or int(parts[1]) != i:
                    raise RuntimeError(f"listener process out of step: {line!r}")
            else:
                parts = ["done", str(i), repr(t_reply), repr(t_reply)]
            if i >= args.warmup:
                rtt.append(t_reply - t0)
                echo.append(t_echo - t0)
                fan.append(float(parts[2]) - t0)
                fan_median.append(float(parts[3]) - t0)
        cpu_end = cpu_seconds(demo.proc.pid)
        info(f"last reply: {frame['text']!r}")
    finally:
        if child is not None:
            with contextlib.suppress(Exception):
                child.stdin.close()  # type: ignore[union-attr]
            with contextlib.suppress(Exception):
                await asyncio.wait_for(child.wait(), 10)
        await you.close()
        await you_http.aclose()
        await dev_http.aclose()

    p99 = percentile(rtt, 99) * 1000
    info(f"echo of own message:        {fmt_ms(echo)}")
    info(f"round trip (send -> reply): {fmt_ms(rtt)}")
    info(f"reply at all {args.listeners} listeners: {fmt_ms(fan)}")
    info(f"reply at half the listeners: {fmt_ms(fan_median)}")
    cpu_ms = (cpu_end - cpu_start) * 1000 / len(rtt) if cpu_start is not None and cpu_end is not None else None
    if cpu_ms is not None:
        info(f"server CPU per question (its two messages to every socket): {cpu_ms:.1f} ms")
    info(f"target p99 <= {TARGET_P99_MS:g} ms: {'met' if p99 <= TARGET_P99_MS else 'MISSED'}")
    return {
        "figure": "chat_roundtrip_p99_ms",
        "value": r(p99),
        "unit": "ms",
        "target": TARGET_P99_MS,
        "baseline": r(percentile(base, 99) * 1000),
        "baseline_kind": "GET /healthz p99, HTTP keep-alive",
        "p50_ms": r(percentile(rtt, 50) * 1000),
        "p90_ms": r(percentile(rtt, 90) * 1000),
        "baseline_p50_ms": r(percentile(base, 50) * 1000),
        "all_listeners_p50_ms": r(percentile(fan, 50) * 1000),
        "all_listeners_p99_ms": r(percentile(fan, 99) * 1000),
        "echo_p50_ms": r(percentile(echo, 50) * 1000),
        "echo_p99_ms": r(percentile(echo, 99) * 1000),
        "listeners": args.listeners,
        "server_cpu_ms_per_question": r(cpu_ms) if cpu_ms is not None else None,
        "questions": len(rtt),
        "target_met": p99 <= TARGET_P99_MS,
        "loadavg": loadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="50 questions (< 60 s)")
    parser.add_argument("-n", type=int, default=None, help="questions (default 200, --quick 50)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--listeners", type=int, default=100)
    parser.add_argument("--listener-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--cookie", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.listener_child:
        asyncio.run(listener_main(args.base, args.cookie, args.listeners))
        return
    if args.n is None:
        args.n = 50 if args.quick else 200
    emit(run_cleaned(lambda tmp, started, children: bench(args, tmp, started, children), "opsroom-chat-"))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
