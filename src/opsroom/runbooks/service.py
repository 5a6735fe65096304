"""Runbooks service: ask for a run (approval or start), execution records, crash recovery."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from opsroom.access import scope
from opsroom.access import service as access
from opsroom.access.identity import SYSTEM, Actor
from opsroom.approvals import service as approvals
from opsroom.approvals.models import ApprovalRow
from opsroom.audit import service as audit
from opsroom.automation.templates import render
from opsroom.catalog.catalog import Catalog
from opsroom.catalog.schema import Runbook, approval_roles
from opsroom.cluster.clock import db_now
from opsroom.cluster.membership import DEAD_AFTER_S
from opsroom.cluster.models import NodeRow
from opsroom.domain.execution import ACTIVE, advance, can_transition
from opsroom.errors import Conflict, Invalid, NotFound, PermissionDenied
from opsroom.eventlog import log as eventlog
from opsroom.events import (
    ApprovalDecided,
    ApprovalRequested,
    Event,
    ExecutionCancelRequested,
    ExecutionFinished,
    ExecutionReady,
    ExecutionStarted,
    uuid7,
)
from opsroom.integrity import service as integrity
from opsroom.runbooks import params as runbook_params
from opsroom.runbooks import processes
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime
from opsroom.secrets import masking, sealing

_ADD_EXECUTION = insert(ExecutionRow)
_RECORD_PROCESS = update(ExecutionRow).where(ExecutionRow.id == bindparam("eid"))


def get_runbook(rt: Runtime, name: str) -> Runbook:
    found, suggestions = rt.catalog.find_runbook(name)
    if found is None:
        hint = f"did you mean {' or '.join(suggestions)}?" if suggestions else \
            f"known runbooks: {', '.join(sorted(rt.catalog.runbooks))}"
        shown = name if len(name) <= 64 else name[:64] + "…"  # input: quoted back, but bounded
        raise NotFound(f"I don't know a runbook called {shown!r}", hint=hint)
    return rt.catalog.runbooks[found]


def _environment(rt: Runtime, runbook: Runbook, params: dict[str, Any]) -> str:
    """A run's environment: that of the service it acts on, else the runbook's own.

    Never the catalog's first environment: adding `staging` above `prod` once made a prod
    runbook run as staging, with no approval. A catalog of one environment has no order
    to get wrong, so that one is used; anything else must be said.
    """
    for pname, spec in runbook.parameters.items():
        if spec.type == "service" and pname in params:
            return rt.catalog.service_environment(params[pname])
    if runbook.environment:
        return runbook.environment
    if len(rt.catalog.environments) == 1:
        return next(iter(rt.catalog.environments))
    raise Invalid(f"runbook {runbook.name} does not say which environment it acts on",
                  hint=f"set `environment:` on runbook {runbook.name} in the catalog (one of "
                       f"{', '.join(rt.catalog.environments) or 'none defined'}), or give it a service parameter")


def _home_room(rt: Runtime, runbook: Runbook, params: dict[str, Any]) -> str | None:
    """Where a run asked for outside any room (API, CLI) is announced: the room of its system."""
    systems = [rt.catalog.services[params[p]].system for p, spec in runbook.parameters.items()
               if spec.type == "service" and p in params]
    for system in systems:
        rooms = rt.catalog.rooms_for_system(system)
        if rooms:
            return rooms[0]
    env = _environment(rt, runbook, params)
    for system, sysobj in rt.catalog.systems.items():
        rooms = rt.catalog.rooms_for_system(system)
        if sysobj.environment == env and rooms:
            return rooms[0]
    return next(iter(rt.catalog.rooms), None)


SUMMARY_MAX = 255  # executions.summary and approvals.summary are String(255)


def _summary(runbook: Runbook, params: dict[str, Any]) -> str:
    """How rooms name the run; secret values are masked before any template sees them."""
    shown = _masked(runbook, params)
    text = ""
    if runbook.summary:
        try:
            text = render(runbook.summary, {"params": shown})
        except Exception:  # noqa: S110 - a bad summary template must not block a recovery
            pass
    if not text:
        args = " ".join(f"{k}={v}" for k, v in shown.items())
        text = f"run {runbook.name}{' ' + args if args else ''}"
    # Long parameter values are fine in argv, not in a varchar(255) (a 500 on PostgreSQL).
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1] + "…"


def lock_key(runbook: str, params: dict[str, Any]) -> str:
    """Runbook + parameters, over the MASKED parameters: a plain hash of a secret could be brute-forced.

    Two runs that differ only in a secret are therefore the same run for the lock: safer.
    """
    return hashlib.sha256(json.dumps([runbook, params], sort_keys=True, default=str).encode()).hexdigest()


READONLY_RUN = "execution.read"  # what running a `readonly: true` runbook needs (run_permission)


class RuleHeldError(Conflict):
    """A rule's claim held the run (its budget or cooldown): the hold is stored, no execution is."""


