"""The rules engine: a check changes state -> a runbook runs, under the rule's policy.

A rule runs on the server where its event happened (the one that ran the check or received
the alert). Its budget (max_runs per window, cooldown) is the cluster's, kept in the store:
see BudgetClaim. It is decided in the transaction that creates the execution, so the path
from a hard CRITICAL to the spawned process gains two statements, not a transaction.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import structlog
from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from opsroom.access.identity import rule_actor
from opsroom.alerts.matchers import Matcher, all_match, parse_matchers
from opsroom.automation.models import RuleBudgetRow, RuleRunRow
from opsroom.automation.templates import evaluate, render
from opsroom.catalog.schema import Policy, Rule
from opsroom.cluster.clock import db_now
from opsroom.errors import OpsroomError
from opsroom.eventlog.log import append_many
from opsroom.eventlog.relay import is_foreign
from opsroom.events import (
    AlertFired,
    ApprovalDecided,
    CheckFlapping,
    CheckStateChanged,
    Event,
    ExecutionFinished,
    RuleEscalated,
    RuleHeld,
    RuleTriggered,
)
from opsroom.runbooks import service as runbooks
from opsroom.runtime import Runtime

log = structlog.get_logger(__name__)
_ADD_RULE_RUN = insert(RuleRunRow)
# PostgreSQL: create the rule's lock row or lock the one there (ON CONFLICT DO UPDATE takes the
# row lock as SELECT ... FOR UPDATE would, in one statement, and waits for a claim in progress),
# and read the store's clock once the lock is ours: in SET, not from VALUES, which is computed
# before the wait (a claim would then date itself before the run it waited for).
_pg_lock = postgresql.insert(RuleBudgetRow).values(
    rule=bindparam("rule"), holder=bindparam("holder"), claimed_at=db_now("postgresql"))
_LOCK_BUDGET = _pg_lock.on_conflict_do_update(
    index_elements=[RuleBudgetRow.rule],
    set_={"holder": _pg_lock.excluded.holder, "claimed_at": db_now("postgresql")},
).returning(RuleBudgetRow.claimed_at)
# A separate statement after the lock: under READ COMMITTED it sees the runs the previous
# holder committed (one statement with the lock would read from a snapshot taken before it).
_RUNS = select(func.count().filter(RuleRunRow.at >= bindparam("since")), func.max(RuleRunRow.at)).where(
    RuleRunRow.rule == bindparam("rule"), RuleRunRow.outcome == "triggered", RuleRunRow.at >= bindparam("horizon"))


def matches(rt: Runtime, rule: Rule, ev: CheckStateChanged) -> bool:
    when = rule.when
    if when.alert is not None:
        return False  # a rule on alerts never reacts to a check
    if when.check is not None and when.check != ev.check:
        return False
    if when.service is not None and when.service != ev.service:
        return False
    if when.system is not None and when.system != ev.system:
        return False
    if ev.new_state not in when.state:
        return False
    if when.state_type != "any" and ev.state_type != when.state_type:
        return False
    if when.attempt is not None and (ev.state_type != "soft" or ev.attempt != when.attempt):
        return False
    if when.condition:
        return evaluate(when.condition, _context(ev))
    return True


def _context(ev: CheckStateChanged) -> dict[str, Any]:
    return {"check": ev.check, "service": ev.service, "system": ev.system, "state": ev.new_state,
            "state_type": ev.state_type, "attempt": ev.attempt, "output": ev.output,
            "environment": ev.environment, "event": ev.as_dict()}


@lru_cache(maxsize=1024)
def _matchers(alert: str | tuple[str, ...]) -> tuple[Matcher, ...]:
    return parse_matchers(list(alert) if isinstance(alert, tuple) else alert)


def _alert_labels(ev: AlertFired) -> dict[str, str]:
    """The labels matchers see: the alert's own, with its name and severity however it sent them."""
    return {"alertname": ev.name, **({"severity": ev.severity} if ev.severity else {}), **ev.labels}


def matches_alert(rule: Rule, ev: AlertFired) -> bool:
    when = rule.when
    if when.alert is None or ev.silenced:
        return False
    if when.service is not None and when.service != ev.service:
        return False
    if when.system is not None and when.system != ev.system:
        return False
    key = tuple(when.alert) if isinstance(when.alert, list) else when.alert
    if not all_match(_matchers(key), _alert_labels(ev)):
        return False
    return evaluate(when.condition, _alert_context(ev)) if when.condition else True


