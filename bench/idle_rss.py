"""Idle memory of the demo server: RSS of the `opsroom demo` process after it sits idle.

A real `opsroom demo` (harness.start_demo, checks every 2 s as in the plain demo,
rule off) is started and left alone for 10 s (quick) or 30 s (full); its RSS is
sampled every second, and the figure is the last sample. Only the server process
(the python running uvicorn) is measured, not the demo services it started.

Baseline, in the same run: a bare python that only imports what the server is built
on (`import fastapi, uvicorn, sqlalchemy, aiohttp`) and sleeps: what any server on
this stack costs before it does anything.

    .venv/bin/python bench/idle_rss.py --quick    # 10 s idle, < 60 s
    .venv/bin/python bench/idle_rss.py            # 30 s idle
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, info, kill_all, loadavg, r, repo_on_path, stop_demo

TARGET_MB = 150.0
MB = 1024 * 1024
BARE = "import fastapi, uvicorn, sqlalchemy, aiohttp, time, sys; print('ready', flush=True); time.sleep(60)"


def bare_rss() -> tuple[float, float]:
    """(rss, uss) in MB of a python that only imports the stack, measured once it is idle."""
    proc = subprocess.Popen([sys.executable, "-c", BARE], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the bare import process failed")
        time.sleep(0.5)
        p = psutil.Process(proc.pid)
        full = p.memory_full_info()
        return full.rss / MB, full.uss / MB
    finally:
        kill_all([proc.pid], grace=2.0)
        with contextlib.suppress(Exception):
            proc.wait(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 s idle (< 60 s)")
    parser.add_argument("--idle", type=float, default=None, help="seconds idle (default 30, --quick 10)")
    args = parser.parse_args()
    idle = args.idle if args.idle is not None else (10.0 if args.quick else 30.0)

    repo_on_path()
    from tests.e2e.harness import start_demo

    tmp = Path(tempfile.mkdtemp(prefix="opsroom-rss-"))
    demo = None
    samples: list[tuple[float, float]] = []
    try:
        base_rss, base_uss = bare_rss()
        info(f"baseline: bare `import fastapi, uvicorn, sqlalchemy, aiohttp`: RSS {base_rss:.1f} MB "
             f"(USS {base_uss:.1f} MB)")
        demo = start_demo(tmp, interval="2s")
        server = psutil.Process(demo.proc.pid)
        info(f"opsroom demo pid {demo.proc.pid} on {demo.base} ({server.cmdline()[1:3]}); idle {idle:g} s")
        t0 = time.monotonic()
        cpu0 = server.cpu_times()
        while True:
            elapsed = time.monotonic() - t0
            samples.append((elapsed, server.memory_info().rss / MB))
            if elapsed >= idle:
                break
            time.sleep(min(1.0, idle - elapsed))
        cpu1 = server.cpu_times()
        full = server.memory_full_info()
        threads = server.num_threads()
        children = [c.pid for c in server.children(recursive=True)]
    finally:
        stop_demo(demo)
        shutil.rmtree(tmp, ignore_errors=True)

    rss = samples[-1][1]
    cpu_pct = ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / max(samples[-1][0], 1e-9) * 100
    info("RSS over the idle period (s: MB): " + ", ".join(f"{t:.0f}: {m:.1f}" for t, m in samples))
    info(f"opsroom server: RSS {rss:.1f} MB, USS {full.uss / MB:.1f} MB, {threads} threads, "
         f"CPU while idle {cpu_pct:.1f}% of a core; not counted: {len(children)} demo service processes")
    info(f"over the bare stack: +{rss - base_rss:.1f} MB RSS")
    info(f"target <= {TARGET_MB:g} MB: {'met' if rss <= TARGET_MB else 'MISSED'}")
    emit({
        "figure": "idle_rss_mb",
        "value": r(rss, 1),
        "unit": "MB",
        "target": TARGET_MB,
        "baseline": r(base_rss, 1),
        "baseline_kind": "bare python importing fastapi, uvicorn, sqlalchemy, aiohttp",
        "uss_mb": r(full.uss / MB, 1),
        "baseline_uss_mb": r(base_uss, 1),
        "over_baseline_mb": r(rss - base_rss, 1),
        "rss_first_mb": r(samples[0][1], 1),
        "growth_mb": r(rss - samples[0][1], 1),
        "idle_s": idle,
        "idle_cpu_pct": r(cpu_pct, 1),
        "threads": threads,
        "target_met": rss <= TARGET_MB,
        "loadavg": loadavg(),
    })


if __name__ == "__main__":
    main()