async def request_run(rt: Runtime, *, actor: Actor, runbook: str, params: dict[str, Any],
                      room: str | None = None, rule: str | None = None,
                      approval: str | None = None,
                      claim: Callable[[Session, int | None], str | None] | None = None) -> ExecutionRow:
    """Ask to run a runbook: it starts now, or waits for approval by the roles its policy names.

    `approval` overrides the runbook's own policy; rules pass theirs (reviewed in the catalog).
    `claim` (rules: automation/rules.py) is called inside the transaction that creates the
    execution, first as claim(s, None): a reason returned holds the run (the transaction commits
    what the claim wrote, no execution, RuleHeldError); then as claim(s, execution_id). So a
    rule's budget is decided and spent in one transaction with its run, on every server.
    """
    if not actor.can_somewhere("runbook.run") and not (actor.can_somewhere(READONLY_RUN) and _readonly(rt, runbook)):
        await audit.append_alone(rt, actor=actor, action="runbook.run", target=f"runbook:{runbook[:64]}",
                                 outcome="refused", details={"reason": "missing permission runbook.run"})
        actor.require("runbook.run", what="run runbooks")
    rb = get_runbook(rt, runbook)
    clean = runbook_params.validate(rt.catalog, rb, params)
    await _require_run_scope(rt, actor, rb, clean)
    # From here on every sink masks them; the row keeps them sealed and only their masks in clear.
    secret = {k: v for k, v in clean.items() if rb.parameters[k].secret}
    masking.register(*secret.values())
    sealed = sealing.seal(data_key(rt), secret) if secret else None
    clean = _masked(rb, clean)
    env = _environment(rt, rb, clean)
    if (quarantined := await integrity.refusal(rt, runbook=rb.name, environment=env)) is not None:
        raise Conflict(quarantined, hint="`opsroom integrity status` on the server host shows the change")
    protected = rt.catalog.is_protected(env)
    roles = approval_roles(approval if approval is not None else rb.approval)
    if roles is None and rb.readonly:
        roles = []  # `auto` for a readonly runbook: reading changes nothing (docs/access.md)
    if roles is None:
        roles = ["approver"] if protected else []
    key = lock_key(rb.name, clean)
    summary = _summary(rb, clean)
    room = room if room in rt.catalog.rooms else _home_room(rt, rb, clean)
    # A run that needs nobody's approval is inserted already running when this process
    # will run it: one transaction less between a hard CRITICAL and the spawned process.
    run_now = not roles and rt.runs_here
    status = "awaiting_approval" if roles else "running" if run_now else "pending"
    approvers = await access.holders_of(rt, roles=roles) if roles else []

    now = time.time()
    values: dict[str, Any] = {
        "runbook": rb.name, "runbook_hash": rb.content_hash, "lock_key": key, "params": clean,
        "secret_params": sealed, "catalog_hash": rt.catalog_hash,
        "target": rb.target, "environment": env, "status": status, "summary": summary,
        "requested_by": actor.name, "requester_id": actor.user_id, "door": actor.door, "rule": rule,
        "correlation_id": actor.correlation_id, "room": room, "approval_id": None, "created_at": now,
        "started_at": now if run_now else None, "finished_at": None, "output": "", "error": None,
        "owner": rt.node_id if run_now else None}

    held: list[str] = []

    def body(s: Session) -> tuple[ExecutionRow | None, ApprovalRequested | None]:
        if claim is not None and (reason := claim(s, None)) is not None:
            held.append(reason)
            return None, None
        # A prebuilt Core insert, not the unit of work: this is the write between a hard
        # CRITICAL and the spawned process. The partial unique index on active lock keys
        # refuses a second identical run, also between two servers on one PostgreSQL.
        eid: int = s.connection().execute(_ADD_EXECUTION, values).inserted_primary_key[0]  # type: ignore[index]
        if claim is not None:
            claim(s, eid)
        audit.append_in(s, actor=actor, action="runbook.run", target=f"runbook:{rb.name}",
                        outcome="awaiting_approval" if roles else "started",
                        details={"execution": eid, "params": clean, "environment": env,
                                 "runbook_hash": rb.content_hash})
        event = None
        if roles:
            row = s.get_one(ExecutionRow, eid)
            event = approvals.open_in(s, actor=actor, execution=row, roles=roles, protected=protected,
                                      approvers=approvers)
            eventlog.append(s, event, origin=rt.node_id)
            return row, event
        made = ExecutionRow(id=eid, **values)
        if run_now:  # inserted running: its start is in the log with it (the executor publishes it)
            eventlog.append(s, started_event(made), origin=rt.node_id)
        return made, None

    try:
        # transact: one hop to SQLite's writer thread for the whole transaction.
        row, event = await rt.transact(body)
    except IntegrityError:
        async with rt.read() as s:
            busy = (await s.execute(select(ExecutionRow.id).where(
                ExecutionRow.lock_key == key, ExecutionRow.status.in_(ACTIVE)).limit(1))).scalar_one_or_none()
        await audit.append_alone(rt, actor=actor, action="runbook.run", target=f"runbook:{rb.name}",
                                 outcome="refused", details={"params": clean, "reason": f"busy #{busy}"})
        raise Conflict(f"{summary} is already in progress as execution #{busy}",
                       hint=f"follow it with `execution {busy}`; a second identical run is refused") from None
    if row is None:
        raise RuleHeldError(f"rule {rule} held: {held[0]}", hint="the rule runs again when its policy allows")
    if event is not None:
        rt.bus.publish(event)
    elif run_now:  # the executor starts it from the row as stored, without reading it again
        rt.bus.publish(ExecutionReady(execution_id=row.id, claimed={"id": row.id, **values},
                                      source=f"execution:{row.id}", correlation_id=row.correlation_id))
    return row