def _alert_context(ev: AlertFired) -> dict[str, Any]:
    alert = {"id": ev.alert_id, "name": ev.name, "severity": ev.severity or "", "summary": ev.summary,
             "labels": ev.labels, "annotations": ev.annotations, "source": ev.alert_source, "url": ev.url}
    return {"alert": alert, "labels": _alert_labels(ev), "annotations": ev.annotations, "alertname": ev.name,
            "severity": ev.severity or "", "service": ev.service, "system": ev.system,
            "environment": ev.environment, "event": ev.as_dict()}


@dataclass(frozen=True)
class Trigger:
    """What set a rule off: a check's state change or an alert, as the engine needs it."""

    subject: str  # the check's name, or "alert #12 HighLatency", for notices and rule_runs
    system: str | None
    context: dict[str, Any] = field(repr=False)
    correlation_id: str | None
    check: str | None = None  # held while it flaps, and verified by default
    alert_id: int | None = None  # verified by default by waiting for the alert to resolve

    @classmethod
    def of_check(cls, ev: CheckStateChanged) -> Trigger:
        return cls(ev.check, ev.system, _context(ev), ev.correlation_id, check=ev.check)

    @classmethod
    def of_alert(cls, ev: AlertFired) -> Trigger:
        return cls(f"alert #{ev.alert_id} {ev.name}"[:64], ev.system, _alert_context(ev), ev.correlation_id,
                   alert_id=ev.alert_id)


def over_budget(policy: Policy, *, runs: int, last: float | None, now: float) -> tuple[str, bool] | None:
    """(why the rule is held, whether a human must hear it) or None: its runs leave room for one more."""
    if last is not None and now - last < policy.cooldown:
        return f"cooldown: last run {now - last:.0f}s ago (cooldown {policy.cooldown:g}s)", False
    if runs >= policy.max_runs:
        return f"ran {runs} times in the last {policy.window:g}s (max {policy.max_runs})", True
    return None


class BudgetClaim:
    """One trigger's claim on its rule's budget, made inside request_run's transaction.

    claim(s, None) serialises the rule across the cluster (PostgreSQL: its rule_budgets row,
    locked until the transaction ends; SQLite: the store's one writer does it already), counts
    the rule's triggered runs in the store and holds the run, storing the hold, when the
    policy says so. claim(s, execution_id) then stores the triggered run in that same
    transaction, so the next claim, on any server, counts it.
    """

    def __init__(self, rule: Rule, subject: str, *, holder: str) -> None:
        self.rule, self.subject, self.holder = rule, subject, holder
        self.at = 0.0  # by the store's clock on PostgreSQL: one clock for every server's window
        self.held: tuple[str, bool] | None = None

    def __call__(self, s: Session, execution_id: int | None) -> str | None:
        conn = s.connection()
        name, policy = self.rule.name, self.rule.policy
        if execution_id is not None:
            conn.execute(_ADD_RULE_RUN, {"rule": name, "check": self.subject, "at": self.at,
                                         "execution_id": execution_id, "outcome": "triggered"})
            return None
        if conn.dialect.name == "postgresql":
            self.at = conn.execute(_LOCK_BUDGET, {"rule": name, "holder": self.holder}).scalar_one()
        else:
            self.at = time.time()
        runs, last = conn.execute(_RUNS, {"rule": name, "since": self.at - policy.window,
                                          "horizon": self.at - max(policy.window, policy.cooldown)}).one()
        self.held = over_budget(policy, runs=runs, last=last, now=self.at)
        if self.held is None:
            return None
        conn.execute(_ADD_RULE_RUN, {"rule": name, "check": self.subject, "at": self.at,
                                     "execution_id": None, "outcome": "held"})
        return self.held[0]


