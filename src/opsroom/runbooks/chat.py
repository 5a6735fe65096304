"""Chat commands for executions beyond `run` and `execution N`: `cancel 12`.

Parsing only; the service layer decides (chat/commands.py's rule).
"""

from __future__ import annotations

from opsroom.access.identity import Actor
from opsroom.runbooks import service
from opsroom.runtime import Runtime


async def cancel(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> str:
    from opsroom.chat.commands import parse_number  # chat/commands.py imports this module's COMMANDS

    row = await service.cancel_execution(rt, actor=actor, execution_id=parse_number(a["id"], "cancel", "execution"),
                                         room=room)
    if row.status == "cancelled":
        return ""  # the execution.finished event says "cancelled by NAME" to the room
    return f"execution #{row.id} is still {row.status.replace('_', ' ')}: its process is being stopped"


COMMANDS = [
    ("cancel {id}", "cancel an execution: stop its process (requester, approver or admin)", cancel, "change"),
]
