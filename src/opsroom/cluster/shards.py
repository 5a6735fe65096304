"""Checks shared out among the live servers on PostgreSQL: shards held as leases.

A check belongs to one of `cluster_shards` shards by a stable hash of its name. Rendezvous
hashing over the live servers (membership.servers) ranks the servers for each shard; the first
is its owner. A server holds a shard as the lease `shard:<n>` (ttl = the dead window) and runs
only the checks of the shards it holds; it renews all of them in one statement per heartbeat.

- Owner, shard free or expired: take it. A shard held by another live holder: the owner says so
  with the lease `want:shard:<n>`, and the holder gives the shard back (after it stopped
  scheduling its checks and their runs ended) on its next heartbeat. A holder gives a shard
  back only to an owner that asks: a node row with a fresh heartbeat and no process behind it
  (forged, or a server hung) never asks, so it costs nothing to the shards that are held.
- Nobody takes a free shard for `ttl` seconds: the server ranked next takes it (after r x ttl
  for the one ranked r), so a shard whose owner never comes is run by the others after a delay.
- Renew failed (a pause past the ttl, the store away): the shard's checks stop at once; and a
  check is never run past the lease's local expiry, measured from before the renewal was sent
  (Monitor.holds), so a server waking from a pause does not run what its successor runs.
- Taking over: the new holder runs each check at its first slot (fixed slots of the wall clock,
  checks/scheduler.py) at or after the moment the last holder let go (release time, or its
  lease's expiry), and after the interval of the check's stored last run: never twice in one
  interval across a handover.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from sqlalchemy import Integer, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from opsroom.checks.models import CheckStateRow
from opsroom.checks.monitor import Monitor
from opsroom.cluster.clock import db_now
from opsroom.cluster.leases import Holding, Leases
from opsroom.cluster.membership import Membership
from opsroom.cluster.models import LeaseRow, SystemHealthRow
from opsroom.runtime import Runtime
from opsroom.ticks import ticks

log = structlog.get_logger(__name__)

PREFIX = "shard:"
WANT = "want:shard:"
RELEASE_WAIT_S = 5.0  # a shard given back waits this long at most for its checks' runs to end
# The states of checks other servers run are read from the store this often, so status views on
# every server (API, web, chat) show them; a state change reaches check_states within 0.5 s.
OTHERS_EVERY_S = 5.0


def shard_of(name: str, count: int) -> int:
    """The shard of a check: a stable hash of its name (the same on every server and version)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") % count


def ranking(shard: int, servers: Iterable[str]) -> list[str]:
    """Rendezvous hashing: the servers in the order they should hold `shard` (first: its owner).
    A server joining or leaving moves only the shards it ranks first for: ~1/n of them."""
    def score(server: str) -> bytes:
        return hashlib.blake2b(f"{shard}|{server}".encode(), digest_size=8).digest()

    return sorted(servers, key=score, reverse=True)


def assignment(count: int, servers: list[str]) -> dict[int, str]:
    """Each shard's owner among `servers`."""
    return {n: ranking(n, servers)[0] for n in range(count)} if servers else {}


@dataclass
class Held:
    epoch: int
    valid_until: float  # time.monotonic() past which this server must not run the shard's checks


