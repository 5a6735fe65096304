"""Failover: kill -9 the server holding the most shards and the chat connection; seconds until all
its checks run again and its chat connection is back (issue 14: <= 10 s with default heartbeats).

    .venv/bin/python bench/failover.py --quick    # one run, ~60 s

Three `opsroom serve` processes on one PostgreSQL with the default heartbeats (every 1 s, dead
after 3 s), 2,000 tcp checks every 2 s, and a room bound to a channel of a real ngircd on loopback
(tests/chat/servers/ngircd.py; `make system-deps` installs it) where a person's IRC client sits.
The victim starts first, so it takes the lease `chat:irc`; a server that joins later and ranks
above it for more shards is replaced by a new one (a new node id ranks anew) until the victim holds
the most shards, so one kill times both. People keep talking in the room on a surviving server
(through its API) before, during and after the kill. Figures, from the kill:

- checks: over the victim's checks, the latest first run on another server;
- chat: the first line said in the room that the IRC channel hears from another server's bot
  (the bot joined: its JOIN, reported beside it);
- whether every line said (before, in the gap, after) reached IRC, and once.

The last line is the JSON result: the worse of checks and chat over the runs (target <= 10 s).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import emit, info, r
from tests.chat.drivers.irc import BOT_NICK, IrcDriver
from tests.cluster.procs import Cluster, kill9, pg_database, start_cluster, violations
from tests.e2e.harness import Demo, cli

from opsroom.cluster.shards import shard_of

CHECKS, INTERVAL, SHARDS = 2000, 2.0, 64
TARGET_S = 10.0
SAY_EVERY_S = 1.0  # a line every second (the bot's reply makes two: IRC's 1/s pace, burst 4, keeps up)
WATCH_S = 14.0  # after the kill


@dataclass
class Run:
    shards: int
    checks_p50: float
    checks_all: float
    twice: int
    joined: float  # the new holder's bot in the channel
    heard: float  # the first line said in the room heard on IRC from the new holder
    said: int  # lines said from 3 s before the kill to WATCH_S after
    lost: list[str]
    doubled: list[str]
    lost_in_gap: int


def settle(cluster: Cluster, victim: Demo) -> None:
    """Until every shard is held, every server holds some and the victim the most (see the doc)."""
    deadline = time.monotonic() + 120
    while True:
        if time.monotonic() > deadline:
            raise SystemExit("the shards did not settle with the chat holder holding the most")
        time.sleep(0.5)
        if cluster.all_held() < SHARDS or not all(cluster.shards_of(s) for s in cluster.servers):
            continue
        time.sleep(2.5)  # a handover under way moves a shard or two more
        counts = {s.proc.pid: len(cluster.shards_of(s)) for s in cluster.servers}
        if cluster.all_held() < SHARDS or not all(counts.values()):
            continue
        top = max(cluster.servers, key=lambda s: counts[s.proc.pid])
        if counts[victim.proc.pid] >= counts[top.proc.pid]:
            return
        info(f"  the victim holds {counts[victim.proc.pid]} shards, another {counts[top.proc.pid]}: "
             "that one is replaced")
        top.stop()
        cluster.servers.remove(top)
        cluster.spawn()


def token(cluster: Cluster, server: Demo) -> str:
    made = cli("token", "create", "you", "--data", str(server.data), "--catalog", str(cluster.catalog),
               env=server.env)
    if made.returncode != 0:
        raise SystemExit(made.stderr)
    return made.stdout.strip()


async def once(n: int) -> Run:
    driver = IrcDriver()
    names = [f"c{i:05d}" for i in range(CHECKS)]
    with tempfile.TemporaryDirectory() as tmp, pg_database("opsroom_bench") as url:
        await driver.start(Path(tmp) / "platform")
        extra = {"platforms": [driver.platform_item()],
                 "rooms": [{"name": "ops", "bind": [f"irc:{driver.channel}"]}]}
        cluster = await asyncio.to_thread(start_cluster, Path(tmp), url, servers=1, checks=CHECKS,
                                          interval=INTERVAL, catalog_extra=extra)
        try:
            victim = cluster.servers[0]
            await driver.wait_bot_joined()
            for _ in range(2):
                await asyncio.to_thread(cluster.spawn)
            await asyncio.to_thread(settle, cluster, victim)
            if cluster.chat_holder("irc") is not victim:
                raise SystemExit("the first server does not hold chat:irc")
            await asyncio.sleep(2 * INTERVAL)
            shards = cluster.shards_of(victim)
            mine = [c for c in names if shard_of(c, SHARDS) in shards]
            speaker = next(s for s in cluster.servers if s is not victim)
            bearer = await asyncio.to_thread(token, cluster, speaker)
            alice = driver.clients["alice"]
            joins_before = sum(1 for nick, cmd, _ in alice.lines if cmd == "JOIN" and nick.startswith(BOT_NICK))
            heard_at: dict[str, float] = {}  # line -> when alice first heard it (monotonic)
            said_at: dict[str, float] = {}
            joined_at: list[float] = []
            stop = asyncio.Event()

            heard_count: dict[str, int] = {}
            seen_before = len(alice.lines)

            async def watch() -> None:
                seen = seen_before
                while not stop.is_set():
                    now = time.monotonic()
                    lines = alice.lines
                    for nick, cmd, params in lines[seen:]:
                        if cmd == "JOIN" and nick.startswith(BOT_NICK):
                            joined_at.append(now)
                        elif cmd == "PRIVMSG" and nick.startswith(BOT_NICK) and len(params) >= 2:
                            text = params[1]
                            if "you (web): say-" in text:
                                key = text.split("you (web): ", 1)[1].split()[0]
                                heard_at.setdefault(key, now)
                                heard_count[key] = heard_count.get(key, 0) + 1
                    seen = len(lines)
                    await asyncio.sleep(0.01)

            async def talk(until: float) -> None:
                async with httpx.AsyncClient(base_url=speaker.base, timeout=10,
                                             headers={"Authorization": f"Bearer {bearer}"}) as client:
                    k = 0
                    while time.monotonic() < until:
                        key = f"say-{n}-{k:03d}"
                        said_at[key] = time.monotonic()
                        got = await client.post("/api/v1/rooms/ops/messages", json={"text": key})
                        if got.status_code != 201:
                            raise SystemExit(f"saying a line failed: {got.status_code} {got.text}")
                        k += 1
                        await asyncio.sleep(max(0.0, said_at[key] + SAY_EVERY_S - time.monotonic()))

            watcher = asyncio.create_task(watch())
            talking = asyncio.create_task(talk(time.monotonic() + 3 + WATCH_S - 4))
            await asyncio.sleep(3)
            start = time.time() - 2 * INTERVAL
            killed_wall, killed = time.time(), time.monotonic()
            await asyncio.to_thread(kill9, victim)
            await talking
            await asyncio.sleep(killed + WATCH_S - time.monotonic())
            stop.set()
            await watcher
            end = time.time()
            await asyncio.sleep(1.5)
            rows = await asyncio.to_thread(cluster.results, since=start - INTERVAL)
            new_holder = cluster.chat_holder("irc")
        finally:
            await asyncio.to_thread(cluster.stop)
            await driver.stop()
    first: dict[str, float] = {}
    for check, at in rows:
        if at > killed_wall and check not in first:
            first[check] = at
    missing = [c for c in mine if c not in first]
    if missing:
        raise SystemExit(f"FAIL: {len(missing)} of the killed server's checks never ran again within {WATCH_S} s")
    if new_holder is None or len(joined_at) < 1 or joins_before < 1:
        raise SystemExit(f"FAIL: no other server's bot came back to the channel within {WATCH_S} s")
    after = [heard_at[k] - killed for k in heard_at if heard_at[k] > joined_at[0] - 0.05]
    if not after:
        raise SystemExit("FAIL: nothing said in the room reached IRC after the takeover")
    gap = [k for k, t in said_at.items() if killed <= t < joined_at[0]]
    twice, _missed, _ = violations(rows, names, INTERVAL, start, end)
    delays = sorted(first[c] - killed_wall for c in mine)
    return Run(shards=len(shards), checks_p50=delays[len(delays) // 2], checks_all=delays[-1], twice=twice,
               joined=joined_at[0] - killed, heard=min(after), said=len(said_at),
               lost=[k for k in said_at if k not in heard_at], doubled=[k for k, c in heard_count.items() if c > 1],
               lost_in_gap=sum(1 for k in gap if k not in heard_at))


async def run_all(runs: int) -> list[Run]:
    out = []
    for n in range(runs):
        run = await once(n)
        info(f"killed the server holding {run.shards} of {SHARDS} shards (the most) and chat:irc: "
             f"its checks ran again after p50 {run.checks_p50:.2f} s, all after {run.checks_all:.2f} s "
             f"(runs twice in one interval: {run.twice}); IRC: another server's bot joined after "
             f"{run.joined:.2f} s, a line said in the room was heard after {run.heard:.2f} s; "
             f"{run.said} lines said, lost {len(run.lost)} (said in the gap and lost: {run.lost_in_gap}), "
             f"heard twice {len(run.doubled)}")
        if run.lost or run.doubled:
            info(f"  lost: {run.lost[:8]} twice: {run.doubled[:8]}")
        out.append(run)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one run (make bench)")
    parser.add_argument("--runs", type=int, default=None)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # cleanup (servers, databases) on SIGTERM too
    runs = asyncio.run(run_all(args.runs or (1 if args.quick else 3)))
    checks, chat = max(x.checks_all for x in runs), max(x.heard for x in runs)
    worst = max(checks, chat)
    info(f"failover, all checks of the killed server running again: {checks:.2f} s; its chat connection back "
         f"and a line said in the room heard on IRC: {chat:.2f} s; both: {worst:.2f} s (target <= {TARGET_S:g} s)")
    emit({"figure": "failover after kill -9 of the server holding the most shards and the chat connection: "
                    "seconds until all its checks run again and a room line reaches IRC through another server",
          "value": r(worst, 2), "unit": "s", "target": TARGET_S, "baseline": None,
          "checks_s": [r(x.checks_all, 2) for x in runs], "checks_p50_s": [r(x.checks_p50, 2) for x in runs],
          "chat_joined_s": [r(x.joined, 2) for x in runs], "chat_heard_s": [r(x.heard, 2) for x in runs],
          "lines_lost": sum(len(x.lost) for x in runs), "lines_twice": sum(len(x.doubled) for x in runs),
          "runs_twice_in_one_interval": sum(x.twice for x in runs)})
    if worst > TARGET_S:
        sys.exit(1)


if __name__ == "__main__":
    main()
