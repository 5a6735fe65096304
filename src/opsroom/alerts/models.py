from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from opsroom.store.base import Base, now


class AlertRow(Base):
    """One occurrence of an alert: a sender's repeats of it update this row, never add one."""

    __tablename__ = "alerts"
    __table_args__ = (
        # (source, fingerprint, starts_at) is one occurrence: Alertmanager re-sends a group every
        # repeat_interval with all three unchanged.
        UniqueConstraint("source", "fingerprint", "starts_at", name="uq_alerts_occurrence"),
        Index("ix_alerts_status", "status"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(128))
    starts_at: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))  # firing | resolved
    name: Mapped[str] = mapped_column(String(255))
    severity: Mapped[str | None] = mapped_column(String(64))
    summary: Mapped[str] = mapped_column(String(2000), default="")
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    annotations: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    service: Mapped[str | None] = mapped_column(String(64))
    system: Mapped[str | None] = mapped_column(String(64))
    environment: Mapped[str | None] = mapped_column(String(64))
    url: Mapped[str | None] = mapped_column(String(1024))
    group_key: Mapped[str | None] = mapped_column(String(512))
    received_at: Mapped[float] = mapped_column(Float, default=now)
    last_seen_at: Mapped[float] = mapped_column(Float, default=now)
    repeats: Mapped[int] = mapped_column(Integer, default=0)
    ends_at: Mapped[float | None] = mapped_column(Float)
    acked_by: Mapped[str | None] = mapped_column(String(128))
    acked_at: Mapped[float | None] = mapped_column(Float)


class SilenceRow(Base):
    """A silence typed here: alerts it covers are kept quiet here, and senders that keep their own
    silences (Alertmanager) get one too; `remote` says which, so removing it here expires them."""

    __tablename__ = "alert_silences"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    service: Mapped[str | None] = mapped_column(String(64))
    system: Mapped[str | None] = mapped_column(String(64))
    matchers: Mapped[list[str]] = mapped_column(JSON, default=list)  # label matchers, when not a service
    reason: Mapped[str] = mapped_column(String(500))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[float] = mapped_column(Float, default=now)
    starts_at: Mapped[float] = mapped_column(Float)
    ends_at: Mapped[float] = mapped_column(Float, index=True)
    expired_at: Mapped[float | None] = mapped_column(Float)
    expired_by: Mapped[str | None] = mapped_column(String(128))
    # [{"source": name, "api_url": url, "id": the sender's silence id}]
    remote: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
