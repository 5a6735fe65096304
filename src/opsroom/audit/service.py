"""Audit service: append inside the caller's transaction, verify, list."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from opsroom.access.identity import Actor
from opsroom.audit.chain import GENESIS, record_hash
from opsroom.audit.models import AuditHeadRow, AuditRecordRow

if TYPE_CHECKING:
    from opsroom.runtime import Runtime

MAX_DETAIL = 4000


def _round(at: float) -> float:
    return round(at, 6)


async def append(session: AsyncSession, *, actor: Actor, action: str, target: str, outcome: str = "ok",
                 details: dict[str, Any] | None = None) -> AuditRecordRow:
    """Append one record in the caller's transaction, so a change and its record commit together."""
    head = (await session.execute(select(AuditHeadRow).where(AuditHeadRow.id == 1).with_for_update())
            ).scalar_one_or_none()
    if head is None:
        head = AuditHeadRow(id=1, seq=0, hash=GENESIS)
        session.add(head)
    clean = {k: (v[:MAX_DETAIL] if isinstance(v, str) else v) for k, v in (details or {}).items()}
    at = _round(time.time())
    seq = head.seq + 1
    digest = record_hash(seq=seq, at=at, actor=actor.name, door=actor.door, action=action, target=target,
                         outcome=outcome, details=clean, correlation_id=actor.correlation_id,
                         prev_hash=head.hash)
    row = AuditRecordRow(seq=seq, at=at, actor=actor.name, door=actor.door, action=action, target=target,
                         outcome=outcome, details=clean, correlation_id=actor.correlation_id,
                         prev_hash=head.hash, hash=digest)
    session.add(row)
    head.seq, head.hash = seq, digest
    await session.flush()
    return row


async def append_alone(rt: Runtime, *, actor: Actor, action: str, target: str, outcome: str = "ok",
                       details: dict[str, Any] | None = None) -> None:
    """Append in a transaction of its own: for reads and refusals, which change nothing else."""
    async with rt.write() as session:
        await append(session, actor=actor, action=action, target=target, outcome=outcome, details=details)


@dataclass
class VerifyResult:
    ok: bool
    records: int
    broken_seq: int | None = None
    reason: str | None = None


async def verify(rt: Runtime) -> VerifyResult:
    """Walk the chain; name the first record whose hash, link or sequence is wrong."""
    prev, expected_seq, count = GENESIS, 1, 0
    async with rt.read() as session:
        result = await session.stream_scalars(select(AuditRecordRow).order_by(AuditRecordRow.seq))
        async for row in result:
            count += 1
            if row.seq != expected_seq:
                return VerifyResult(False, count, row.seq, f"sequence gap: expected {expected_seq}")
            if row.prev_hash != prev:
                return VerifyResult(False, count, row.seq, "prev_hash does not match the previous record")
            digest = record_hash(seq=row.seq, at=row.at, actor=row.actor, door=row.door, action=row.action,
                                 target=row.target, outcome=row.outcome, details=row.details,
                                 correlation_id=row.correlation_id, prev_hash=row.prev_hash)
            if digest != row.hash:
                return VerifyResult(False, count, row.seq, "content does not match its hash")
            prev, expected_seq = row.hash, expected_seq + 1
        head = (await session.execute(select(AuditHeadRow).where(AuditHeadRow.id == 1))).scalar_one_or_none()
    if head is not None and (head.seq != expected_seq - 1 or head.hash != prev):
        return VerifyResult(False, count, expected_seq, "records after this point were removed (head mismatch)")
    return VerifyResult(True, count)


async def list_records(rt: Runtime, *, actor: Actor, limit: int = 100, action: str | None = None,
                       since_seq: int | None = None) -> list[AuditRecordRow]:
    actor.require("audit.read", what="read the audit log")
    stmt = select(AuditRecordRow).order_by(AuditRecordRow.seq.desc()).limit(min(limit, 1000))
    if action:
        stmt = stmt.where(AuditRecordRow.action == action)
    if since_seq is not None:
        stmt = stmt.where(AuditRecordRow.seq > since_seq)
    async with rt.read() as session:
        rows = list((await session.execute(stmt)).scalars())
    await append_alone(rt, actor=actor, action="audit.list", target="audit", details={"count": len(rows)})
    return rows


async def verify_as(rt: Runtime, *, actor: Actor) -> VerifyResult:
    actor.require("audit.read", what="verify the audit log")
    result = await verify(rt)
    await append_alone(rt, actor=actor, action="audit.verify", target="audit",
                       outcome="ok" if result.ok else "broken", details={"records": result.records})
    return result
