"""Failover: kill -9 the server holding the most shards and the chat connection; seconds until all
its checks run again and its chat connection is back (issue 14: <= 10 s with default heartbeats).

    .venv/bin/python bench/failover.py --quick    # one run, ~60 s

Three `opsroom serve` processes on one PostgreSQL with the default heartbeats (every 1 s, dead
after 3 s), 2,000 tcp checks every 2 s, and a room bound to a channel of a real ngircd on loopback
(tests/chat/servers/ngircd.py; `make system-deps` installs it) where a person's IRC client sits.
Once the shards settled, the lease `chat:irc` is moved through the store to the server holding the
most shards (its holder's renewal finds it gone and disconnects, that server's next pass connects),
so one kill times both. People keep talking in the room on a surviving server
(through its API) before, during and after the kill. Figures, from the kill:

- checks: over the victim's checks, the latest first run on another server;
- chat: the first line said in the room that the IRC channel hears from another server's bot
  (the bot joined: its JOIN, reported beside it);
- whether every line said (before, in the gap, after) reached IRC, and once (a person says a line
  every 2.5 s on a surviving server, from 5 s before the kill to 9 s after).

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
SAY_EVERY_S = 2.5  # a line and the bot's reply: 0.8 messages/s, below IRC's pace (1/s, burst 4)
TALK_BEFORE_S, TALK_AFTER_S = 5.0, 9.0  # people talk from this long before the kill to this long after
WATCH_S = 15.0  # after the kill


@dataclass
class Run:
    shards: int
    checks_p50: float
    checks_all: float
    twice: int
    joined: float  # the new holder's bot in the channel
    heard: float  # the first line said in the room heard on IRC from the new holder
    expired: float  # the victim's chat lease (by the store's clock, on this host)
    taken: float  # ... and the new holder's take
    said: int  # lines said from TALK_BEFORE_S before the kill to TALK_AFTER_S after
    lost: list[str]  # not heard on IRC by WATCH_S after the kill
    doubled: list[str]
    lost_in_gap: int


def settle(cluster: Cluster) -> Demo:
    """Until every shard is held and every server holds some, twice in a row: the server holding
    the most."""
    deadline = time.monotonic() + 60
    last: dict[int, int] = {}
    while True:
        if time.monotonic() > deadline:
            raise SystemExit("the shards did not settle among the servers")
        time.sleep(1.0)
        counts = {s.proc.pid: len(cluster.shards_of(s)) for s in cluster.servers}
        if cluster.all_held() == SHARDS and all(counts.values()) and counts == last:
            return max(cluster.servers, key=lambda s: counts[s.proc.pid])
        last = counts


def hand_chat_to(cluster: Cluster, server: Demo) -> None:
    """Move the lease chat:irc to `server` through the store: its holder's next renewal finds it
    gone and disconnects, `server`'s next pass finds it its own and connects (as after a takeover)."""
    node = cluster.query("SELECT node_id FROM cluster_nodes WHERE pid = $1 AND stopped_at IS NULL "
                         "ORDER BY heartbeat_at DESC LIMIT 1", server.proc.pid)[0][0]
    cluster.query("UPDATE cluster_leases SET holder = $1, epoch = epoch + 1 WHERE name = 'chat:irc'", node)


def bot_joins(lines: list[tuple[str, str, list[str]]]) -> int:
    return sum(1 for nick, cmd, _ in lines if cmd == "JOIN" and nick.startswith(BOT_NICK))


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
        cluster = await asyncio.to_thread(start_cluster, Path(tmp), url, servers=3, checks=CHECKS,
                                          interval=INTERVAL, catalog_extra=extra)
        try:
            await driver.wait_bot_joined()
            victim = await asyncio.to_thread(settle, cluster)
            alice = driver.clients["alice"]
            if cluster.chat_holder("irc") is not victim:
                joins = bot_joins(alice.lines)
                await asyncio.to_thread(hand_chat_to, cluster, victim)
                async with asyncio.timeout(15):
                    while bot_joins(alice.lines) <= joins:
                        await asyncio.sleep(0.05)
            if cluster.chat_holder("irc") is not victim:
                raise SystemExit("the server holding the most shards does not hold chat:irc")
            await asyncio.sleep(2 * INTERVAL)
            shards = cluster.shards_of(victim)
            mine = [c for c in names if shard_of(c, SHARDS) in shards]
            speaker = next(s for s in cluster.servers if s is not victim)
            bearer = await asyncio.to_thread(token, cluster, speaker)
            joins_before = bot_joins(alice.lines)
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
            talking = asyncio.create_task(talk(time.monotonic() + TALK_BEFORE_S + TALK_AFTER_S))
            await asyncio.sleep(TALK_BEFORE_S)
            start = time.time() - 2 * INTERVAL
            killed_wall, killed = time.time(), time.monotonic()
            await asyncio.to_thread(kill9, victim)
            lease = await asyncio.to_thread(cluster.query, "SELECT expires_at FROM cluster_leases "
                                            "WHERE name = 'chat:irc'")
            await talking
            await asyncio.sleep(killed + WATCH_S - time.monotonic())
            stop.set()
            await watcher
            end = time.time()
            await asyncio.sleep(1.5)
            rows = await asyncio.to_thread(cluster.results, since=start - INTERVAL)
            new_holder = cluster.chat_holder("irc")
            taken = await asyncio.to_thread(cluster.query, "SELECT taken_at FROM cluster_leases "
                                            "WHERE name = 'chat:irc'")
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
               expired=float(lease[0][0]) - killed_wall, taken=float(taken[0][0]) - killed_wall,
               lost=[k for k in said_at if k not in heard_at], doubled=[k for k, c in heard_count.items() if c > 1],
               lost_in_gap=sum(1 for k in gap if k not in heard_at))


async def run_all(runs: int) -> list[Run]:
    out = []
    for n in range(runs):
        run = await once(n)
        info(f"killed the server holding {run.shards} of {SHARDS} shards (the most) and chat:irc: "
             f"its checks ran again after p50 {run.checks_p50:.2f} s, all after {run.checks_all:.2f} s "
             f"(runs twice in one interval: {run.twice}); chat:irc expired after {run.expired:.2f} s, taken after "
             f"{run.taken:.2f} s; IRC: another server's bot joined after "
             f"{run.joined:.2f} s, a line said in the room was heard after {run.heard:.2f} s; "
             f"{run.said} lines said, not heard {len(run.lost)} (of those said in the gap: {run.lost_in_gap}), "
             f"heard twice {len(run.doubled)}")
        if run.lost or run.doubled:
            info(f"  not heard: {run.lost[:8]} twice: {run.doubled[:8]}")
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
