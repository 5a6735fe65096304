"""The web room's runs going on and its Cancel button: the list frame and the cancel frame.

A Cancel button carries a token made from the session's CSRF secret and the execution id, like
the Approve/Deny buttons carry theirs: proof that this session's page offered it, so a script
riding the cookie cannot cancel a run by a guessed id. Who may cancel is the service's question
(runbooks.service.cancel_execution), asked again whatever a page sends.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import structlog

from opsroom.access.identity import Actor
from opsroom.audit import service as audit
from opsroom.errors import OpsroomError
from opsroom.runbooks import service as runbooks
from opsroom.runtime import Runtime
from opsroom.web.deps import MAX_ID

log = structlog.get_logger(__name__)
Push = Callable[[dict[str, Any]], None]
_cancelling: set[asyncio.Task[None]] = set()  # held until done: the loop keeps only weak references


def cancel_token(csrf: str, execution_id: int) -> str:
    msg = f"opsroom-cancel:{execution_id}".encode()
    return hmac.new(csrf.encode(), msg, hashlib.sha256).hexdigest()[:32]


def frame(items: list[dict[str, Any]], csrf: str) -> dict[str, Any]:
    """The `executions` frame of one session: active.active_in_room's items, a token on each it may cancel."""
    return {"type": "executions",
            "items": [{**v, "token": cancel_token(csrf, v["id"])} if v["can_cancel"] else v for v in items]}


async def cancel_frame(rt: Runtime, *, actor: Actor, csrf: str, room: str, frame: dict[str, Any],
                       push: Push) -> None:
    """`{"type": "cancel", "id": N, "token": ...}`: checked here, stopped in the background (a stop
    takes up to the grace period and the socket keeps reading). The room hears the outcome from
    the execution's own notice; a refusal goes to this socket alone."""
    execution_id = frame.get("id")
    if isinstance(execution_id, bool) or not isinstance(execution_id, int) or not 1 <= execution_id <= MAX_ID:
        push({"type": "error", "text": f"`id` must be an execution number from 1 to {MAX_ID}"})
        return
    token = frame.get("token")
    if not isinstance(token, str) or not hmac.compare_digest(token.encode(),
                                                             cancel_token(csrf, execution_id).encode()):
        reason = "wrong cancel token" if isinstance(token, str) and token else "missing cancel token"
        await audit.append_alone(rt, actor=actor, action="execution.cancel", target=f"execution:{execution_id}",
                                 outcome="refused", details={"reason": reason, "room": room})
        push({"type": "error", "text": f"{reason} for execution #{execution_id}: cancel with the room page's "
                                       "Cancel button (reload it), or with an API token"})
        return
    task = asyncio.get_running_loop().create_task(_cancel(rt, actor, room, execution_id, push))
    _cancelling.add(task)
    task.add_done_callback(_cancelling.discard)


async def _cancel(rt: Runtime, actor: Actor, room: str, execution_id: int, push: Push) -> None:
    try:
        await runbooks.cancel_execution(rt, actor=actor, execution_id=execution_id, room=room)
    except OpsroomError as exc:
        push({"type": "error", "text": str(exc)})
    except Exception:
        log.exception("cancel from the web room failed", execution_id=execution_id, user=actor.name)
        push({"type": "error", "text": "internal error; see the opsroom log"})
