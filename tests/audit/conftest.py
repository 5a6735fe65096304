"""A chain with a signed checkpoint on a real store, and the tampering an attacker with SQL can do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select, text, update

from opsroom.access.identity import SYSTEM
from opsroom.audit import service as audit
from opsroom.audit.chain import CURRENT, record_hash
from opsroom.audit.checkpointer import Written, checkpoint_now
from opsroom.audit.models import AuditHeadRow, AuditRecordRow
from opsroom.runtime import Runtime

FIELDS = ("seq", "at", "actor", "door", "action", "target", "outcome", "details", "correlation_id", "prev_hash")


async def chain_with_checkpoint(rt: Runtime, n: int = 6) -> Written:
    for i in range(n):
        await audit.append_alone(rt, actor=SYSTEM, action="test.step", target=f"t:{i}",
                                 details={"i": i, "note": "päß", "ratio": i / 3})
    return await checkpoint_now(rt)


async def rows(rt: Runtime) -> list[dict[str, Any]]:
    async with rt.read() as s:
        found = (await s.execute(select(AuditRecordRow).order_by(AuditRecordRow.seq))).scalars()
        return [{f: getattr(r, f) for f in (*FIELDS, "hash", "v")} for r in found]


async def rechain(rt: Runtime, records: list[dict[str, Any]]) -> None:
    """Replace the whole log with `records`, every hash and link recomputed and the head moved:
    what an attacker who knows the scheme (it is documented) does to hide an edit."""
    prev = "0" * 64
    for seq, rec in enumerate(records, start=1):
        rec.update(seq=seq, prev_hash=prev, v=CURRENT)
        rec["hash"] = prev = record_hash(**{f: rec[f] for f in FIELDS}, v=CURRENT)
    async with rt.write() as s:
        await s.execute(delete(AuditRecordRow))
        for rec in records:
            await s.execute(insert(AuditRecordRow).values(**rec))
        await s.execute(update(AuditHeadRow).where(AuditHeadRow.id == 1).values(seq=len(records), hash=prev))


async def sql(rt: Runtime, statement: str, **params: Any) -> None:
    async with rt.write() as s:
        await s.execute(text(statement), params)


def only_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