def _masked(rb: Runbook, params: dict[str, Any]) -> dict[str, Any]:
    return {k: (masking.MASK if rb.parameters[k].secret else v) for k, v in params.items()}


def data_key(rt: Runtime) -> bytes:
    """The key secret parameters are sealed with (see secrets.sealing: one file per data dir)."""
    return sealing.data_key(rt.settings.data)


def secret_params(rt: Runtime, row: ExecutionRow) -> dict[str, Any]:
    """The execution's secret parameter values, unsealed: for a step's context and nothing else."""
    if not row.secret_params:
        return {}
    values = sealing.unseal(data_key(rt), row.secret_params)
    masking.register(*values.values())  # after a restart, this process has not seen them yet
    return values


def started_event(row: ExecutionRow) -> ExecutionStarted:
    """An execution's start, the same (uid included) wherever it is built from its running row: the
    copy in the event log and the one the executor publishes."""
    at = row.started_at or row.created_at
    return ExecutionStarted(
        execution_id=row.id, runbook=row.runbook, summary=row.summary, environment=row.environment,
        triggered_by=row.requested_by, door=row.door, rule=row.rule, correlation_id=row.correlation_id,
        source=f"execution:{row.id}", room=row.room, at=at, uid=uuid7(at=at, key=f"execution:{row.id}:started"))


