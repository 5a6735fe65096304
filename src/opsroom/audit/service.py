"""Audit service: append inside the caller's transaction, verify, list."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from opsroom.access.identity import Actor
from opsroom.access.models import UserRow
from opsroom.audit.chain import GENESIS, record_hash
from opsroom.audit.models import AuditHeadRow, AuditRecordRow
from opsroom.runbooks.models import ExecutionRow
from opsroom.secrets.masking import mask_obj

if TYPE_CHECKING:
    from opsroom.runtime import Runtime

MAX_DETAIL = 4000


def _round(at: float) -> float:
    return round(at, 6)


# Built once: a statement made per call is re-keyed for the compiled cache every time.
_HEAD = AuditHeadRow.__table__
_LOCK_HEAD = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1).with_for_update()
_START_HEAD = insert(AuditHeadRow)
_MOVE_HEAD = update(AuditHeadRow).where(_HEAD.c.id == 1)
_ADD_RECORD = insert(AuditRecordRow)


def append_in(session: Session, *, actor: Actor, action: str, target: str, outcome: str = "ok",
              details: dict[str, Any] | None = None) -> int:
    """Append one record in the caller's transaction, so a change and its record commit together.

    Synchronous, for transaction bodies run by Runtime.transact; async callers use append().
    Prebuilt Core statements on the session's connection rather than the unit of work: this
    runs inside every change, and the ORM's bookkeeping costs several times the SQL (a
    third of a hard CRITICAL's dispatch time before). Returns the record's seq.
    """
    conn = session.connection()
    head = conn.execute(_LOCK_HEAD).first()
    if head is None:
        prev_seq, prev_hash = 0, GENESIS
        conn.execute(_START_HEAD, {"id": 1, "seq": 0, "hash": GENESIS})
    else:
        prev_seq, prev_hash = head.seq, head.hash
    clean = {k: (v[:MAX_DETAIL] if isinstance(v, str) else v) for k, v in mask_obj(details or {}).items()}
    record: dict[str, Any] = {"seq": prev_seq + 1, "at": _round(time.time()), "actor": actor.name, "door": actor.door,
              "action": action, "target": target, "outcome": outcome, "details": clean,
              "correlation_id": actor.correlation_id, "prev_hash": prev_hash}
    record["hash"] = record_hash(**record)
    conn.execute(_ADD_RECORD, record)
    conn.execute(_MOVE_HEAD, {"seq": record["seq"], "hash": record["hash"]})
    return prev_seq + 1


async def append(session: AsyncSession, *, actor: Actor, action: str, target: str, outcome: str = "ok",
                 details: dict[str, Any] | None = None) -> int:
    """append_in() for an AsyncSession's transaction."""
    return await session.run_sync(partial(append_in, actor=actor, action=action, target=target,
                                          outcome=outcome, details=details))


async def append_alone(rt: Runtime, *, actor: Actor, action: str, target: str, outcome: str = "ok",
                       details: dict[str, Any] | None = None) -> None:
    """Append in a transaction of its own: for reads and refusals, which change nothing else."""
    await rt.transact(partial(append_in, actor=actor, action=action, target=target, outcome=outcome,
                              details=details))


@dataclass
class VerifyResult:
    ok: bool
    records: int
    broken_seq: int | None = None
    reason: str | None = None


