"""Runbooks service: ask for a run (approval or start), execution records, crash recovery."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from opsroom.access import service as access
from opsroom.access.identity import SYSTEM, Actor
from opsroom.approvals import service as approvals
from opsroom.audit import service as audit
from opsroom.automation.templates import render
from opsroom.catalog.schema import Runbook, approval_roles
from opsroom.domain.execution import ACTIVE, advance, can_transition
from opsroom.errors import Conflict, NotFound
from opsroom.events import ApprovalRequested, ExecutionFinished
from opsroom.runbooks import params as runbook_params
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime

_ADD_EXECUTION = insert(ExecutionRow)


def get_runbook(rt: Runtime, name: str) -> Runbook:
    found, suggestions = rt.catalog.find_runbook(name)
    if found is None:
        hint = f"did you mean {' or '.join(suggestions)}?" if suggestions else \
            f"known runbooks: {', '.join(sorted(rt.catalog.runbooks))}"
        raise NotFound(f"I don't know a runbook called {name!r}", hint=hint)
    return rt.catalog.runbooks[found]


def _environment(rt: Runtime, runbook: Runbook, params: dict[str, Any]) -> str:
    """A run's environment: that of the service it acts on, else the runbook's, else the first."""
    for pname, spec in runbook.parameters.items():
        if spec.type == "service" and pname in params:
            return rt.catalog.service_environment(params[pname])
    return runbook.environment or next(iter(rt.catalog.environments), "default")


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


def _summary(runbook: Runbook, params: dict[str, Any]) -> str:
    """How rooms name the run; secret values are masked before any template sees them."""
    shown = _masked(runbook, params)
    if runbook.summary:
        try:
            return render(runbook.summary, {"params": shown})
        except Exception:  # noqa: S110 - a bad summary template must not block a recovery
            pass
    args = " ".join(f"{k}={v}" for k, v in shown.items())
    return f"run {runbook.name}{' ' + args if args else ''}"


def lock_key(runbook: str, params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([runbook, params], sort_keys=True, default=str).encode()).hexdigest()


async def request_run(rt: Runtime, *, actor: Actor, runbook: str, params: dict[str, Any],
                      room: str | None = None, rule: str | None = None,
                      approval: str | None = None) -> ExecutionRow:
    """Ask to run a runbook: it starts now, or waits for approval by the roles its policy names.

    `approval` overrides the runbook's own policy; rules pass theirs (reviewed in the catalog).
    """
    actor.require("runbook.run", what="run runbooks")
    rb = get_runbook(rt, runbook)
    clean = runbook_params.validate(rt.catalog, rb, params)
    env = _environment(rt, rb, clean)
    protected = rt.catalog.is_protected(env)
    roles = approval_roles(approval if approval is not None else rb.approval)
    if roles is None:
        roles = ["approver"] if protected else []
    key = lock_key(rb.name, clean)
    summary = _summary(rb, clean)
    room = room if room in rt.catalog.rooms else _home_room(rt, rb, clean)
    # A run that needs nobody's approval is inserted already running when this process
    # will run it: one transaction less between a hard CRITICAL and the spawned process.
    run_now = not roles and rt.executor is not None
    status = "awaiting_approval" if roles else "running" if run_now else "pending"
    approvers = await access.holders_of(rt, roles=roles) if roles else []

    now = time.time()
    values: dict[str, Any] = {
        "runbook": rb.name, "runbook_hash": rb.content_hash, "lock_key": key, "params": clean,
        "target": rb.target, "environment": env, "status": status, "summary": summary,
        "requested_by": actor.name, "requester_id": actor.user_id, "door": actor.door, "rule": rule,
        "correlation_id": actor.correlation_id, "room": room, "approval_id": None, "created_at": now,
        "started_at": now if run_now else None, "finished_at": None, "output": "", "error": None,
        "owner": rt.node_id if run_now else None}

    def body(s: Session) -> tuple[ExecutionRow, ApprovalRequested | None]:
        # A prebuilt Core insert, not the unit of work: this is the write between a hard
        # CRITICAL and the spawned process. The partial unique index on active lock keys
        # refuses a second identical run, also between two servers on one PostgreSQL.
        eid: int = s.connection().execute(_ADD_EXECUTION, values).inserted_primary_key[0]  # type: ignore[index]
        audit.append_in(s, actor=actor, action="runbook.run", target=f"runbook:{rb.name}",
                        outcome="awaiting_approval" if roles else "started",
                        details={"execution": eid, "params": _masked(rb, clean), "environment": env})
        event = None
        if roles:
            row = s.get_one(ExecutionRow, eid)
            event = approvals.open_in(s, actor=actor, execution=row, roles=roles, protected=protected,
                                      approvers=approvers)
            return row, event
        return ExecutionRow(id=eid, **values), None

    try:
        # transact: one hop to SQLite's writer thread for the whole transaction.
        row, event = await rt.transact(body)
    except IntegrityError:
        async with rt.read() as s:
            busy = (await s.execute(select(ExecutionRow.id).where(
                ExecutionRow.lock_key == key, ExecutionRow.status.in_(ACTIVE)).limit(1))).scalar_one_or_none()
        await audit.append_alone(rt, actor=actor, action="runbook.run", target=f"runbook:{rb.name}",
                                 outcome="refused", details={"params": _masked(rb, clean), "reason": f"busy #{busy}"})
        raise Conflict(f"{summary} is already in progress as execution #{busy}",
                       hint=f"follow it with `execution {busy}`; a second identical run is refused") from None
    if event is not None:
        rt.bus.publish(event)
    elif rt.executor is not None:
        rt.executor.start(row.id, claimed=row)
    return row


def _masked(rb: Runbook, params: dict[str, Any]) -> dict[str, Any]:
    return {k: ("****" if rb.parameters[k].secret else v) for k, v in params.items()}


async def start_approved(rt: Runtime, *, execution_id: int) -> None:
    if rt.executor is not None:
        rt.executor.start(execution_id)


async def mark_running(rt: Runtime, execution_id: int) -> ExecutionRow | None:
    async with rt.write() as s:
        row = await s.get(ExecutionRow, execution_id)
        if row is None or not can_transition(row.status, "running"):
            return None
        # An approved run runs only what was approved (the row may have been edited since).
        problem = await approvals.start_problem_in(s, catalog=rt.catalog, execution=row)
        if problem is None:
            row.status, row.started_at, row.owner = "running", time.time(), rt.node_id
            return row
        refused = await approvals.refuse_start_in(s, execution=row, problem=problem)
    if refused is not None:
        rt.bus.publish(refused)
    return None


async def mark_finished(rt: Runtime, execution_id: int, *, status: str, output: str, error: str | None,
                        message: str) -> None:
    async with rt.write() as s:
        row = await s.get(ExecutionRow, execution_id)
        if row is None:
            return
        row.status = advance(row.status, status)
        row.finished_at, row.output, row.error = time.time(), output, error
        actor = Actor(row.requested_by, row.door, correlation_id=row.correlation_id)  # type: ignore[arg-type]
        await audit.append(s, actor=actor, action="execution.finish", target=f"execution:{row.id}",
                           outcome=status, details={"runbook": row.runbook, "message": message})


async def list_executions(rt: Runtime, *, actor: Actor, limit: int = 50,
                          status: str | None = None) -> list[ExecutionRow]:
    actor.require("execution.read", what="list executions")
    stmt = select(ExecutionRow).order_by(ExecutionRow.id.desc()).limit(min(limit, 500))
    if status:
        stmt = stmt.where(ExecutionRow.status == status)
    async with rt.read() as s:
        rows = list((await s.execute(stmt)).scalars())
    await audit.append_alone(rt, actor=actor, action="execution.list", target="executions")
    return rows


async def get_execution(rt: Runtime, *, actor: Actor, execution_id: int) -> ExecutionRow:
    actor.require("execution.read", what="see executions")
    async with rt.read() as s:
        row = await s.get(ExecutionRow, execution_id)
    if row is None:
        raise NotFound(f"there is no execution #{execution_id}", hint="list them with `executions`")
    await audit.append_alone(rt, actor=actor, action="execution.view", target=f"execution:{execution_id}")
    return row


def _owner_dead(owner: str | None) -> bool:
    """True when the execution's owning server process is gone (same host) or unknown."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another node's: only that node (or an operator) can say
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