async def mark_running(rt: Runtime, execution_id: int) -> ExecutionRow | None:
    async with rt.write() as s:
        row = await s.get(ExecutionRow, execution_id)
        if row is None or not can_transition(row.status, "running"):
            return None
        # An approved run runs only what was approved (the row may have been edited since).
        problem = await approvals.start_problem_in(s, catalog=rt.catalog, execution=row)
        if problem is None:
            row.status, row.started_at, row.owner = "running", time.time(), rt.node_id
            eventlog.stage(s, started_event(row), origin=rt.node_id)
            return row
        refused = await approvals.refuse_start_in(s, execution=row, problem=problem)
        if refused is not None:
            eventlog.stage(s, refused, origin=rt.node_id)
    if refused is not None:
        rt.bus.publish(refused)
    return None


async def mark_finished(rt: Runtime, execution_id: int, *, status: str, output: str, error: str | None,
                        message: str, event: ExecutionFinished | None = None) -> None:
    """The end of a run; `event` (published by the caller after) goes to the event log with it."""
    def body(s: Session) -> None:
        row = s.get(ExecutionRow, execution_id)
        if row is None:
            return
        if event is not None:
            eventlog.append(s, event, origin=rt.node_id)
        row.status = advance(row.status, status)
        row.finished_at, row.output, row.error = time.time(), output, error
        actor = Actor(row.requested_by, row.door, correlation_id=row.correlation_id)  # type: ignore[arg-type]
        audit.append_in(s, actor=actor, action="execution.finish", target=f"execution:{row.id}",
                        outcome=status, details={"runbook": row.runbook, "message": message})

    # One hop to the writer (transact), not one per statement: every run ends here.
    await rt.transact(body)


def _readonly(rt: Runtime, name: str) -> bool:
    found = rt.catalog.find_runbook(name)[0]
    return found is not None and rt.catalog.runbooks[found].readonly


def run_permission(rb: Runbook) -> str:
    """A readonly runbook is a read (a viewer's `tail-log`); any other run needs runbook.run."""
    return READONLY_RUN if rb.readonly else "runbook.run"


async def _require_run_scope(rt: Runtime, actor: Actor, rb: Runbook, params: dict[str, Any]) -> None:
    """runbook.run where the run lands: a role bound to test gives nothing on prod (docs/access.md)."""
    env = _environment(rt, rb, params)
    system = scope.run_system(rt.catalog, rb, params)
    needed = run_permission(rb)
    if actor.can("runbook.run", environment=env, system=system) or actor.can(needed, environment=env, system=system):
        return
    where = scope.Scope(env, system).label
    await audit.append_alone(rt, actor=actor, action="runbook.run", target=f"runbook:{rb.name}", outcome="refused",
                             details={"reason": f"no role grants {needed} in {where}", "environment": env})
    actor.require(needed, what=f"run {rb.name}", environment=env, system=system)


def _may_cancel(actor: Actor, row: ExecutionRow, catalog: Catalog | None = None) -> bool:
    """Its requester (the same user, never a same name), an approver, an admin, in the run's scope."""
    where = _scope_of(row, catalog)
    own = row.requester_id is not None and row.requester_id == actor.user_id
    may_decide = actor.can("approval.decide", environment=where.environment, system=where.system)
    may_run = actor.can("runbook.run", environment=where.environment, system=where.system)
    return (may_run or may_decide) and (own or may_decide)


def _scope_of(row: ExecutionRow, catalog: Catalog | None) -> scope.Scope:
    # Without the catalog no system is known: a binding to one system then covers nothing (deny).
    if catalog is None:
        return scope.Scope(row.environment)
    return scope.execution_scope(catalog, runbook=row.runbook, params=row.params, environment=row.environment)


