"""The chat tables of the chat package's own (account links are access/'s)."""

from __future__ import annotations

from sqlalchemy import Float, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from opsroom.store.base import Base


class ChatDeliveryRow(Base):
    """A platform delivery (a Teams activity, a Slack click, a Telegram update) some server
    handled: its retry, landing on any server of the cluster, is not handled again. Kept
    DELIVERY_TTL_S (chat/inbound.py), far longer than any platform retries."""

    __tablename__ = "chat_deliveries"
    platform: Mapped[str] = mapped_column(String(64), primary_key=True)
    delivery: Mapped[str] = mapped_column(String(128), primary_key=True)
    at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_chat_deliveries_at", "at"),)
