from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from opsroom.store.base import Base

# SQLite's rowid alias must be exactly INTEGER; PostgreSQL gets a 64-bit sequence.
_ID = BigInteger().with_variant(Integer(), "sqlite")


class EventRow(Base):
    """One event, written in the same transaction as the change it reports.

    `id` orders the log; `uid` is the event's stable id (UUIDv7) that every copy of it carries;
    `txid` is PostgreSQL's transaction id, so a reader never passes a row whose transaction,
    begun earlier, commits later (see eventlog/log.py).
    """

    __tablename__ = "event_log"
    # Readers go in (txid, id) order (migration 0009; on PostgreSQL txid defaults to the writer's).
    __table_args__ = (Index("ix_event_log_txid_id", "txid", "id"),)
    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(36), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float, index=True)
    origin: Mapped[str] = mapped_column(String(96))
    correlation_id: Mapped[str | None] = mapped_column(String(64), index=True)
    txid: Mapped[int | None] = mapped_column(BigInteger)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class ConsumerPositionRow(Base):
    """How far one consumer (rooms, rules, relays) has read the log; moved in the same
    transaction as the effect of the events it read, so a restart resumes exactly there."""

    __tablename__ = "consumer_positions"
    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)
    txid: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[float] = mapped_column(Float)
    holder: Mapped[str | None] = mapped_column(String(96))