class RulesEngine:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.pending_verify: dict[int, tuple[Rule, Trigger]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._notices: list[Event] = []  # published, waiting to be logged (_say)
        self._logging: asyncio.Task[None] | None = None
        # A rule's triggers on this server queue here, not on its row lock in the store: a mass
        # outage (hundreds of checks failing at once under one rule) then holds one pooled
        # connection per rule while the rest wait, instead of every connection of the pool.
        self._claiming: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.suspended: str | None = None  # why this server no longer acts (another has the store)

    def suspend(self, reason: str) -> None:
        """Act on nothing from now on: another server runs the recoveries for this store."""
        self.suspended = reason
        log.warning("rules suspended", reason=reason)

    async def load(self) -> None:
        """Nothing to seed: a rule's runs are counted in the store when it fires (BudgetClaim)."""

    def attach(self) -> None:
        self.rt.bus.subscribe(CheckStateChanged, self.on_state_changed)
        self.rt.bus.subscribe(ExecutionFinished, self.on_execution_finished)
        self.rt.bus.subscribe(CheckFlapping, self.on_flapping)
        self.rt.bus.subscribe(ApprovalDecided, self.on_approval_decided)
        self.rt.bus.subscribe(AlertFired, self.on_alert_fired)

    async def on_approval_decided(self, ev: ApprovalDecided) -> None:
        """A denied or expired rule run never finishes: stop waiting to verify it."""
        if ev.decision != "approved":
            self.pending_verify.pop(ev.execution_id, None)

    async def on_state_changed(self, ev: CheckStateChanged) -> None:
        # A change another server made reaches this bus through the relay: its server's rules act on it.
        if self.suspended is not None or is_foreign(self.rt, ev):
            return
        for rule in self.rt.catalog.rules.values():
            if rule.enabled and rule.when.alert is None:
                await self._try(rule, lambda r=rule: matches(self.rt, r, ev), lambda: Trigger.of_check(ev))

    async def on_alert_fired(self, ev: AlertFired) -> None:
        """A new alert (never a repeat: the alerts service publishes one event per occurrence)."""
        if self.suspended is not None or ev.silenced or is_foreign(self.rt, ev):
            return
        for rule in self.rt.catalog.rules.values():
            if rule.enabled and rule.when.alert is not None:
                await self._try(rule, lambda r=rule: matches_alert(r, ev), lambda: Trigger.of_alert(ev))

    async def _try(self, rule: Rule, match: Any, trigger: Any) -> None:
        trig: Trigger | None = None
        try:
            if match():
                trig = trigger()
                await self._fire(rule, trig)
        except OpsroomError as exc:
            trig = trig or trigger()
            log.warning("rule could not run", rule=rule.name, error=str(exc))
            self._say(RuleEscalated(rule=rule.name, check=trig.subject, system=trig.system,
                                              reason=str(exc), correlation_id=trig.correlation_id))

    async def on_flapping(self, ev: CheckFlapping) -> None:
        """A check that stops flapping in a hard problem gets the rules its flapping held back.

        No state change follows a settle (the check just stays CRITICAL), so without this
        the rule would never see the problem it exists for.
        """
        monitor = self.rt.monitor
        if ev.flapping or monitor is None or ev.check not in self.rt.catalog.checks or is_foreign(self.rt, ev):
            return
        st = monitor.status.get(ev.check)
        if st is None or st.flapping or st.state == "OK" or st.state_type != "hard":
            return
        check, last = self.rt.catalog.checks[ev.check], monitor.last.get(ev.check)
        await self.on_state_changed(CheckStateChanged(
            check=ev.check, service=check.service, system=ev.system, environment=ev.environment,
            old_state=st.state, new_state=st.state, state_type=st.state_type, attempt=st.attempt,
            max_attempts=check.max_attempts, output=last.output if last else "", since=st.since,
            down=bool(last and last.down), correlation_id=ev.correlation_id, source=f"check:{ev.check}"))

    def _flapping(self, trig: Trigger) -> str | None:
        """Why the rule waits for its check to settle (this server's monitor ran it), or None."""
        monitor = self.rt.monitor
        if (monitor is not None and trig.check is not None and (st := monitor.status.get(trig.check)) is not None
                and st.flapping):
            return f"{trig.check} is flapping"
        return None

    def _hold(self, rule: Rule, trig: Trigger, held: str, needs_human: bool) -> None:
        self._say(RuleHeld(rule=rule.name, check=trig.subject, reason=held,
                                     correlation_id=trig.correlation_id))
        if rule.policy.escalate and needs_human:
            self._say(RuleEscalated(rule=rule.name, check=trig.subject, system=trig.system,
                                              reason=f"not retrying: {held}", correlation_id=trig.correlation_id))

    async def _fire(self, rule: Rule, trig: Trigger) -> None:
        flapping = self._flapping(trig)
        if flapping is not None:
            self._hold(rule, trig, flapping, False)
            self._record(rule.name, trig.subject, None, "held")
            return
        params = {k: render(v, trig.context) for k, v in rule.then.params.items()}
        actor = rule_actor(rule.name, trig.correlation_id)
        rooms = self.rt.catalog.rooms_for_system(trig.system)
        claim = BudgetClaim(rule, trig.subject, holder=self.rt.node_id)
        try:
            # The budget is decided and spent in the execution's own transaction: a refused
            # duplicate (Conflict) rolls its claim back and uses up nothing.
            async with self._claiming[rule.name]:
                execution = await runbooks.request_run(
                    self.rt, actor=actor, runbook=rule.then.runbook, params=params,
                    room=rooms[0] if rooms else None, rule=rule.name, approval=rule.policy.approval, claim=claim)
        except runbooks.RuleHeldError:
            if claim.held is None:
                raise
            self._hold(rule, trig, *claim.held)  # its rule_runs row is stored already
            return
        self.pending_verify[execution.id] = (rule, trig)
        self._say(RuleTriggered(
            rule=rule.name, runbook=rule.then.runbook, summary=execution.summary, check=trig.subject,
            system=trig.system, execution_id=execution.id, needs_approval=execution.status == "awaiting_approval",
            correlation_id=trig.correlation_id, source=f"rule:{rule.name}", room=execution.room))

    def _record(self, rule: str, check: str, execution_id: int | None, outcome: str) -> None:
        # A hold for a flapping check (no budget involved): a prebuilt Core insert in one writer hop.
        values = {"rule": rule, "check": check, "at": time.time(), "execution_id": execution_id, "outcome": outcome}
        self._spawn(self.rt.transact(lambda s: s.connection().execute(_ADD_RULE_RUN, values)))

    def _say(self, ev: Event) -> None:
        """A rule's notice (triggered, held, escalated): published here at once, so the room keeps
        its place in order, then logged off the dispatch path. The cluster's announcer announces it
        from the log, once (as the monitor's events); if the store cannot take it, this server's
        hub announces what was never logged. One task logs the notices waiting, in one transaction,
        so a flood of holds takes one connection, not one each."""
        self.rt.bus.publish(ev)
        self._notices.append(ev)
        if self._logging is None or self._logging.done():
            self._logging = asyncio.get_running_loop().create_task(self._log_notices())
            self._tasks.add(self._logging)
            self._logging.add_done_callback(self._tasks.discard)

    async def _log_notices(self) -> None:
        node = self.rt.node_id
        while self._notices:
            batch, self._notices = self._notices, []
            try:
                await self.rt.transact(functools.partial(append_many, events=batch, origin=node))
            except Exception as exc:
                log.warning("rule notices could not be logged", count=len(batch), error=type(exc).__name__)

    async def drain(self) -> None:
        """Wait for the bookkeeping under way (logged notices, holds) before the store closes."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def on_execution_finished(self, ev: ExecutionFinished) -> None:
        pending = self.pending_verify.pop(ev.execution_id, None)
        if pending is None:
            return
        rule, trigger = pending
        if ev.status != "succeeded":
            if rule.policy.escalate:
                self._say(RuleEscalated(
                    rule=rule.name, check=trigger.subject, system=trigger.system,
                    reason=f"recovery runbook {ev.runbook} {ev.status} (execution #{ev.execution_id})",
                    correlation_id=trigger.correlation_id))
            return
        verify = rule.policy.verify
        if verify is None:
            return
        check = render(verify.check, trigger.context) if verify.check else trigger.check
        if check is None and trigger.alert_id is not None:
            ok, what = await self._verify_alert(trigger.alert_id, verify.deadline), trigger.subject
            failed = f"{what} has not resolved {verify.deadline:g}s after the recovery runbook ran"
        else:
            ok, what = await self._verify(check or "", verify.deadline), check or ""
            failed = f"{what} is not OK {verify.deadline:g}s after the recovery runbook ran"
        if not ok and rule.policy.escalate:
            self._say(RuleEscalated(rule=rule.name, check=what, system=trigger.system, reason=failed,
                                              correlation_id=trigger.correlation_id))

    async def _verify_alert(self, alert_id: int, deadline_s: float) -> bool:
        """The sender says it resolved (the alerts book drops it from firing) before the deadline."""
        book = self.rt.alerts
        deadline = time.monotonic() + deadline_s
        while book is not None and alert_id in book.firing:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(min(1.0, max(0.1, deadline - time.monotonic())))
        return True

    async def _verify(self, check: str, deadline_s: float) -> bool:
        monitor = self.rt.monitor
        if monitor is None or check not in self.rt.catalog.checks:
            return False
        deadline = time.monotonic() + deadline_s
        while True:
            st = monitor.status.get(check)
            if st is not None and st.state == "OK":
                return True
            if time.monotonic() > deadline:
                return False
            result = await monitor.run_check(check)
            if result.state == "OK":
                return True
            await asyncio.sleep(min(1.0, max(0.1, deadline - time.monotonic())))
