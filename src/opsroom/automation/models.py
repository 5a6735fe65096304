from __future__ import annotations

from sqlalchemy import Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from opsroom.store.base import Base, now


class RuleRunRow(Base):
    __tablename__ = "rule_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule: Mapped[str] = mapped_column(String(64), index=True)
    check: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float, default=now)
    execution_id: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(32))