def may_cancel(actor: Actor, row: ExecutionRow, catalog: Catalog | None = None) -> bool:
    """What cancel_execution allows, for a door to offer (or not) a Cancel button on an active run."""
    return _may_cancel(actor, row, catalog)


# How long a cancel waits for a running execution's end: the executor's SIGTERM grace
# (runbooks/executor.py CANCEL_GRACE_S, 5 s), its SIGKILL and final write, bounded.
CANCEL_WAIT_S = 20.0


@contextlib.contextmanager
def _end_of(rt: Runtime, execution_id: int) -> Iterator[asyncio.Event]:
    """Set once this server's bus carries the execution's ExecutionFinished (its own executor's, or
    relayed from the server running it). Listening starts here, so an end published after it,
    even one racing the cancel's own transaction, is not missed."""
    ended = asyncio.Event()

    def heard(ev: Event) -> None:
        if isinstance(ev, ExecutionFinished) and ev.execution_id == execution_id:
            ended.set()

    rt.bus.add_listener(heard)
    try:
        yield ended
    finally:
        rt.bus.remove_listener(heard)


async def cancel_execution(rt: Runtime, *, actor: Actor, execution_id: int, room: str | None = None) -> ExecutionRow:
    """Stop a run: a waiting one is closed (with its request), a running one's process group killed.

    For a running one the request is recorded (audit record and ExecutionCancelRequested, in one
    transaction) and published; the server running it stops its steps (runbooks/executor.py)
    and this call waits, bounded, for its end, so the answer says what happened.
    """
    with _end_of(rt, execution_id) as end_heard:
        return await _cancel(rt, actor=actor, execution_id=execution_id, room=room, end_heard=end_heard)


async def _cancel(rt: Runtime, *, actor: Actor, execution_id: int, room: str | None,
                  end_heard: asyncio.Event) -> ExecutionRow:
    target = f"execution:{execution_id}"

    async def refuse(reason: str) -> None:
        await audit.append_alone(rt, actor=actor, action="execution.cancel", target=target, outcome="refused",
                                 details={"reason": reason, "room": room})

    if not (actor.can_somewhere("runbook.run") or actor.can_somewhere("approval.decide")):
        await refuse("missing permission runbook.run or approval.decide")
        raise PermissionDenied(f"{actor.name} may not cancel executions",
                               hint="its requester, an approver or an admin may; "
                                    f"your roles: {', '.join(sorted(actor.roles)) or 'none'}")
    now = time.time()
    closed: ApprovalRow | None = None
    ended: list[Event] = []  # in the event log with the change, published after it
    async with rt.write() as s:
        row = await s.get(ExecutionRow, execution_id)
        verdict = "missing" if row is None else "finished" if row.status not in ACTIVE else \
            "denied" if not _may_cancel(actor, row, rt.catalog) else row.status
        if row is not None and verdict in ("pending", "awaiting_approval"):
            # Never started: closed here, in one transaction with its request and the record.
            row.status, row.finished_at = advance(row.status, "cancelled"), now
            row.error = f"cancelled by {actor.name}"
            if row.approval_id is not None:
                approval = await s.get(ApprovalRow, row.approval_id)
                if approval is not None and approval.status == "open":
                    approval.status, approval.decided_by, approval.decided_at = "cancelled", actor.name, now
                    approval.reason = "its execution was cancelled"
                    closed = approval
        if row is not None and verdict in ("pending", "awaiting_approval", "running"):
            await audit.append(s, actor=actor, action="execution.cancel", target=target,
                               outcome="cancelled" if verdict != "running" else "stopping",
                               details={"runbook": row.runbook, "was": verdict, "room": room})
        if row is not None and verdict == "running":
            asked = ExecutionCancelRequested(execution_id=row.id, runbook=row.runbook, by=actor.name, owner=row.owner,
                                             correlation_id=row.correlation_id, source=target, room=row.room)
            eventlog.stage(s, asked, origin=rt.node_id)
        if row is not None and verdict in ("pending", "awaiting_approval"):
            if closed is not None:  # its Approve/Deny buttons go away in every room, as for a decided one
                ended.append(ApprovalDecided(
                    approval_id=closed.id, execution_id=row.id, runbook=row.runbook, decision="cancelled",
                    decided_by=actor.name, reason=closed.reason, correlation_id=row.correlation_id,
                    source=f"approval:{closed.id}", room=row.room))
            ended.append(ExecutionFinished(
                execution_id=row.id, runbook=row.runbook, summary=row.summary, status="cancelled", duration_s=0.0,
                message=f"execution #{row.id} ({row.summary}) cancelled by {actor.name} before it started",
                rule=row.rule, error=row.error, correlation_id=row.correlation_id, source=target, room=row.room))
            for ev in ended:
                eventlog.stage(s, ev, origin=rt.node_id)
    if row is None:
        raise NotFound(f"there is no execution #{execution_id}", hint="list them with `executions`")
    if verdict == "finished":
        raise Conflict(f"execution #{execution_id} is already {row.status.replace('_', ' ')}: nothing to cancel",
                       hint=f"see it with `execution {execution_id}`")
    if verdict == "denied":
        await refuse("not its requester, an approver or an admin")
        raise PermissionDenied(f"{actor.name} may not cancel execution #{execution_id}: {row.requested_by} asked "
                               "for it", hint="its requester, an approver or an admin may cancel it")
    if verdict != "running":
        for ev in ended:
            rt.bus.publish(ev)
        return row
    rt.bus.publish(asked)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(end_heard.wait(), CANCEL_WAIT_S)
    async with rt.read() as s:
        row = await s.get_one(ExecutionRow, execution_id)
    if row.status == "cancelled" or row.status in ACTIVE:  # still active: its server is stopping it
        return row
    # Its steps ended before the cancel reached them.
    raise Conflict(f"execution #{execution_id} finished ({row.status.replace('_', ' ')}) before it could be "
                   "cancelled", hint=f"see it with `execution {execution_id}`")


