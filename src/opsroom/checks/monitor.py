"""The monitor: runs checks, applies the state machine, stores results, emits events.

Results and states are stored in the background by a ResultWriter (checks/results.py)
so thousands of checks per second never wait on the database; state changes are
published at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import select

from opsroom.catalog.catalog import Catalog
from opsroom.catalog.schema import STATES
from opsroom.checks.models import CheckStateRow
from opsroom.checks.probes import ProbeContext, ProbeResult, get_probe
from opsroom.checks.results import ResultWriter
from opsroom.checks.scheduler import Scheduler
from opsroom.domain.check_state import CheckStatus, apply, initial
from opsroom.events import CheckFlapping, CheckStateChanged, Event, SystemHealthChanged
from opsroom.runtime import Runtime
from opsroom.secrets.masking import mask

if TYPE_CHECKING:
    from opsroom.cluster.health import SharedHealth

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Last:
    at: float
    output: str
    latency_ms: float
    down: bool
    perfdata: dict[str, float] = field(default_factory=dict)


class Monitor:
    """With `shared` (several servers on PostgreSQL), the scheduler starts empty and the shards
    this server holds (cluster/shards.py) hand it their checks through take_over / give_up."""

    def __init__(self, rt: Runtime, *, concurrency: int = 500, persist: bool = True, shared: bool = False) -> None:
        self.rt = rt
        self.ctx = ProbeContext()
        self.ctx.hosts = lambda: rt.catalog.hosts
        self.status: dict[str, CheckStatus] = {}
        self.last: dict[str, Last] = {}
        self.system_healthy: dict[str, bool] = {}
        self.scheduler = Scheduler(self._scheduled, concurrency=concurrency, wall=time.time if shared else None)
        self.shared = shared
        # Shared: whether this server may run a check now (its shard's lease is held and not past
        # its local expiry: a server paused past its lease must not run a check its successor runs).
        self.holds: Callable[[str], bool] | None = None
        # Shared: a system's health is judged in the store, across servers (cluster/health.py).
        self.shared_health: SharedHealth | None = None
        self.results = ResultWriter(rt, self._state_fields) if persist else None
        self._inflight: dict[str, list[asyncio.Future[ProbeResult]]] = {}
        self.checks_run = 0
        self.fenced = 0  # dispatched runs not made because the shard's lease had lapsed here
        self._scheduling = False  # start(schedule=True): a reload schedules the checks it adds

    # --- lifecycle ------------------------------------------------------

    async def load(self) -> None:
        """Restore soft/hard state from the store so a restart does not re-announce."""
        async with self.rt.read() as s:
            for row in (await s.execute(select(CheckStateRow))).scalars():
                self._restore(row)
        for system in self.rt.catalog.systems:
            self.system_healthy[system] = self._compute_health(system)

    def _restore(self, row: Any) -> None:
        """A check's status from its check_states row (an ORM row or a Core row of its columns)."""
        if row.check not in self.rt.catalog.checks:
            return
        self.status[row.check] = CheckStatus(
            state=row.state, state_type=row.state_type, attempt=row.attempt, since=row.since,
            last_change_hard=row.state_type == "hard", history=tuple(row.history or ()),
            flapping=row.flapping, change_ratio=0.0)
        if row.last_check is not None:
            self.last[row.check] = Last(row.last_check, row.last_output, row.last_latency_ms or 0.0, row.down)

    def start(self, *, schedule: bool = True) -> None:
        self._scheduling = schedule
        if schedule:
            for name, check in ([] if self.shared else self.rt.catalog.checks.items()):
                if check.enabled:
                    self.scheduler.add(name, self._interval(name))
            self.scheduler.start()
        if self.results is not None:
            self.results.start()

    def catalog_changed(self, old: Catalog, *, touched: Iterable[str]) -> None:
        """A reload put a new catalog in place; `touched`: the checks it added, removed or changed.
        Scheduled: the added ones; dropped: the removed or disabled ones; a changed interval moves
        the cadence, any other change takes effect at the next run. States are kept, as the store
        keeps them: a check put back finds its state, as after a restart. Then each system's health
        is judged again, announced when it changed (a failing check removed makes it healthy)."""
        new = self.rt.catalog
        if self._scheduling:
            for name in touched:
                check = new.checks.get(name)
                if check is None or not check.enabled or (self.holds is not None and not self.holds(name)):
                    self.scheduler.remove(name)
                else:
                    self.scheduler.add(name, self._interval(name))  # add() reschedules a known name
        for system in old.systems.keys() - new.systems.keys():
            self.system_healthy.pop(system, None)
        for system in new.systems:
            if system not in self.system_healthy:
                self.system_healthy[system] = self._compute_health(system)
            else:
                self._update_system(system, f"catalog:{self.rt.catalog_hash[:12]}")

    async def stop(self) -> None:
        await self.scheduler.stop()
        if self.results is not None:
            await self.results.stop()
        await self.ctx.close()

    # --- running checks -------------------------------------------------

    def _interval(self, name: str) -> float:
        check = self.rt.catalog.checks[name]
        st = self.status.get(name)
        if st is not None and st.state != "OK" and st.state_type == "soft" and check.retry_interval:
            return check.retry_interval
        return check.interval

    async def _scheduled(self, name: str) -> None:
        if name not in self.rt.catalog.checks:  # a reload removed it after it was dispatched
            return
        if self.holds is not None and not self.holds(name):
            self.fenced += 1  # its shard's lease lapsed here: the next holder runs it
            return
        await self.run_check(name)

    # --- shared checks (cluster/shards.py) ------------------------------

    async def take_over(self, names: Iterable[str], *, not_before: dict[str, float]) -> int:
        """Schedule checks of shards this server just took: their state comes from the store (the
        last holder's), and each runs at its first slot at or after `not_before[name]` (when the
        last holder let go) and after the interval of its stored last run. How many were scheduled."""
        wanted = [n for n in names if n in self.rt.catalog.checks and self.rt.catalog.checks[n].enabled]
        rows: list[CheckStateRow] = []
        async with self.rt.read() as s:
            for i in range(0, len(wanted), 1000):
                rows.extend((await s.execute(select(CheckStateRow).where(
                    CheckStateRow.check.in_(wanted[i:i + 1000])))).scalars())
        for row in rows:
            self._restore(row)
        if not self._scheduling:
            return 0
        for name in wanted:
            interval = self._interval(name)
            after = not_before.get(name, 0.0)
            last = self.last.get(name)
            if last is not None:
                # Never in the interval of its last stored run: from the start of the next one.
                after = max(after, self.scheduler.slot(name, interval, last.at) + interval)
            self.scheduler.add(name, interval, not_before=after)
        return len(wanted)

    def give_up(self, names: Iterable[str]) -> None:
        """Stop scheduling checks of shards this server no longer holds (runs under way finish)."""
        self.scheduler.remove_many(names)

    async def run_check(self, name: str) -> ProbeResult:
        """Run one check now. Concurrent callers for the same check share one probe."""
        waiters = self._inflight.get(name)
        if waiters is not None:
            mine: asyncio.Future[ProbeResult] = asyncio.get_running_loop().create_future()
            waiters.append(mine)
            return await mine
        # A list, not a future: the shared result is only built when a second caller asks.
        self._inflight[name] = waiters = []
        try:
            check = self.rt.catalog.checks[name]
            # A result is dated when its probe started: the interval it ran in, whatever the probe's
            # latency or a pause of this process before it was recorded (cluster/shards.py hands a
            # check over by intervals of its start).
            started = time.time()
            result = await get_probe(check.type).run(check, self.ctx)
            self.record(name, result, now=started)
        except BaseException as exc:
            for w in waiters:
                if not w.done():
                    w.set_exception(exc)
            raise
        finally:
            del self._inflight[name]
        for w in waiters:
            if not w.done():
                w.set_result(result)
        return result

    def record(self, name: str, result: ProbeResult, *, now: float | None = None) -> None:
        """Apply one result to the state machine and publish what changed."""
        now = time.time() if now is None else now
        check = self.rt.catalog.checks.get(name)
        if check is None:
            return  # a run that was under way when a reload removed its check
        state = result.state if result.state in STATES else "UNKNOWN"
        # A probe's output can quote what it was handed (a secret ${VAR} in a URL or argv): masked
        # here, once, before it reaches the status, the store, events and so rooms and the API.
        output = mask(result.output)
        old = self.status.get(name) or initial()
        tr = apply(old, state, now=now, max_attempts=check.max_attempts, flap_low=check.flap_low,
                   flap_high=check.flap_high)
        self.status[name] = tr.status
        self.last[name] = Last(now, output, result.latency_ms, result.down, result.perfdata)
        self.checks_run += 1
        if self.results is not None:
            # An unchanged status is the same object (apply's steady path): no state row to rewrite.
            self.results.add({"check": name, "at": now, "state": state, "output": output[:2000],
                              "latency_ms": result.latency_ms, "perfdata": result.perfdata},
                             state_changed=tr.status is not old)
        if not (tr.changed or tr.attempt_advanced or tr.flapping_changed):
            return  # nothing anyone needs to hear (thousands of times a second at scale)
        cat = self.rt.catalog
        system = cat.check_system(name)
        env = cat.check_environment(name)
        correlation = f"check:{name}:{tr.status.since:.3f}"
        if tr.flapping_changed:
            self._publish(name, CheckFlapping(check=name, system=system, environment=env,
                                              flapping=tr.status.flapping, change_ratio=tr.status.change_ratio,
                                              correlation_id=correlation, source=f"check:{name}"))
        if tr.changed or tr.attempt_advanced:
            self._publish(name, CheckStateChanged(
                check=name, service=check.service, system=system, environment=env,
                old_state=tr.old_state, new_state=tr.status.state, state_type=tr.status.state_type,
                attempt=tr.status.attempt, max_attempts=check.max_attempts, output=output,
                since=tr.status.since, down=result.down, correlation_id=correlation, source=f"check:{name}"))
            if check.retry_interval and name in self.scheduler:
                self.scheduler.reschedule(name, self._interval(name))
        # A check that stops flapping may have settled into a problem (or out of one) with no
        # state change left to trigger the notice that flapping held back: look again now.
        settled = tr.flapping_changed and not tr.status.flapping
        if (tr.changed or settled) and system is not None:
            self._update_system(system, correlation)

    def _publish(self, check: str | None, ev: Event) -> None:
        """On the bus at once (the rules' fast path); to the event log with the check's state row."""
        self.rt.bus.publish(ev)
        if self.results is not None:
            self.results.log(ev, check=check)

    # --- derived health -------------------------------------------------

    def _compute_health(self, system: str) -> bool:
        for name in self.rt.catalog.checks_of_system(system):
            st = self.status.get(name)
            if st is not None and st.state != "OK" and st.state_type == "hard":
                return False
        return True

    def failing(self, system: str) -> list[dict[str, Any]]:
        out = []
        for name in self.rt.catalog.checks_of_system(system):
            st = self.status.get(name)
            if st is not None and st.state != "OK" and st.state_type == "hard":
                last = self.last.get(name)
                out.append({"check": name, "service": self.rt.catalog.checks[name].service, "state": st.state,
                            "since": st.since, "down": bool(last and last.down),
                            "output": last.output if last else "", "flapping": st.flapping})
        return out

    def _update_system(self, system: str, correlation: str) -> None:
        if self.shared_health is not None:
            self.shared_health.changed(system, correlation)
            return
        healthy = self._compute_health(system)
        if self.system_healthy.get(system, True) == healthy:
            return
        failing = self.failing(system)
        # A flapping check holds back notices: the room would otherwise hear it every minute.
        if failing and all(f["flapping"] for f in failing):
            return
        self.system_healthy[system] = healthy
        cat = self.rt.catalog
        sysobj = cat.systems[system]
        self._publish(None, SystemHealthChanged(
            system=system, title=sysobj.display, environment=sysobj.environment,
            protected=cat.is_protected(sysobj.environment), healthy=healthy, failing=failing,
            correlation_id=correlation, source=f"system:{system}"))

    # --- persistence ----------------------------------------------------

    async def flush(self) -> None:
        """Store every result recorded so far (tests, shutdown); normally the writer does it."""
        if self.results is not None:
            await self.results.flush()

    def _state_fields(self, name: str) -> dict[str, Any]:
        """A check's persisted status as of now: what a restart restores."""
        st, last = self.status[name], self.last.get(name)
        return {"state": st.state, "state_type": st.state_type, "attempt": st.attempt, "since": st.since,
                "last_check": last.at if last else None, "last_output": last.output if last else "",
                "last_latency_ms": last.latency_ms if last else None, "down": bool(last and last.down),
                "flapping": st.flapping, "history": list(st.history)}
