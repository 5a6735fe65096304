from __future__ import annotations

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from opsroom.store.base import Base, now


class ApprovalRow(Base):
    __tablename__ = "approvals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    execution_id: Mapped[int] = mapped_column(Integer, index=True)
    status: Mapped[str] = mapped_column(String(10), index=True)
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    requester: Mapped[str] = mapped_column(String(128))
    requester_id: Mapped[int | None] = mapped_column(Integer)
    # sha256 of (runbook version, parameters, target): a decision covers exactly this.
    binding_hash: Mapped[str] = mapped_column(String(64))
    summary: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[float] = mapped_column(Float, default=now)
    expires_at: Mapped[float] = mapped_column(Float)
    decided_by: Mapped[str | None] = mapped_column(String(128))
    decided_at: Mapped[float | None] = mapped_column(Float)
    reason: Mapped[str | None] = mapped_column(Text)


class ApprovalVoteRow(Base):
    __tablename__ = "approval_votes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    approval_id: Mapped[int] = mapped_column(ForeignKey("approvals.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(Integer)
    user_name: Mapped[str] = mapped_column(String(128))
    decision: Mapped[str] = mapped_column(String(10))
    at: Mapped[float] = mapped_column(Float, default=now)
    __table_args__ = (UniqueConstraint("approval_id", "user_id"),)
