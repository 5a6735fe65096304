"""Approvals service: open, decide (approve/deny), expire. Same path for chat, web and API."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from opsroom.access import scope
from opsroom.access.identity import SYSTEM, Actor
from opsroom.approvals.models import ApprovalRow, ApprovalVoteRow
from opsroom.audit import service as audit
from opsroom.catalog.catalog import Catalog
from opsroom.domain.approval import DEFAULT_EXPIRY_S, Verdict, binding_hash, may_vote, reason_problem
from opsroom.domain.execution import advance, can_transition
from opsroom.errors import Conflict, Invalid, NotFound, PermissionDenied
from opsroom.eventlog import log as eventlog
from opsroom.events import ApprovalDecided, ApprovalRequested, ExecutionFinished, ExecutionReady
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime


def binding_of(execution: ExecutionRow, *, runbook_hash: str | None = None) -> str:
    """The binding of an execution as its row holds it now (`runbook_hash`: another version's)."""
    return binding_hash(runbook_hash=runbook_hash or execution.runbook_hash, params=execution.params,
                        target=execution.target, secret_params=execution.secret_params,
                        environment=execution.environment)


_CHANGED = "its parameters, secrets, target or environment were changed in the store since it was requested"


def open_in(s: Session, *, actor: Actor, execution: ExecutionRow, roles: list[str], protected: bool,
            approvers: list[str], expiry_s: float = DEFAULT_EXPIRY_S) -> ApprovalRequested:
    """Open an approval inside the caller's transaction (a Runtime.transact body).

    Returns the event to publish after the commit. `approvers` are the people who may decide
    (holders of `roles`), looked up by the caller before the transaction.
    """
    now = time.time()
    row = ApprovalRow(execution_id=execution.id, status="open", roles=roles, requester=actor.name,
                      requester_id=actor.user_id, summary=execution.summary,
                      binding_hash=binding_of(execution),
                      created_at=now, expires_at=now + expiry_s)
    s.add(row)
    s.flush()
    execution.approval_id = row.id
    audit.append_in(s, actor=actor, action="approval.open", target=f"approval:{row.id}",
                    details={"execution": execution.id, "roles": roles, "summary": execution.summary})
    return ApprovalRequested(
        approval_id=row.id, execution_id=execution.id, runbook=execution.runbook, summary=execution.summary,
        environment=execution.environment, protected=protected, roles=roles, requester=actor.name,
        approvers=[n for n in approvers if n != actor.name], expires_at=row.expires_at,
        correlation_id=execution.correlation_id, source=f"approval:{row.id}", room=execution.room)


async def decide(rt: Runtime, *, actor: Actor, approval_id: int, approve: bool,
                 reason: str | None = None) -> ApprovalRow:
    """Approve or deny. The requester's vote is refused; a deny decides at once."""
    verb = "approve" if approve else "deny"
    target = f"approval:{approval_id}"
    if not actor.can_somewhere("approval.decide"):  # its scope is checked with the request (_decide)
        await audit.append_alone(rt, actor=actor, action=f"approval.{verb}", target=target,
                                 outcome="refused", details={"reason": "missing permission approval.decide"})
        actor.require("approval.decide", what=f"{verb} requests")
    if reason is not None and not isinstance(reason, str):  # a door that passed a JSON value through
        raise Invalid("a reason is one line of text", hint=f"write `deny {approval_id} <why>`")
    reason = reason.strip() if reason else None
    problem = reason_problem(reason) if reason else None
    if problem is not None:
        # The bad text itself is not recorded: it is what could forge a line wherever it shows.
        await audit.append_alone(rt, actor=actor, action=f"approval.{verb}", target=target,
                                 outcome="refused", details={"reason": f"invalid reason: {problem}"})
        raise Invalid(problem, hint=f"write the reason as one line of plain text, e.g. `{verb} {approval_id} "
                                    "wrong target, use the canary first`")
    if not approve and not reason:
        raise Invalid("a deny needs a reason", hint=f"write `deny {approval_id} <why>`")
    try:
        row, decided, verdict = await _decide(rt, actor=actor, approval_id=approval_id, approve=approve,
                                              reason=reason)
    except IntegrityError:
        # Only a second vote of one person racing their first gets here now that the request
        # row is locked; answered like any decision that came too late.
        verdict = Verdict(False, "it was decided at the same moment by another vote")
        await audit.append_alone(rt, actor=actor, action=f"approval.{verb}", target=target, outcome="refused",
                                 details={"reason": verdict.reason})
        raise Conflict(f"request #{approval_id} cannot be decided: {verdict.reason}") from None
    if not verdict.allowed:
        if "own request" in verdict.reason or "needs role" in verdict.reason or "not allowed in" in verdict.reason:
            raise PermissionDenied(f"you cannot {verb} request #{approval_id}: {verdict.reason}")
        raise Conflict(f"request #{approval_id} cannot be decided: {verdict.reason}")
    if decided is not None:  # made with every decision taken
        rt.bus.publish(decided)
    if approve:  # this server's executor moves it to running (and checks the binding again) and runs it
        rt.bus.publish(ExecutionReady(execution_id=row.execution_id, source=f"approval:{row.id}",
                                      correlation_id=decided.correlation_id if decided is not None else None))
    return row


async def _decide(rt: Runtime, *, actor: Actor, approval_id: int, approve: bool,
                  reason: str | None) -> tuple[ApprovalRow, ApprovalDecided | None, Verdict]:
    """One decision in one transaction; the verdict says whether it was taken, and its event is
    in the event log with it."""
    verb = "approve" if approve else "deny"
    now = time.time()
    decided: ApprovalDecided | None = None
    async with rt.write() as s:
        # FOR UPDATE: two approvers deciding at once on PostgreSQL queue here, so the second
        # sees the first's decision and is refused (409) instead of deciding it again.
        # SQLite serialises writers already and ignores the clause.
        row = await s.get(ApprovalRow, approval_id, with_for_update=True)
        if row is None:
            raise NotFound(f"there is no request #{approval_id}", hint="see open requests with `status`")
        execution = await s.get(ExecutionRow, row.execution_id)
        # The voter's roles there: unscoped ones and the bindings covering the run's scope only.
        where = scope.execution_scope(rt.catalog, runbook=execution.runbook, params=execution.params,
                                      environment=execution.environment) if execution is not None else scope.Scope(None)
        verdict = may_vote(status=row.status, expired=row.expires_at < now, requester_id=row.requester_id,
                           requester=row.requester, voter_id=actor.user_id, voter=actor.name,
                           voter_roles=actor.roles_in(where.environment, where.system), roles=row.roles)
        if not actor.can("approval.decide", environment=where.environment, system=where.system):
            # Said before "needs role": an approver bound to test is told where their role ends.
            verdict = Verdict(False, f"not allowed in {where.label}: no role grants approval.decide there")
        if verdict.allowed and approve:
            # The catalog may have changed since the request: an approval covers the old version
            # only (a runbook removed since counts as changed). And the execution row must still
            # be what was asked for: its parameters edited in the store since would otherwise run
            # under this approval. A deny runs nothing, so it stays allowed either way.
            current = rt.catalog.runbooks.get(execution.runbook) if execution is not None else None
            if execution is None or current is None or current.content_hash != execution.runbook_hash:
                verdict = Verdict(False, "the runbook changed since it was requested; ask again")
            elif binding_of(execution) != row.binding_hash:
                verdict = Verdict(False, f"{_CHANGED}; ask again")
            if not verdict.allowed:
                # Nothing may ever run under this request: close it, or its run would hold the
                # runbook's lock and refuse the "ask again" as a duplicate until it expires.
                row.status, row.decided_at, row.reason = "expired", now, verdict.reason
                if execution is not None and can_transition(execution.status, "expired"):
                    execution.status, execution.finished_at = "expired", now
        if verdict.allowed:
            s.add(ApprovalVoteRow(approval_id=row.id, user_id=actor.user_id or 0, user_name=actor.name,
                                  decision="approve" if approve else "deny"))
            row.status = "approved" if approve else "denied"
            row.decided_by, row.decided_at, row.reason = actor.name, now, reason
            if execution is not None:
                execution.status = advance(execution.status, "pending" if approve else "denied")
                if not approve:
                    execution.finished_at = now
            # The vote's unique key is checked here, inside the error handling of the caller.
            await s.flush()
            decided = ApprovalDecided(
                approval_id=row.id, execution_id=row.execution_id, runbook=execution.runbook if execution else "",
                decision=row.status, decided_by=actor.name, reason=reason,
                correlation_id=execution.correlation_id if execution else None, source=f"approval:{row.id}",
                room=execution.room if execution else None)
            eventlog.stage(s, decided, origin=rt.node_id)
        await audit.append(s, actor=actor, action=f"approval.{verb}", target=f"approval:{approval_id}",
                           outcome="refused" if not verdict.allowed else ("approved" if approve else "denied"),
                           details={"reason": verdict.reason if not verdict.allowed else reason,
                                    "execution": row.execution_id, "requester": row.requester})
    return row, decided, verdict


async def start_problem_in(s: AsyncSession, *, catalog: Catalog, execution: ExecutionRow) -> str | None:
    """Why an execution must not start now, or None: checked when it moves to running.

    A run under an approval runs only what was approved: the approval must be this
    execution's and approved, and the binding recomputed from the row as it is now, with
    the runbook version that would run, must equal the approved one.
    """
    if execution.approval_id is None:
        return None
    approval = await s.get(ApprovalRow, execution.approval_id)
    if approval is None or approval.execution_id != execution.id:
        return f"its approval #{execution.approval_id} is not a request for this execution"
    if approval.status != "approved":
        return f"its request #{approval.id} is {approval.status}, not approved"
    current = catalog.runbooks.get(execution.runbook)
    if current is None or current.content_hash != execution.runbook_hash:
        return f"runbook {execution.runbook} changed after request #{approval.id} was approved; ask again"
    if binding_of(execution, runbook_hash=current.content_hash) != approval.binding_hash:
        return f"it is not what request #{approval.id} approved: {_CHANGED}"
    return None


async def refuse_start_in(s: AsyncSession, *, execution: ExecutionRow, problem: str) -> ExecutionFinished | None:
    """Fail an execution that may not start, audited; returns the event to publish after the commit."""
    now = time.time()
    error = f"not run: {problem}"
    await audit.append(s, actor=SYSTEM, action="execution.refused", target=f"execution:{execution.id}",
                       outcome="refused", details={"runbook": execution.runbook, "reason": problem,
                                                   "approval": execution.approval_id})
    if not can_transition(execution.status, "failed"):
        return None  # e.g. still awaiting approval: left as it is, it cannot start
    execution.status, execution.finished_at, execution.error = "failed", now, error
    return ExecutionFinished(
        execution_id=execution.id, runbook=execution.runbook, summary=execution.summary, status="failed",
        duration_s=0.0, message=f"execution #{execution.id} ({execution.summary}) was not run: {problem}",
        rule=execution.rule, error=error, correlation_id=execution.correlation_id,
        source=f"execution:{execution.id}", room=execution.room)


_OPEN = select(ApprovalRow).where(ApprovalRow.status == "open").order_by(ApprovalRow.id)


async def list_open(rt: Runtime, *, actor: Actor, audited: bool = True) -> list[ApprovalRow]:
    """The open requests; `audited=False` for a caller that audits the whole view it is part of."""
    await _require_read(rt, actor, action="approval.list", target="approvals", where=None)
    async with rt.read() as s:
        rows = list((await s.execute(_OPEN)).scalars())
    now = time.time()
    found = await _readable(rt, actor, [r for r in rows if r.expires_at >= now])
    if audited:
        await audit.append_alone(rt, actor=actor, action="approval.list", target="approvals",
                                 details={"count": len(found)})
    return found


async def list_open_viewed(rt: Runtime, *, actor: Actor, action: str, target: str,
                           details: dict[str, Any] | None = None) -> list[ApprovalRow]:
    """The open requests, read in the same hop to the store as the audit record of the view they
    are part of (`status`: the most asked question; a read of its own and then a write cost two
    hops, half the command's time on SQLite). The record counts what was shown."""
    await _require_read(rt, actor, action=action, target=target, where=None)

    def view(s: Session) -> list[ApprovalRow]:
        now = time.time()
        found = [r for r in s.execute(_OPEN).scalars() if r.expires_at >= now]
        if not actor.can("approval.read"):  # bindings only: the requests of the runs they cover
            runs = {e.id: e for e in s.execute(select(ExecutionRow).where(
                ExecutionRow.id.in_([r.execution_id for r in found]))).scalars()}
            found = [r for r in found if _covers(rt, actor, runs.get(r.execution_id))]
        audit.append_in(s, actor=actor, action=action, target=target,
                        details={**(details or {}), "open_requests": len(found)})
        return found

    return await rt.transact(view)


def _covers(rt: Runtime, actor: Actor, execution: ExecutionRow | None) -> bool:
    if execution is None:
        return False
    where = scope.execution_scope(rt.catalog, runbook=execution.runbook, params=execution.params,
                                  environment=execution.environment)
    return actor.can("approval.read", environment=where.environment, system=where.system)


async def _readable(rt: Runtime, actor: Actor, rows: list[ApprovalRow]) -> list[ApprovalRow]:
    """All of them for an unscoped reader; for a scoped-only one, the requests of runs it covers."""
    if actor.can("approval.read") or not rows:
        return rows
    async with rt.read() as s:
        runs = {e.id: e for e in (await s.execute(select(ExecutionRow).where(
            ExecutionRow.id.in_([r.execution_id for r in rows])))).scalars()}
    return [r for r in rows if _covers(rt, actor, runs.get(r.execution_id))]


async def get(rt: Runtime, *, actor: Actor, approval_id: int) -> ApprovalRow:
    target = f"approval:{approval_id}"
    await _require_read(rt, actor, action="approval.view", target=target, where=None)
    async with rt.read() as s:
        row = await s.get(ApprovalRow, approval_id)
        execution = await s.get(ExecutionRow, row.execution_id) if row is not None else None
    if row is None:
        await audit.append_alone(rt, actor=actor, action="approval.view", target=target, outcome="not_found")
        raise NotFound(f"there is no request #{approval_id}", hint="see open requests with `status`")
    # Then in its run's scope: a reader bound to test does not read prod's requests.
    where = scope.execution_scope(rt.catalog, runbook=execution.runbook, params=execution.params,
                                  environment=execution.environment) if execution is not None else scope.Scope(None)
    await _require_read(rt, actor, action="approval.view", target=target, where=where)
    await audit.append_alone(rt, actor=actor, action="approval.view", target=target)
    return row


async def _require_read(rt: Runtime, actor: Actor, *, action: str, target: str,
                        where: scope.Scope | None = scope.Scope(None)) -> None:
    """A refused read is recorded too: who looks where they may not is what an audit is for.

    `where` None: before the request is read, any role or binding with approval.read passes."""
    allowed = actor.can_somewhere("approval.read") if where is None else \
        actor.can("approval.read", environment=where.environment, system=where.system)
    if not allowed:
        shown = f" in {where.label}" if where is not None and where.environment else ""
        await audit.append_alone(rt, actor=actor, action=action, target=target, outcome="refused",
                                 details={"reason": f"missing permission approval.read{shown}"})
        actor.require("approval.read", what="see approval requests",
                      environment=where.environment if where else None, system=where.system if where else None)


async def expire_due(rt: Runtime) -> list[ApprovalRow]:
    """Close open requests past their expiry; their executions become 'expired'."""
    now, expired = time.time(), []
    async with rt.write() as s:
        rows = (await s.execute(select(ApprovalRow).where(ApprovalRow.status == "open",
                                                          ApprovalRow.expires_at < now))).scalars()
        for row in rows:
            row.status, row.decided_at = "expired", now
            execution = await s.get(ExecutionRow, row.execution_id)
            if execution is not None:
                execution.status, execution.finished_at = advance(execution.status, "expired"), now
            await audit.append(s, actor=SYSTEM, action="approval.expire", target=f"approval:{row.id}",
                               outcome="expired")
            ev = ApprovalDecided(approval_id=row.id, execution_id=row.execution_id,
                                 runbook=execution.runbook if execution else "", decision="expired",
                                 decided_by=None, source=f"approval:{row.id}",
                                 room=execution.room if execution else None)
            eventlog.stage(s, ev, origin=rt.node_id)
            expired.append((row, ev))
    for _, ev in expired:
        rt.bus.publish(ev)
    return [r for r, _ in expired]
