from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from opsroom.store.base import Base


class CheckResultRow(Base):
    __tablename__ = "check_results"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    check: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(10))
    output: Mapped[str] = mapped_column(Text)
    latency_ms: Mapped[float] = mapped_column(Float)
    perfdata: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    __table_args__ = (Index("ix_check_results_check_at", "check", "at"),)


class CheckStateRow(Base):
    """The state machine's persisted status per check, so a restart keeps soft/hard and since."""

    __tablename__ = "check_states"
    check: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(10))
    state_type: Mapped[str] = mapped_column(String(4))
    attempt: Mapped[int] = mapped_column(Integer)
    since: Mapped[float] = mapped_column(Float)
    last_check: Mapped[float | None] = mapped_column(Float)
    last_output: Mapped[str] = mapped_column(Text, default="")
    last_latency_ms: Mapped[float | None] = mapped_column(Float)
    down: Mapped[bool] = mapped_column(Boolean, default=False)
    flapping: Mapped[bool] = mapped_column(Boolean, default=False)
    history: Mapped[list[str]] = mapped_column(JSON, default=list)
