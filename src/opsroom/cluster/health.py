"""A system's health when its checks run on several servers: judged in the store, announced once.

One server knows at once only the checks it runs. Judged from its own memory, a system whose
checks are spread over two servers would be announced unhealthy by both (each sees its own check
fail and thinks the system was healthy), and "healthy again" by the first whose check recovers
while the other's still fails. So on PostgreSQL a change is judged in one transaction that
locks the system's `system_health` row (servers judging the same system take turns), writes
this server's states of the system's checks, reads every check's state from `check_states`, and
flips the row only if the health changed: the server whose transaction flips it announces it.
Judging runs off the check's path, at most one at a time per system (changes meanwhile are
judged once more after it).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from opsroom.checks.models import CheckStateRow
from opsroom.checks.results import _SAVE_STATES
from opsroom.cluster.models import SystemHealthRow
from opsroom.eventlog.log import append
from opsroom.events import SystemHealthChanged
from opsroom.runtime import Runtime

if TYPE_CHECKING:
    from opsroom.checks.monitor import Monitor

log = structlog.get_logger(__name__)
JUDGE_GAP_S = 0.2
JUDGE_TRIES = 8  # ~15 s of backoff before a judgement is given up (the next change judges again)


class SharedHealth:
    def __init__(self, rt: Runtime, monitor: Monitor) -> None:
        self.rt, self.monitor = rt, monitor
        self._busy: dict[str, str | None] = {}  # system -> correlation of a change that came meanwhile
        self._tasks: set[asyncio.Task[None]] = set()
        self.judged = 0
        self._bad: dict[str, bool] = {}  # check -> in a hard problem as of its last change here

    def changed(self, system: str, correlation: str) -> None:
        """A check of `system` changed here: judge the system's health (soon, off this path) if the
        check went into or out of a hard problem, the only changes that can flip it."""
        check = correlation.split(":", 2)[1] if correlation.startswith("check:") else None
        if check is not None:
            st = self.monitor.status.get(check)
            bad = st is not None and st.state != "OK" and st.state_type == "hard"
            # Unknown here before (a restart, a shard taken over): judged. Still bad and no longer
            # flapping: judged too (a notice flapping held back, or a change between problems).
            if self._bad.get(check) == bad and not (bad and st is not None and not st.flapping):
                return
            self._bad[check] = bad
        if system in self._busy:
            self._busy[system] = correlation
            return
        self._busy[system] = None
        task = asyncio.get_running_loop().create_task(self._judge_until_settled(system, correlation))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the judgements under way (tests, stop)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _judge_until_settled(self, system: str, correlation: str) -> None:
        try:
            while True:
                for attempt in range(JUDGE_TRIES):
                    try:
                        await self._judge(system, correlation)
                        break
                    except Exception:
                        # Judged again, not dropped: a judgement lost to a busy or restarting store
                        # left the system's row (and its notice) wrong until its next change.
                        log.exception("judging a system's health failed; trying again", system=system,
                                      attempt=attempt + 1)
                        await asyncio.sleep(min(5.0, 0.2 * 2 ** attempt))
                again = self._busy.get(system)
                if again is None:
                    return
                self._busy[system] = None
                correlation = again
                await asyncio.sleep(JUDGE_GAP_S)  # a storm of changes is judged a few times, not per change
        finally:
            self._busy.pop(system, None)

    async def _save(self, states: list[dict[str, Any]]) -> None:
        """Store this server's states of a system's checks; the result writer may be storing some of
        the same rows in another order (a deadlock PostgreSQL breaks): tried again then."""
        def body(s: Session) -> None:
            s.execute(_SAVE_STATES["postgresql"], states)

        for attempt in range(5):
            try:
                await self.rt.transact(body)
                return
            except DBAPIError as exc:
                if "deadlock" not in str(exc).lower() or attempt == 4:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))

    async def _judge(self, system: str, correlation: str) -> None:
        mon, cat = self.monitor, self.rt.catalog
        if system not in cat.systems:
            return
        checks = list(cat.checks_of_system(system))
        # This server's own checks of the system, as it knows them now (the writer stores them
        # within half a second; the judgement must not read an older row of them).
        # Only those the result writer has not stored yet (after its drain under way, if any).
        results = mon.results
        if results is not None and results._drain is not None:
            await asyncio.wait([results._drain])
        unstored = results.dirty if results is not None else set(checks)
        mine = [{"check": c, **mon._state_fields(c)} for c in sorted(checks)
                if c in unstored and c in mon.status and (mon.holds is None or mon.holds(c))]
        if mine:
            # Committed before the judgement reads: of two servers judging at once, the one that
            # reads second (they take turns on the system's row) then sees both servers' states.
            await self._save(mine)

        def body(s: Session) -> tuple[bool, SystemHealthChanged | None]:
            now = time.time()
            s.execute(pg_insert(SystemHealthRow).values(system=system, healthy=True, changed_at=now)
                      .on_conflict_do_nothing(index_elements=[SystemHealthRow.system]))
            was = bool(s.execute(select(SystemHealthRow.healthy).where(SystemHealthRow.system == system)
                                 .with_for_update()).scalar_one())
            t = CheckStateRow.__table__.c
            rows = s.execute(select(t.check, t.state, t.since, t.down, t.last_output, t.flapping).where(
                t.check.in_(checks), t.state != "OK", t.state_type == "hard")).all()
            failing = [{"check": r.check, "service": cat.checks[r.check].service, "state": r.state, "since": r.since,
                        "down": bool(r.down), "output": r.last_output or "", "flapping": bool(r.flapping)}
                       for r in rows if r.check in cat.checks]
            healthy = not failing
            # A flapping check holds back notices, as on one server (checks/monitor.py).
            if healthy == was or (failing and all(f["flapping"] for f in failing)):
                return was, None
            s.execute(update(SystemHealthRow).where(SystemHealthRow.system == system)
                      .values(healthy=healthy, changed_at=now))
            failing = sorted(failing, key=lambda f: f["check"])
            sysobj = cat.systems[system]
            event = SystemHealthChanged(
                system=system, title=sysobj.display, environment=sysobj.environment,
                protected=cat.is_protected(sysobj.environment), healthy=healthy, failing=failing,
                correlation_id=correlation, source=f"system:{system}")
            # In the transaction that flips the row: the announcer reads it from the log, once,
            # even if this server dies right after the commit.
            append(s, event, origin=self.rt.node_id)
            return healthy, event

        healthy, event = await self.rt.transact(body)
        self.judged += 1
        mon.system_healthy[system] = healthy
        if event is not None:
            self.rt.bus.publish(event)
