"""What a platform POSTs to opsroom is handled on whichever server it reaches (docs/cluster.md,
"Webhook platforms"): a load balancer sends Teams activities, Slack, Mattermost and Teams button
clicks and Telegram's webhook updates to any server, not to the one holding the connection.

Two things make that safe:

- Once across servers: the platform retries a delivery it thinks failed (Teams after 15 s,
  Slack after 3 s, Telegram on any non-2xx), and the retry may reach another server. Each
  delivery id is claimed in the store (`chat_deliveries`, INSERT … ON CONFLICT DO NOTHING on
  (platform, delivery)) before it is handled; the server whose insert wins handles it, the
  others drop it. Claimed before handling: a server that dies between its claim and the command
  loses that delivery (at most once: an approval is never given twice). Without the store (it
  is away) the delivery is handled, deduplicated in this process only.
- Replies reach the platform through its holder: a room line is stored and the holder sends
  it (the relay; chat/handover.py after a takeover). A reply in a channel bound to no room (a
  direct message: `link CODE`, `whoami`) is not a room message, so it goes through the event
  log as a `ChatDirectReply`, which every server's relay publishes and the holder alone sends.
  One said while no server holds the platform (a takeover's ~3 s) is not sent.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import structlog
from sqlalchemy import CursorResult, delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from opsroom.chat.models import ChatDeliveryRow
from opsroom.events import Event
from opsroom.runtime import Runtime

log = structlog.get_logger(__name__)

DELIVERY_TTL_S = 3600.0  # platforms retry for minutes at most; Telegram drops an update after a day of 5xx
PRUNE_EVERY_S = 60.0  # expired claims are deleted at most this often per server
MAX_KEY = 128
SEEN_DELIVERIES = 10_000  # delivery ids this process remembers (no store round trip for those)


@dataclass(kw_only=True)
class ChatDirectReply(Event):
    """The bot's answer in a platform channel bound to no room (a direct message), made on a
    server that does not hold that platform's connection: the holder sends it."""

    type: ClassVar[str] = "chat.direct"
    platform: str
    channel: str
    text: str


def _key(delivery_id: str) -> str:
    # Platform ids are short; a longer one (a forged but signed oddity) still fits, hashed.
    if len(delivery_id) <= MAX_KEY:
        return delivery_id
    return "sha256:" + hashlib.sha256(delivery_id.encode()).hexdigest()


class Deliveries:
    """This server's side of the cluster-wide claim on delivery ids."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._pruned = 0.0
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()

    async def claim(self, platform: str, delivery_id: str) -> bool:
        """Whether this server is the first of the cluster to get this delivery (and so handles it)."""
        key = (platform, delivery_id)
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > SEEN_DELIVERIES:
            self._seen.popitem(last=False)
        now = time.time()
        prune = time.monotonic() - self._pruned > PRUNE_EVERY_S
        row = {"platform": platform[:64], "delivery": _key(delivery_id), "at": now}

        def body(s: Session) -> bool:
            dialect = s.get_bind().dialect.name
            stmt = (pg_insert(ChatDeliveryRow) if dialect == "postgresql" else sqlite_insert(ChatDeliveryRow))
            won = cast(CursorResult[Any], s.execute(stmt.values(**row).on_conflict_do_nothing()))
            if prune:
                s.execute(delete(ChatDeliveryRow).where(ChatDeliveryRow.at < now - DELIVERY_TTL_S))
            return won.rowcount == 1

        try:
            first = await self.rt.transact(body)
        except Exception as exc:
            # The store away: the command itself will fail too; at least this process answers once.
            log.warning("claiming a chat delivery in the store failed", platform=platform, error=type(exc).__name__)
            return True
        if prune:
            self._pruned = time.monotonic()
        return first
