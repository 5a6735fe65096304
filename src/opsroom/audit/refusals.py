"""Refused requests at public endpoints (forged chat clicks, alerts with a wrong token), audited
without letting whoever can reach the endpoint grow the audit chain at will."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog

from opsroom.access.identity import SYSTEM
from opsroom.audit import service as audit
from opsroom.secrets.masking import mask

if TYPE_CHECKING:
    from opsroom.runtime import Runtime

log = structlog.get_logger(__name__)
AUDITED_PER_MINUTE = 20  # per key; more are counted into one record


class RefusalAudit:
    """At most AUDITED_PER_MINUTE refusals per key (a platform, an alert source) and minute are
    audited one by one; past that they are counted and the count is audited when the minute ends."""

    def __init__(self, rt: Runtime, *, action: str) -> None:
        self.rt = rt
        self.action = action
        self.windows: dict[str, list[float]] = {}  # key -> [window start, seen, counted only]

    async def record(self, *, key: str, target: str, what: str, detail: str) -> None:
        now = time.monotonic()
        window = self.windows.setdefault(key, [now, 0, 0])
        if now - window[0] >= 60:
            if window[2]:
                await audit.append_alone(self.rt, actor=SYSTEM, action=self.action, target=target,
                                         outcome="denied", details={"what": "more refusals", "count": window[2]})
            window[:] = [now, 0, 0]
        window[1] += 1
        if window[1] > AUDITED_PER_MINUTE:
            window[2] += 1
            return
        log.warning("request refused", action=self.action, target=target, what=what, detail=mask(detail)[:200])
        await audit.append_alone(self.rt, actor=SYSTEM, action=self.action, target=target, outcome="denied",
                                 details={"what": what, "detail": mask(detail)[:500]})
