"""Approvals service: open, decide (approve/deny), expire. Same path for chat, web and API."""

from __future__ import annotations

import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from opsroom.access.identity import SYSTEM, Actor
from opsroom.approvals.models import ApprovalRow, ApprovalVoteRow
from opsroom.audit import service as audit
from opsroom.domain.approval import DEFAULT_EXPIRY_S, binding_hash, may_vote
from opsroom.domain.execution import advance
from opsroom.errors import Conflict, Invalid, NotFound, PermissionDenied
from opsroom.events import ApprovalDecided, ApprovalRequested
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime


def open_in(s: Session, *, actor: Actor, execution: ExecutionRow, roles: list[str], protected: bool,
            approvers: list[str], expiry_s: float = DEFAULT_EXPIRY_S) -> ApprovalRequested:
    """Open an approval inside the caller's transaction (a Runtime.transact body).

    Returns the event to publish after the commit. `approvers` are the people who may decide
    (holders of `roles`), looked up by the caller before the transaction.
    """
    now = time.time()
    row = ApprovalRow(execution_id=execution.id, status="open", roles=roles, requester=actor.name,
                      requester_id=actor.user_id, summary=execution.summary,
                      binding_hash=binding_hash(runbook_hash=execution.runbook_hash, params=execution.params,
                                                target=execution.target),
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
    if not actor.can("approval.decide"):
        await audit.append_alone(rt, actor=actor, action=f"approval.{verb}", target=f"approval:{approval_id}",
                                 outcome="refused", details={"reason": "missing permission approval.decide"})
        actor.require("approval.decide", what=f"{verb} requests")
    if not approve and not (reason and reason.strip()):
        raise Invalid("a deny needs a reason", hint=f"write `deny {approval_id} <why>`")
    now = time.time()
    async with rt.write() as s:
        row = await s.get(ApprovalRow, approval_id)
        if row is None:
            raise NotFound(f"there is no request #{approval_id}", hint="see open requests with `status`")
        execution = await s.get(ExecutionRow, row.execution_id)
        verdict = may_vote(status=row.status, expired=row.expires_at < now, requester_id=row.requester_id,
                           requester=row.requester, voter_id=actor.user_id, voter=actor.name,
                           voter_roles=actor.roles, roles=row.roles)
        # The catalog may have changed since the request: an approval covers the old version only
        # (a runbook removed since counts as changed). A deny runs nothing, so it stays allowed.
        current = rt.catalog.runbooks.get(execution.runbook) if execution is not None else None
        stale = approve and execution is not None and (
            current is None or current.content_hash != execution.runbook_hash)
        if verdict.allowed and stale:
            verdict = type(verdict)(False, "the runbook changed since it was requested; ask again")
            # Nothing may ever run under this request: close it, or its run would hold the
            # runbook's lock and refuse the "ask again" as a duplicate until it expires.
            row.status, row.decided_at, row.reason = "expired", now, verdict.reason
            if execution is not None:
                execution.status, execution.finished_at = advance(execution.status, "expired"), now
        if not verdict.allowed:
            refused = True
        else:
            refused = False
            s.add(ApprovalVoteRow(approval_id=row.id, user_id=actor.user_id or 0, user_name=actor.name,
                                  decision="approve" if approve else "deny"))
            row.status = "approved" if approve else "denied"
            row.decided_by, row.decided_at, row.reason = actor.name, now, reason
            if execution is not None:
                execution.status = advance(execution.status, "pending" if approve else "denied")
                if not approve:
                    execution.finished_at = now
        await audit.append(s, actor=actor, action=f"approval.{verb}", target=f"approval:{approval_id}",
                           outcome="refused" if refused else ("approved" if approve else "denied"),
                           details={"reason": verdict.reason if refused else reason,
                                    "execution": row.execution_id, "requester": row.requester})
    if refused:
        if "own request" in verdict.reason or "needs role" in verdict.reason:
            raise PermissionDenied(f"you cannot {verb} request #{approval_id}: {verdict.reason}")
        raise Conflict(f"request #{approval_id} cannot be decided: {verdict.reason}")
    rt.bus.publish(ApprovalDecided(
        approval_id=row.id, execution_id=row.execution_id, runbook=execution.runbook if execution else "",
        decision=row.status, decided_by=actor.name, reason=reason,
        correlation_id=execution.correlation_id if execution else None, source=f"approval:{row.id}",
        room=execution.room if execution else None))
    if approve and rt.executor is not None:
        rt.executor.start(row.execution_id)
    return row


async def list_open(rt: Runtime, *, actor: Actor) -> list[ApprovalRow]:
    actor.require("approval.read", what="see approval requests")
    async with rt.read() as s:
        rows = list((await s.execute(select(ApprovalRow).where(ApprovalRow.status == "open")
                                     .order_by(ApprovalRow.id))).scalars())
    now = time.time()
    return [r for r in rows if r.expires_at >= now]


async def get(rt: Runtime, *, actor: Actor, approval_id: int) -> ApprovalRow:
    actor.require("approval.read", what="see approval requests")
    async with rt.read() as s:
        row = await s.get(ApprovalRow, approval_id)
    if row is None:
        raise NotFound(f"there is no request #{approval_id}")
    return row


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
            expired.append((row, execution))
    for row, execution in expired:
        rt.bus.publish(ApprovalDecided(approval_id=row.id, execution_id=row.execution_id,
                                       runbook=execution.runbook if execution else "", decision="expired",
                                       decided_by=None, source=f"approval:{row.id}",
                                       room=execution.room if execution else None))
    return [r for r, _ in expired]