async def record_process(rt: Runtime, execution_id: int, *, pgid: int, started: str | None) -> None:
    """Store the running step's process group, so recovery after a crash can kill it (processes.py)."""
    def body(s: Session) -> None:  # once per step: one hop to the writer, Core
        s.connection().execute(_RECORD_PROCESS, {"eid": execution_id, "pgid": pgid, "pg_started": started})

    await rt.transact(body)


async def _require_read(rt: Runtime, actor: Actor, *, what: str, target: str,
                        where: scope.Scope | None = None) -> None:
    """A refused read is audited too: someone looking where they may not is worth knowing.

    Without `where` (before the row is read) any role or binding with execution.read passes;
    with it, only one that covers the execution's scope."""
    env, system = (where.environment, where.system) if where is not None else (None, None)
    allowed = actor.can("execution.read", environment=env, system=system) if where is not None \
        else actor.can_somewhere("execution.read")
    if not allowed:
        reason = "missing permission execution.read" + (f" in {where.label}" if where is not None else "")
        await audit.append_alone(rt, actor=actor, action="execution.read", target=target, outcome="refused",
                                 details={"reason": reason})
        actor.require("execution.read", what=what, environment=env, system=system)


async def list_executions(rt: Runtime, *, actor: Actor, limit: int = 50, status: str | None = None,
                          before: int | None = None) -> list[ExecutionRow]:
    """Newest first; `before`: only those with a smaller id (the API's next page)."""
    await _require_read(rt, actor, what="list executions", target="executions")
    # One past the API's largest page (500): the API reads whether another page follows.
    stmt = select(ExecutionRow).order_by(ExecutionRow.id.desc()).limit(min(limit, 501))
    if status:
        stmt = stmt.where(ExecutionRow.status == status)
    if before is not None:
        stmt = stmt.where(ExecutionRow.id < before)
    everywhere = actor.can("execution.read")
    if not everywhere:  # bindings only: the runs of their environments (a system binding: below)
        stmt = stmt.where(ExecutionRow.environment.in_(sorted(actor.environments_with("execution.read"))))
    async with rt.read() as s:
        rows = list((await s.execute(stmt)).scalars())
    if not everywhere:
        rows = [r for r in rows if actor.can("execution.read", environment=r.environment,
                                             system=_scope_of(r, rt.catalog).system)]
    await audit.append_alone(rt, actor=actor, action="execution.list", target="executions")
    return rows


