from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from opsroom.store.base import Base, now


class ExecutionRow(Base):
    __tablename__ = "executions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    runbook: Mapped[str] = mapped_column(String(64), index=True)
    runbook_hash: Mapped[str] = mapped_column(String(64))
    # The catalog version (content hash) the run was requested under: which reviewed catalog
    # a past run belongs to, after reloads. None for runs older than the column.
    catalog_hash: Mapped[str | None] = mapped_column(String(64))
    # runbook + parameters: two runs with the same key never overlap.
    lock_key: Mapped[str] = mapped_column(String(64), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    target: Mapped[str] = mapped_column(String(64), default="local")
    environment: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), index=True)
    summary: Mapped[str] = mapped_column(String(255), default="")
    requested_by: Mapped[str] = mapped_column(String(128))
    requester_id: Mapped[int | None] = mapped_column(Integer)
    door: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str | None] = mapped_column(String(64))
    correlation_id: Mapped[str | None] = mapped_column(String(64))
    room: Mapped[str | None] = mapped_column(String(64))
    approval_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    output: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    # The server process that runs it: start-up finds 'running' rows of dead owners.
    owner: Mapped[str | None] = mapped_column(String(64))
    # Secret parameter values, sealed (AES-GCM); `params` holds only their masks.
    secret_params: Mapped[str | None] = mapped_column(Text)
    # The running command's process group, and that process's start time from /proc, so that
    # recovery after a crash kills the group only while it is still the one we started.
    pgid: Mapped[int | None] = mapped_column(Integer)
    pg_started: Mapped[str | None] = mapped_column(String(32))

    # At most one active execution per runbook+parameters, enforced by the database.
    __table_args__ = (
        Index("uq_executions_active_lock", "lock_key", unique=True,
              sqlite_where=text("status IN ('pending', 'awaiting_approval', 'running')"),
              postgresql_where=text("status IN ('pending', 'awaiting_approval', 'running')")),
    )
