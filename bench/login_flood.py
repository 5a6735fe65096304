"""Login flood: how slow does the server get for everyone else while bad logins pour in?

A real `opsroom demo` server (harness.start_demo). A separate flood process sends bad web
logins (form POSTs with a valid login CSRF token, wrong passwords, one name each), all at
once, while this process times GET /healthz back to back over one keep-alive connection:

  one address   150 logins from 127.0.0.1: the login throttle's address ceiling lets 30
                of them check a password (argon2) and refuses the rest unchecked
  spread        N logins from N loopback addresses (127.0.1.x): the throttle lets every
                one run argon2, so this measures argon2 kept off the event loop alone
                (quick 20, full 150)

Baseline: the same /healthz timing on the idle server, same run. The figure is the ratio
of /healthz p50 during the one-address flood to the idle p50 (finding 13 of issue 9: before
the fix, 150 bad logins gave a median of 249 ms for 19 s).

    .venv/bin/python bench/login_flood.py --quick    # < 60 s
    .venv/bin/python bench/login_flood.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, fmt_ms, info, loadavg, percentile, r, repo_on_path, run_cleaned

TARGET_RATIO = 5.0  # /healthz p50 during the flood, over idle p50


# --- the flood process ------------------------------------------------------------


async def flood_main(base: str, count: int, addresses: int) -> None:
    """Prepare `count` logins over `addresses` source addresses; on `go`, send them all at once."""
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=120) as first:
        page = await first.get("/login")
        csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        cookies = dict(first.cookies.items())
    clients = []
    for i in range(addresses):
        local = "127.0.0.1" if addresses == 1 else f"127.0.{1 + i // 250}.{1 + i % 250}"
        transport = httpx.AsyncHTTPTransport(local_address=local)
        clients.append(httpx.AsyncClient(base_url=base, timeout=120, cookies=cookies, transport=transport,
                                         limits=httpx.Limits(max_connections=count)))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    async def one(i: int) -> str:
        resp = await clients[i % addresses].post("/login", data={
            "username": f"nobody{i}", "password": "wrong-password", "csrf": csrf, "next": "/"})
        where = resp.headers.get("location", "")
        if "too+many" in where:
            return "throttled"
        return "denied" if "wrong+user" in where else f"other {resp.status_code}"

    t0 = time.perf_counter()
    outcomes = await asyncio.gather(*(one(i) for i in range(count)))
    took = time.perf_counter() - t0
    for c in clients:
        await c.aclose()
    counts = {k: outcomes.count(k) for k in sorted(set(outcomes))}
    print("done " + json.dumps({"seconds": took, "outcomes": counts}), flush=True)


# --- the timing side ----------------------------------------------------------------


async def probe(http: Any, until: asyncio.Future[Any] | None = None, n: int = 0) -> list[float]:
    """Back-to-back GET /healthz: n of them, or until `until` is done."""
    out: list[float] = []
    while (until is None and len(out) < n) or (until is not None and not until.done()):
        t0 = time.perf_counter()
        resp = await http.get("/healthz")
        out.append(time.perf_counter() - t0)
        assert resp.status_code == 200
    return out


async def phase(http: Any, base: str, count: int, addresses: int, children: list[Any]) -> tuple[list[float], Any]:
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--flood-child", "--base", base, "--count", str(count),
        "--addresses", str(addresses), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    children.append(child)
    assert child.stdout is not None and child.stdin is not None
    line = await asyncio.wait_for(child.stdout.readline(), 60)
    if line.strip() != b"ready":
        raise RuntimeError(f"flood process failed: {line!r}")
    child.stdin.write(b"go\n")
    await child.stdin.drain()
    result = asyncio.get_running_loop().create_task(asyncio.wait_for(child.stdout.readline(), 300))
    samples = await probe(http, until=result)
    line = result.result()
    await child.wait()
    if not line.startswith(b"done "):
        raise RuntimeError(f"flood process failed: {line!r}")
    return samples, json.loads(line[5:])


async def bench(args: argparse.Namespace, tmp: Path, started: list[Any], children: list[Any]) -> dict[str, Any]:
    repo_on_path()
    import httpx
    from tests.e2e.harness import start_demo

    demo = start_demo(tmp, interval="2s")
    started.append(demo)
    info(f"opsroom demo pid {demo.proc.pid} on {demo.base}")
    async with httpx.AsyncClient(base_url=demo.base, timeout=60) as http:
        await probe(http, n=20)
        idle = await probe(http, n=args.n)
        info(f"idle GET /healthz keep-alive:        {fmt_ms(idle)}")
        one, one_flood = await phase(http, demo.base, 150, 1, children)
        info(f"one address: 150 logins in {one_flood['seconds']:.2f} s, {one_flood['outcomes']}")
        info(f"  GET /healthz during the flood:     {fmt_ms(one)}")
        spread, spread_flood = await phase(http, demo.base, args.spread, args.spread, children)
        info(f"spread: {args.spread} logins from {args.spread} addresses in {spread_flood['seconds']:.2f} s, "
             f"{spread_flood['outcomes']}")
        info(f"  GET /healthz during the flood:     {fmt_ms(spread)}")
    idle50 = percentile(idle, 50)
    ratio = percentile(one, 50) / idle50
    spread_ratio = percentile(spread, 50) / idle50
    info(f"ratio of p50 (one address / idle): {ratio:.2f}; spread / idle: {spread_ratio:.2f}; "
         f"target <= {TARGET_RATIO:g}: {'met' if max(ratio, spread_ratio) <= TARGET_RATIO else 'MISSED'}")
    return {
        "figure": "login_flood_healthz_p50_ratio",
        "value": r(ratio, 2),
        "unit": "x idle p50",
        "target": TARGET_RATIO,
        "baseline": r(idle50 * 1000),
        "baseline_kind": "idle GET /healthz p50 ms, HTTP keep-alive, same run",
        "flood_p50_ms": r(percentile(one, 50) * 1000),
        "flood_p99_ms": r(percentile(one, 99) * 1000),
        "flood_seconds": r(one_flood["seconds"], 2),
        "flood_outcomes": one_flood["outcomes"],
        "spread_logins": args.spread,
        "spread_ratio": r(spread_ratio, 2),
        "spread_p50_ms": r(percentile(spread, 50) * 1000),
        "spread_p99_ms": r(percentile(spread, 99) * 1000),
        "spread_seconds": r(spread_flood["seconds"], 2),
        "spread_outcomes": spread_flood["outcomes"],
        "idle_p99_ms": r(percentile(idle, 99) * 1000),
        "target_met": max(ratio, spread_ratio) <= TARGET_RATIO,
        "loadavg": loadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 spread logins (< 60 s)")
    parser.add_argument("-n", type=int, default=300, help="idle /healthz samples")
    parser.add_argument("--spread", type=int, default=None, help="logins from distinct addresses (150; quick 20)")
    parser.add_argument("--flood-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--addresses", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood_child:
        asyncio.run(flood_main(args.base, args.count, args.addresses))
        return
    if args.spread is None:
        args.spread = 20 if args.quick else 150
    emit(run_cleaned(lambda tmp, started, children: bench(args, tmp, started, children), "opsroom-login-"))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