async def recover_interrupted(rt: Runtime) -> list[ExecutionRow]:
    """At start-up: executions left 'running' by a dead server become 'interrupted', never re-run."""
    found: list[ExecutionRow] = []
    async with rt.write() as s:
        rows = (await s.execute(select(ExecutionRow).where(ExecutionRow.status == "running"))).scalars()
        for row in rows:
            if row.owner == rt.node_id or not _owner_dead(row.owner):
                continue
            row.status, row.finished_at = advance(row.status, "interrupted"), time.time()
            row.error = "the opsroom server stopped while this ran; it was not re-run"
            await audit.append(s, actor=SYSTEM, action="execution.interrupted", target=f"execution:{row.id}",
                               outcome="interrupted", details={"runbook": row.runbook, "owner": row.owner})
            found.append(row)
    for row in found:
        rt.bus.publish(ExecutionFinished(
            execution_id=row.id, runbook=row.runbook, summary=row.summary, status="interrupted", duration_s=0.0,
            message=f"execution #{row.id} ({row.summary}) was interrupted: opsroom stopped while it ran. "
                    "It was not re-run; check the system and run it again if needed.",
            rule=row.rule, error=row.error, correlation_id=row.correlation_id, source="recovery", room=row.room))
    return found


def list_runbooks(rt: Runtime, *, actor: Actor) -> list[Runbook]:
    actor.require("status.read", what="list runbooks")
    return list(rt.catalog.runbooks.values())
