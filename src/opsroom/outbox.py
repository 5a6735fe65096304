"""The outbox table of versions before the event log (migration 0002), kept for compatibility.

Events that cross processes are rows of the durable event log now (eventlog/), written in the
transaction of their change; the server's `Relay` publishes other nodes' events on its bus. The
table stays (dropping it would be a contract migration): an older opsroom beside this one during
an upgrade may still write to it, and this version no longer reads it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from opsroom.eventlog.relay import Relay
from opsroom.store.base import Base, now

OutboxRelay = Relay  # the old name of the server's relay (rt.outbox)


class OutboxRow(Base):
    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float, default=now, index=True)
    origin: Mapped[str] = mapped_column(String(96))
    type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