async def get_execution(rt: Runtime, *, actor: Actor, execution_id: int) -> ExecutionRow:
    await _require_read(rt, actor, what="see executions", target=f"execution:{execution_id}")
    async with rt.read() as s:
        row = await s.get(ExecutionRow, execution_id)
    if row is None:
        raise NotFound(f"there is no execution #{execution_id}", hint="list them with `executions`")
    await _require_read(rt, actor, what=f"see execution #{execution_id}", target=f"execution:{execution_id}",
                        where=_scope_of(row, rt.catalog))
    await audit.append_alone(rt, actor=actor, action="execution.view", target=f"execution:{execution_id}")
    return row


def _host_of(owner: str) -> str:
    return owner.partition(":")[0]


def _owner_dead_here(owner: str | None) -> bool | None:
    """For an owner on this host: is its process gone? None for another host's owner."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


async def _dead_owners(rt: Runtime, owners: set[str]) -> set[str]:
    """Which owners (server node ids) are gone, on any host.

    On this host the kernel says (the pid). Another host's server is gone when its heartbeat in
    `cluster_nodes` is older than the membership's dead window by the store's clock, or it
    stopped. A node that never heartbeat (a server of a version before membership) is left
    alone: nothing can tell it from a live one.
    """
    dead: set[str] = set()
    remote: set[str] = set()
    for owner in owners:
        if owner == rt.node_id:
            continue
        here = _owner_dead_here(owner)
        if here is None:
            remote.add(owner)
        elif here:
            dead.add(owner)
    if remote:
        now = db_now(rt.engine.dialect.name)
        async with rt.read() as s:
            rows = (await s.execute(select(NodeRow.node_id).where(
                NodeRow.node_id.in_(remote),
                or_(NodeRow.stopped_at.is_not(None), NodeRow.heartbeat_at < now - DEAD_AFTER_S)))).all()
        dead |= {r[0] for r in rows}
    return dead


PENDING_GRACE_S = 60.0  # an approved run is started within milliseconds by the server that approved it


def _orphaned_pending(row: ExecutionRow, decided_at: float | None, now: float, dead: set[str]) -> bool:
    """A 'pending' run nobody will start: its owner died, or it waited past the grace period."""
    if row.owner:
        return row.owner in dead
    return (decided_at or row.created_at) < now - PENDING_GRACE_S


async def recover_interrupted(rt: Runtime) -> list[ExecutionRow]:
    """Executions a dead server left behind become 'interrupted', never re-run.

    Run at start-up and by every server's housekeeping, so a server that died on any host has
    its executions closed within the membership's dead window plus one housekeeping pass.
    'running' ones of a dead owner: their step's process group is killed first if it still runs
    on this host (a kill -9 of the server does not reach it: it has a session of its own), so
    that no second run starts beside it. 'pending' ones (approved, never started) would hold
    their lock key forever: they are closed too. Two servers sweeping at once: rows are locked
    (FOR UPDATE SKIP LOCKED on PostgreSQL), so each is closed and announced once.
    """
    now = time.time()
    async with rt.read() as s:
        candidates = (await s.execute(select(ExecutionRow.owner).where(
            ExecutionRow.status.in_(("running", "pending")), ExecutionRow.owner.is_not(None),
            ExecutionRow.owner != rt.node_id).distinct())).scalars().all()
    dead = await _dead_owners(rt, {o for o in candidates if o})
    found: list[ExecutionRow] = []
    announced: list[ExecutionFinished] = []
    async with rt.write() as s:
        rows = (await s.execute(select(ExecutionRow, ApprovalRow.decided_at)
                                .outerjoin(ApprovalRow, ApprovalRow.id == ExecutionRow.approval_id)
                                .where(ExecutionRow.status.in_(("running", "pending")))
                                .with_for_update(skip_locked=True, of=ExecutionRow))).all()
        for row, decided_at in rows:
            if row.owner == rt.node_id:
                continue
            killed = False
            if row.status == "running":
                if row.owner and row.owner not in dead:
                    continue
                if not row.owner or _host_of(row.owner) == socket.gethostname():
                    killed = processes.kill_if_ours(row.pgid, row.pg_started)
                row.error = "the opsroom server stopped while this ran; it was not re-run" + (
                    " (its still running process group was killed)" if killed else "")
            else:
                if not _orphaned_pending(row, decided_at, now, dead):
                    continue
                row.error = "the opsroom server stopped before this approved run started; it was not run"
            row.status, row.finished_at = advance(row.status, "interrupted"), now
            await audit.append(s, actor=SYSTEM, action="execution.interrupted", target=f"execution:{row.id}",
                               outcome="interrupted", details={"runbook": row.runbook, "owner": row.owner,
                                                               "pgid": row.pgid, "killed": killed})
            found.append(row)
            ev = ExecutionFinished(
                execution_id=row.id, runbook=row.runbook, summary=row.summary, status="interrupted", duration_s=0.0,
                message=f"execution #{row.id} ({row.summary}) was interrupted: opsroom stopped "
                        f"{'while it ran' if row.started_at else 'before it started'}. "
                        "It was not re-run; check the system and run it again if needed.",
                rule=row.rule, error=row.error, correlation_id=row.correlation_id, source="recovery", room=row.room)
            eventlog.stage(s, ev, origin=rt.node_id)
            announced.append(ev)
    for ev in announced:
        rt.bus.publish(ev)
    return found


async def list_runbooks(rt: Runtime, *, actor: Actor) -> list[Runbook]:
    if not actor.can("status.read"):
        await audit.append_alone(rt, actor=actor, action="runbook.list", target="runbooks", outcome="refused",
                                 details={"reason": "missing permission status.read"})
        actor.require("status.read", what="list runbooks")
    found = list(rt.catalog.runbooks.values())
    await audit.append_alone(rt, actor=actor, action="runbook.list", target="runbooks",
                             details={"count": len(found)})
    return found


# --- Runbook steps on workers (workers/, docs/workers.md) -------------------------------------
# Added by the workers helper; the rest of this module is the lead's.

async def finish_if_running(rt: Runtime, execution_id: int, *, status: str, output: str, error: str | None,
                            message: str, event: ExecutionFinished | None = None) -> bool:
    """mark_finished, only while the execution is still running: False when another server (a
    recovery of a dead node) already ended it, and then its end must not be announced a second time.

    A conditional UPDATE: of two servers that both end it, exactly one sees a row changed.
    """
    def body(s: Session) -> bool:
        row = s.get(ExecutionRow, execution_id)
        if row is None or not can_transition(row.status, status):
            return False
        done = s.execute(update(ExecutionRow).where(ExecutionRow.id == execution_id, ExecutionRow.status == "running")
                         .values(status=status, finished_at=time.time(), output=output, error=error)
                         .execution_options(synchronize_session=False))
        if not done.rowcount:  # type: ignore[attr-defined]
            return False
        actor = Actor(row.requested_by, row.door, correlation_id=row.correlation_id)  # type: ignore[arg-type]
        audit.append_in(s, actor=actor, action="execution.finish", target=f"execution:{row.id}",
                        outcome=status, details={"runbook": row.runbook, "message": message})
        if event is not None:
            eventlog.append(s, event, origin=rt.node_id)
        return True

    return await rt.transact(body)
