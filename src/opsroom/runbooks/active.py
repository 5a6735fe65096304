"""The runs a room shows as going on, each with whether the viewer may cancel it.

What the web room's Cancel buttons are drawn from. Offering a button decides nothing:
cancel_execution checks again (and audits a refusal) whatever a page sends.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from opsroom.access.identity import Actor
from opsroom.domain.execution import ACTIVE
from opsroom.runbooks.models import ExecutionRow
from opsroom.runbooks.service import may_cancel
from opsroom.runtime import Runtime

SHOWN_MAX = 50  # a room with more runs going on than this shows the oldest; `executions` lists all

async def active_in_room(rt: Runtime, *, actor: Actor, room: str) -> list[dict[str, Any]]:
    """Running, pending and awaiting-approval runs announced in `room`, oldest first.

    Part of the room's view, which the socket's `room.join` record already covers: not audited
    again on every refresh. Someone who may not read executions gets an empty list.
    """
    if not actor.can("execution.read"):
        return []
    async with rt.read() as s:
        rows = list((await s.execute(
            select(ExecutionRow).where(ExecutionRow.room == room, ExecutionRow.status.in_(ACTIVE))
            .order_by(ExecutionRow.id).limit(SHOWN_MAX))).scalars())
    return [{"id": r.id, "summary": r.summary, "status": r.status, "requester": r.requested_by,
             "can_cancel": may_cancel(actor, r)} for r in rows]