async def verify(rt: Runtime) -> VerifyResult:
    """Walk the chain; name the first record whose hash, link or sequence is wrong.

    What a chain alone can show: an edited, inserted or removed record in the middle, and a
    removed tail while the head row still names it. Also refused: records with no head row
    (the head deleted with the tail), an empty log over a store that has users or executions
    (the log emptied), and users or executions with no record of being added or asked for (a
    log emptied and restarted, or a tail cut with the head moved back over such records). A tail cut with the head moved
    back over records that left no other trace needs signed checkpoints kept outside the
    store (the audit issue, #16): nothing inside one database can tell it from a shorter log.
    """
    prev, expected_seq, count = GENESIS, 1, 0
    requested: set[int] = set()  # executions whose request is in the log
    added: set[str] = set()  # users whose creation is in the log
    async with rt.read() as session:
        # Read in an order that stays consistent while servers write (on PostgreSQL each statement
        # sees its own snapshot): users and executions first, then the head, then the records up
        # to that head only. A user or execution read was added in the transaction that also
        # appended its record and moved the head, so the head read after it covers that record;
        # records appended after the head was read are not judged this time.
        users = list((await session.execute(select(UserRow.name).order_by(UserRow.id))).scalars())
        executions = list((await session.execute(select(ExecutionRow.id).order_by(ExecutionRow.id))).scalars())
        head = (await session.execute(select(AuditHeadRow).where(AuditHeadRow.id == 1))).scalar_one_or_none()
        records = select(AuditRecordRow).order_by(AuditRecordRow.seq)
        if head is not None:
            records = records.where(AuditRecordRow.seq <= head.seq)
        result = await session.stream_scalars(records)
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
            if row.action == "runbook.run" and isinstance(row.details.get("execution"), int):
                requested.add(row.details["execution"])
            elif row.action == "user.add" or (row.action == "user.reconcile" and (
                    row.details.get("created") or row.details.get("renamed_from"))):
                added.add(row.target.removeprefix("user:"))
            prev, expected_seq = row.hash, expected_seq + 1
        if head is not None and await _past_head(session, head):
            return VerifyResult(False, count, head.seq + 1,
                                "records exist past the head row: it was moved back over them (head mismatch)")
    if count and head is None:
        return VerifyResult(False, count, expected_seq,
                            "the head row is missing while records exist (records after the last one may "
                            "have been removed with it)")
    if head is not None and (head.seq != expected_seq - 1 or head.hash != prev):
        return VerifyResult(False, count, expected_seq, "records after this point were removed (head mismatch)")
    if not count and (users or executions):
        return VerifyResult(False, 0, 1, f"the audit log is empty but the store holds {len(users)} users and "
                                         f"{len(executions)} executions: its records were removed")
    unknown = [u for u in users if u not in added]
    if unknown:
        return VerifyResult(False, count, expected_seq,
                            f"user '{unknown[0]}' has no record of being added"
                            + (f" ({len(unknown)} users in all)" if len(unknown) > 1 else "")
                            + ": records were removed (the log emptied or cut, then restarted)")
    missing = [e for e in executions if e not in requested]
    if missing:
        return VerifyResult(False, count, expected_seq,
                            f"execution #{missing[0]} has no record of being asked for"
                            + (f" ({len(missing)} executions in all)" if len(missing) > 1 else "")
                            + ": records were removed from the end of the log and the head moved back")
    return VerifyResult(True, count)


async def list_records(rt: Runtime, *, actor: Actor, limit: int = 100, action: str | None = None,
                       since_seq: int | None = None, before_seq: int | None = None) -> list[AuditRecordRow]:
    """Newest first; `before_seq`: only older records (the API's next page)."""
    await _require_read(rt, actor, action="audit.list", what="read the audit log")
    # One past the API's largest page (1000): the API reads whether another page follows.
    stmt = select(AuditRecordRow).order_by(AuditRecordRow.seq.desc()).limit(min(limit, 1001))
    if action:
        stmt = stmt.where(AuditRecordRow.action == action)
    if since_seq is not None:
        stmt = stmt.where(AuditRecordRow.seq > since_seq)
    if before_seq is not None:
        stmt = stmt.where(AuditRecordRow.seq < before_seq)
    async with rt.read() as session:
        rows = list((await session.execute(stmt)).scalars())
    await append_alone(rt, actor=actor, action="audit.list", target="audit", details={"count": len(rows)})
    return rows


async def _past_head(session: AsyncSession, head: AuditHeadRow) -> bool:
    """Records after the head read at the start, with the head unchanged since: the head was moved
    back. A head that moved meanwhile means a writer appended them (judged next time)."""
    seq, digest = head.seq, head.hash
    beyond = (await session.execute(select(func.min(AuditRecordRow.seq)).where(AuditRecordRow.seq > seq))).scalar()
    if beyond is None:
        return False
    now = (await session.execute(select(AuditHeadRow.seq, AuditHeadRow.hash).where(AuditHeadRow.id == 1))).first()
    return now is not None and (now[0], now[1]) == (seq, digest)


async def verify_as(rt: Runtime, *, actor: Actor) -> VerifyResult:
    await _require_read(rt, actor, action="audit.verify", what="verify the audit log")
    result = await verify(rt)
    await append_alone(rt, actor=actor, action="audit.verify", target="audit",
                       outcome="ok" if result.ok else "broken", details={"records": result.records})
    return result


async def _require_read(rt: Runtime, actor: Actor, *, action: str, what: str) -> None:
    """A refused look at the log is itself recorded in it."""
    if not actor.can("audit.read"):
        await append_alone(rt, actor=actor, action=action, target="audit", outcome="refused",
                           details={"reason": "missing permission audit.read"})
        actor.require("audit.read", what=what)