class Shards:
    """This server's shards: takes, renews and gives back `shard:<n>` leases, and hands their
    checks to the monitor."""

    def __init__(self, rt: Runtime, membership: Membership, monitor: Monitor, *, count: int,
                 ttl: float, every: float) -> None:
        self.rt, self.membership, self.monitor = rt, membership, monitor
        self.count, self.ttl, self.every = count, ttl, every
        self.me = rt.node_id
        self.held: dict[int, Held] = {}
        self.wants: set[int] = set()  # shards this server owns but another holds: asked back
        self._checks: dict[int, list[str]] = {}
        self._shard: dict[str, int] = {}
        self._indexed: object = None  # the catalog indexed (a reload replaces the catalog whole)
        self._leases = Leases(rt)
        self._dialect = rt.engine.dialect.name
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()  # one pass at a time (the loop, a catalog reload, stop)
        self.passes = 0
        self._others_at = 0.0
        self.taken = self.lost = self.released = 0  # shards, since start (metrics, tests)

    # --- what a check belongs to ---------------------------------------

    def index(self) -> None:
        """Group the catalog's checks by shard (start, and after a catalog reload)."""
        checks: dict[int, list[str]] = defaultdict(list)
        shard: dict[str, int] = {}
        for name in self.rt.catalog.checks:
            n = shard_of(name, self.count)
            checks[n].append(name)
            shard[name] = n
        self._checks, self._shard = dict(checks), shard
        self._indexed = self.rt.catalog

    def holds(self, check: str) -> bool:
        """Whether this server may run `check` now: its shard is held and its lease not lapsed here."""
        n = self._shard.get(check)
        if n is None:
            n = shard_of(check, self.count)
        held = self.held.get(n)
        return held is not None and time.monotonic() < held.valid_until

    def scheduled(self) -> int:
        return len(self.monitor.scheduler)

    # --- lifecycle ------------------------------------------------------

    async def start(self) -> None:
        self.index()
        self.monitor.holds = self.holds
        await self._create_rows()
        await self.rebalance()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="opsroom-shards")

    async def stop(self) -> None:
        """Stop scheduling, let runs end, store their results, give every shard back at once."""
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        async with self._lock:
            try:
                await self._give_back(set(self.held))
                await self._leases.release([f"{WANT}{n}" for n in self.wants])
            except Exception:
                log.warning("could not give the shards back; the others take them when they expire")
            self.held.clear()
            self.wants.clear()

    async def _loop(self) -> None:
        async for _ in ticks(self._stopping, self.every):
            try:
                await self.rebalance()
            except Exception as exc:  # the store is away: renewals fail, shards lapse, checks stop
                log.warning("shard pass failed", error=type(exc).__name__)
                self._drop_lapsed()

    def _drop_lapsed(self) -> None:
        now = time.monotonic()
        lapsed = {n for n, h in self.held.items() if now >= h.valid_until}
        if lapsed:
            self._lose(lapsed)

    def _lose(self, shards: set[int]) -> None:
        for n in shards:
            self.held.pop(n, None)
            self.monitor.give_up(self._checks.get(n, ()))
        self.lost += len(shards)
        log.warning("shards lost (lease not renewed in time): their checks stop here", shards=sorted(shards))

    # --- one pass -------------------------------------------------------

    async def rebalance(self) -> None:
        """Renew what is held, give back what its owner asks for, take what is owned or orphaned."""
        async with self._lock:
            self.passes += 1
            if self._indexed is not self.rt.catalog:
                self.index()
            servers = self.membership.servers or [self.me]
            if self.me not in servers:
                servers = sorted([*servers, self.me])
            # 1. Renew, in one statement; a shard not renewed stops at once.
            sent = time.monotonic()
            if self.held:
                still = await self._leases.renew([f"{PREFIX}{n}" for n in self.held], ttl=self.ttl)
                gone = {n for n in self.held if f"{PREFIX}{n}" not in still}
                if gone:
                    self._lose(gone)
                for n in self.held:
                    self.held[n].valid_until = sent + self.ttl
            leases = {h.name: h for h in await self._leases.holdings("")
                      if h.name.startswith((PREFIX, WANT))}
            # 2. Give back what another live server owns and asks for.
            asked = {n for n in self.held
                     if (w := leases.get(f"{WANT}{n}")) is not None and w.live and w.holder != self.me
                     and w.holder == ranking(n, servers)[0]}
            if asked:
                await self._give_back(asked)
            # 3. Take what this server owns, or what it is next for and nobody took for long enough.
            now_db = await self._db_now()
            take: list[int] = []
            want: set[int] = set()
            for n in range(self.count):
                if n in self.held:
                    continue
                order = ranking(n, servers)
                rank = order.index(self.me)
                lease = leases.get(f"{PREFIX}{n}")
                free_since = None if lease is None or lease.live else lease.expires_at
                if rank == 0:
                    if free_since is not None:
                        take.append(n)
                    elif lease is not None:
                        want.add(n)  # held by another: ask for it
                elif free_since is not None and now_db - free_since >= rank * self.ttl:
                    take.append(n)
            if take:
                await self._take(take)
            want -= set(self.held)
            await self._want(want)
        if time.monotonic() - self._others_at >= OTHERS_EVERY_S:
            self._others_at = time.monotonic()
            await self._read_others()

    async def _read_others(self) -> None:
        """Refresh the monitor's view of the checks other servers run (state, soft/hard, output)."""
        table = CheckStateRow.__table__
        async with self.rt.read() as s:
            rows = (await s.execute(select(table))).all()
        mon = self.monitor
        for row in rows:
            if self._shard.get(row.check) in self.held:
                continue  # this server's own (held, even if its lease lapsed here a moment)
            st = mon.status.get(row.check)
            # Plain column tuples, and a status rebuilt only for a row that changed: 20,000 ORM
            # objects every few seconds would stall the event loop the checks run on.
            if (st is not None and st.state == row.state and st.state_type == row.state_type
                    and st.attempt == row.attempt and st.since == row.since and st.flapping == row.flapping):
                continue
            if not self.holds(row.check):
                mon._restore(row)
        health = SystemHealthRow.__table__
        async with self.rt.read() as s:
            for system, healthy in (await s.execute(select(health.c.system, health.c.healthy))).all():
                if system in mon.system_healthy:
                    mon.system_healthy[system] = bool(healthy)

    async def _db_now(self) -> float:
        def body(s: Session) -> float:
            return float(s.execute(select(db_now(self._dialect))).scalar_one())

        return await self.rt.transact(body)

    async def _want(self, want: set[int]) -> None:
        drop = self.wants - want
        if drop:
            await self._leases.release([f"{WANT}{n}" for n in drop])
        for n in sorted(want):
            await self._leases.take(f"{WANT}{n}", ttl=self.ttl)
        self.wants = want

    async def _create_rows(self) -> None:
        """Every shard's lease row exists, free since now: a shard nobody takes is adopted after
        the ttl (an absent row has no 'free since')."""
        def body(s: Session) -> None:
            now = s.execute(select(db_now(self._dialect))).scalar_one()
            ins = (pg_insert if self._dialect == "postgresql" else sqlite_insert)(LeaseRow)
            s.execute(ins.on_conflict_do_nothing(index_elements=[LeaseRow.name]),
                      [{"name": f"{PREFIX}{n}", "holder": None, "expires_at": now, "epoch": 0, "taken_at": now}
                       for n in range(self.count)])

        await self.rt.transact(body)

    async def _take(self, shards: list[int]) -> None:
        """Take free or expired shards in one transaction; schedule the checks of those won."""
        names = [f"{PREFIX}{n}" for n in shards]
        me, ttl = self.me, self.ttl

        def body(s: Session) -> list[tuple[str, int, float]]:
            now = float(s.execute(select(db_now(self._dialect))).scalar_one())
            # Locked first (skip those another server is taking now), to read when each was let go.
            free = {r[0]: float(r[1]) for r in s.execute(
                select(LeaseRow.name, LeaseRow.expires_at)
                .where(LeaseRow.name.in_(names), or_(LeaseRow.holder.is_(None), LeaseRow.expires_at < now))
                .with_for_update(skip_locked=True)).all()}
            if not free:
                return []
            rows = s.execute(
                update(LeaseRow)
                .where(LeaseRow.name.in_(list(free)),
                       or_(LeaseRow.holder.is_(None), LeaseRow.expires_at < now))
                .values(holder=me, expires_at=now + ttl, taken_at=now,
                        epoch=LeaseRow.epoch + (LeaseRow.holder.is_distinct_from(me)).cast(Integer))
                .returning(LeaseRow.name, LeaseRow.epoch)).all()
            return [(r[0], int(r[1]), free[r[0]]) for r in rows]

        sent = time.monotonic()
        got = await self.rt.transact(body)
        not_before: dict[str, float] = {}
        names_now: list[str] = []
        for name, epoch, let_go in got:
            n = int(name.removeprefix(PREFIX))
            self.held[n] = Held(epoch, sent + self.ttl)
            for check in self._checks.get(n, ()):
                not_before[check] = let_go
                names_now.append(check)
        self.taken += len(got)
        if names_now:
            await self.monitor.take_over(names_now, not_before=not_before)
        if got:
            log.info("shards taken", shards=sorted(int(g[0].removeprefix(PREFIX)) for g in got),
                     checks=len(names_now))

    async def _give_back(self, shards: set[int]) -> None:
        """Stop scheduling the shards' checks, wait for their runs, store results, then release."""
        shards &= set(self.held)
        if not shards:
            return
        checks = [c for n in shards for c in self._checks.get(n, ())]
        self.monitor.give_up(checks)
        deadline = time.monotonic() + RELEASE_WAIT_S
        while self.monitor.scheduler.busy(checks) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        try:
            await self.monitor.flush()
        except Exception as exc:  # the writer keeps them and tries again; the shard goes back anyway
            log.warning("storing results before giving shards back failed", error=type(exc).__name__)
        names = [f"{PREFIX}{n}" for n in shards]
        me = self.me

        def body(s: Session) -> None:
            # Free since now (not 0): the next holder starts at the first slot after this moment.
            s.execute(update(LeaseRow).where(LeaseRow.name.in_(names), LeaseRow.holder == me)
                      .values(holder=None, expires_at=db_now(self._dialect)))

        for n in shards:
            self.held.pop(n, None)
        await self.rt.transact(body)
        self.released += len(shards)
        log.info("shards given back", shards=sorted(shards))

    # --- what it holds, for `cluster status` and /metrics --------------

    def info(self) -> dict[str, object]:
        lag = self.monitor.scheduler.lag_percentiles()
        return {"shards": sorted(self.held), "checks_scheduled": self.scheduled(), "lag_p99": round(lag["p99"], 4)}


def holders(leases: list[Holding]) -> dict[str, list[str]]:
    """Live lease names by holder."""
    out: dict[str, list[str]] = defaultdict(list)
    for h in leases:
        if h.live and h.holder is not None:
            out[h.holder].append(h.name)
    return dict(out)
