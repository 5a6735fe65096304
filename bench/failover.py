"""Failover: kill -9 the server holding the most shards; seconds until all its checks run again.

    .venv/bin/python bench/failover.py --quick    # < 60 s

Three `opsroom serve` processes on one PostgreSQL with the default heartbeats (every 1 s, dead
after 3 s), 2,000 tcp checks every 2 s. The figure is, over the killed server's checks, the latest
first run on another server after the kill, in seconds from the kill (target <= 10 s).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster.procs import kill9, pg_database, start_cluster, violations

from opsroom.cluster.shards import shard_of

CHECKS, INTERVAL = 2000, 2.0


def once() -> tuple[float, float, int, int]:
    names = [f"c{i:05d}" for i in range(CHECKS)]
    with tempfile.TemporaryDirectory() as tmp, pg_database("opsroom_bench") as url:
        cluster = start_cluster(Path(tmp), url, servers=3, checks=CHECKS, interval=INTERVAL)
        try:
            deadline = time.monotonic() + 30
            while cluster.all_held() < 64 or not all(cluster.shards_of(s) for s in cluster.servers):
                if time.monotonic() > deadline:
                    raise SystemExit("the shards did not settle among the servers")
                time.sleep(0.2)
            time.sleep(2 * INTERVAL)
            victim = max(cluster.servers, key=lambda s: len(cluster.shards_of(s)))
            shards = cluster.shards_of(victim)
            mine = [c for c in names if shard_of(c, 64) in shards]
            start = time.time() - 2 * INTERVAL
            killed = time.time()
            kill9(victim)
            time.sleep(12)
            end = time.time()
            time.sleep(1.5)
            rows = cluster.results(since=start - INTERVAL)
        finally:
            cluster.stop()
    first: dict[str, float] = {}
    for check, at in rows:
        if at > killed and check not in first:
            first[check] = at
    missing = [c for c in mine if c not in first]
    if missing:
        raise SystemExit(f"FAIL: {len(missing)} of the killed server's checks never ran again within 12 s")
    worst = max(first[c] - killed for c in mine)
    p50 = sorted(first[c] - killed for c in mine)[len(mine) // 2]
    twice, _missed, _ = violations(rows, names, INTERVAL, start, end)
    return worst, p50, len(shards), twice


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one run (make bench)")
    args = parser.parse_args()
    runs = [once() for _ in range(1 if args.quick else 3)]
    for worst, p50, shards, twice in runs:
        print(f"killed a server holding {shards} of 64 shards: its checks ran again after p50 {p50:.2f} s, "
              f"all after {worst:.2f} s; runs twice in one interval: {twice}")
    print("chat connection takeover: not timed by this script (it needs a chat server); "
          "tests/cluster/test_chat_takeover.py kills the holder of chat:irc on a real ngircd and asserts the bot "
          "is back within 10 s (5.7-6.6 s when measured, lease ttl 5 s)")
    print(f"failover, all checks of the killed server running again: {max(r[0] for r in runs):.2f} s (target <= 10 s)")


if __name__ == "__main__":
    main()
