"""Audit service: append inside the caller's transaction, verify, list."""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from opsroom.access.identity import Actor
from opsroom.audit.chain import CURRENT, GENESIS, as_stored, record_hash
from opsroom.audit.checkpointer import Written, checkpoint_now
from opsroom.audit.models import AuditHeadRow, AuditRecordRow
from opsroom.audit.verify import VerifyResult as VerifyResult  # re-exported: callers know the service
from opsroom.audit.verify import verify as verify
from opsroom.secrets.masking import mask_obj

if TYPE_CHECKING:
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

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
    # Hashed as the store will give it back (a JSON round trip), so verify recomputes the same.
    clean = as_stored({k: (v[:MAX_DETAIL] if isinstance(v, str) else v) for k, v in mask_obj(details or {}).items()})
    record: dict[str, Any] = {"seq": prev_seq + 1, "at": _round(time.time()), "actor": actor.name, "door": actor.door,
              "action": action, "target": target, "outcome": outcome, "details": clean,
              "correlation_id": actor.correlation_id, "prev_hash": prev_hash}
    record["hash"] = record_hash(**record, v=CURRENT)
    conn.execute(_ADD_RECORD, {**record, "v": CURRENT})
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


async def verify_as(rt: Runtime, *, actor: Actor, checkpoints: Path | None = None,
                    public_key: Ed25519PublicKey | None = None) -> VerifyResult:
    await _require_read(rt, actor, action="audit.verify", what="verify the audit log")
    result = await verify(rt, checkpoints=checkpoints, public_key=public_key)
    await append_alone(rt, actor=actor, action="audit.verify", target="audit",
                       outcome="ok" if result.ok else "broken",
                       details={"records": result.records, "checkpoints": result.checkpoints})
    return result


async def checkpoint_as(rt: Runtime, *, actor: Actor) -> Written:
    """On demand: the request is recorded first, so the checkpoint covers it too."""
    if not actor.can("audit.read"):
        await append_alone(rt, actor=actor, action="audit.checkpoint", target="audit", outcome="refused",
                           details={"reason": "missing permission audit.read"})
        actor.require("audit.read", what="sign an audit checkpoint")
    await append_alone(rt, actor=actor, action="audit.checkpoint", target="audit")
    return await checkpoint_now(rt)


async def _require_read(rt: Runtime, actor: Actor, *, action: str, what: str) -> None:
    """A refused look at the log is itself recorded in it."""
    if not actor.can("audit.read"):
        await append_alone(rt, actor=actor, action=action, target="audit", outcome="refused",
                           details={"reason": "missing permission audit.read"})
        actor.require("audit.read", what=what)
