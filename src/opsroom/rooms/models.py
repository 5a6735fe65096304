from __future__ import annotations

from sqlalchemy import Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from opsroom.store.base import Base, now


class RoomMessageRow(Base):
    __tablename__ = "room_messages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    room: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[float] = mapped_column(Float, default=now)
    author: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(10))  # person | bot | notice
    text: Mapped[str] = mapped_column(Text)
    reply_to: Mapped[int | None] = mapped_column(Integer)
