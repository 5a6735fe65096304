"""Checks per second with 1 and 3 `opsroom serve` processes on one PostgreSQL, and exactly-once
violations (a check run twice in one of its intervals: must be 0).

    .venv/bin/python bench/cluster_checks.py --quick    # < 60 s

Each configuration is offered the same checks (tcp checks of a port nothing listens on: an
in-process refused connect each); checks/s is what reached check_results over the measured window,
so when one server already runs all of it the ratio is bounded by the offered load (1.00x). Past
about twice what one server runs, its result writer falls behind and stores nothing within the
window (`--checks 8000` showed it): checks run, results wait.
The last line is the 3-server figure as a ratio to the 1-server one:
the servers, PostgreSQL and this script share the machine's cores, so with 2 cores three servers
cannot run three times as many checks.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster.procs import pg_database, start_cluster, violations


def measure(servers: int, *, checks: int, interval: float, seconds: float) -> tuple[float, int, int]:
    with tempfile.TemporaryDirectory() as tmp, pg_database("opsroom_bench") as url:
        cluster = start_cluster(Path(tmp), url, servers=servers, checks=checks, interval=interval)
        try:
            deadline = time.monotonic() + 30
            while cluster.all_held() < 64 or not all(cluster.shards_of(s) for s in cluster.servers):
                if time.monotonic() > deadline:
                    raise SystemExit("the shards did not settle among the servers")
                time.sleep(0.2)
            time.sleep(interval)  # every check scheduled and under way
            start = time.time()
            time.sleep(seconds)
            end = time.time()
            time.sleep(1.5)
            rows = cluster.results(since=start - interval)
        finally:
            cluster.stop()
    ran = sum(1 for _c, at in rows if start <= at < end)
    twice, missed, _ = violations(rows, [f"c{i:05d}" for i in range(checks)], interval, start, end)
    return ran / (end - start), twice, missed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="shorter runs (make bench)")
    parser.add_argument("--checks", type=int, default=None)
    args = parser.parse_args()
    # 2,000 checks/s offered: more than one server runs on 2 cores, less than three do, so the
    # three-server run is not overloaded (a run started a whole interval late would land in the
    # next interval's window and count as a violation the schedule did not make).
    checks = args.checks or (4000 if args.quick else 6000)
    interval, seconds = (1.0, 8.0) if args.quick else (3.0, 30.0)
    print(f"machine: {os.cpu_count()} cores; {checks} tcp checks every {interval:g} s "
          f"({checks / interval:.0f} checks/s offered), {seconds:g} s measured per configuration")
    figures = {}
    for servers in (1, 3):
        rate, twice, missed = measure(servers, checks=checks, interval=interval, seconds=seconds)
        figures[servers] = rate
        print(f"{servers} server(s): {rate:.0f} checks/s; exactly-once violations: {twice}; "
              f"intervals missed (overload): {missed}")
        if twice:
            print("FAIL: a check ran twice in one interval")
            sys.exit(1)
    print(f"note: {os.cpu_count()} cores are shared by the servers, PostgreSQL and this script: 3 servers are "
          "bound by the cores, and here also by the load offered (3 servers ran all of it)")
    if not figures[1]:
        print("1 server stored no result in the window (overloaded: lower --checks)")
        sys.exit(1)
    print(f"3 servers / 1 server: {figures[3] / figures[1]:.2f}x")


if __name__ == "__main__":
    main()
