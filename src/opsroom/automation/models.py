from __future__ import annotations

from sqlalchemy import Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from opsroom.store.base import Base, now


class RuleRunRow(Base):
    """What a rule did: `triggered` (counted against its budget) or `held` (and why, in RuleHeld)."""

    __tablename__ = "rule_runs"
    # The budget's question, asked in the transaction of every rule run: a rule's triggered runs
    # since a time. Without it, a rule that has been held ten thousand times scans all of them.
    __table_args__ = (Index("ix_rule_runs_budget", "rule", "outcome", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule: Mapped[str] = mapped_column(String(64), index=True)
    check: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float, default=now)
    execution_id: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(32))


class RuleBudgetRow(Base):
    """One row per rule: the lock that serialises a rule's runs across every server (PostgreSQL).

    The budget itself is counted from rule_runs under this row's lock; the columns say who
    claimed it last and when, by the store's clock (for an operator, not for the decision).
    """

    __tablename__ = "rule_budgets"
    rule: Mapped[str] = mapped_column(String(64), primary_key=True)
    claimed_at: Mapped[float] = mapped_column(Float)
    holder: Mapped[str] = mapped_column(String(96))  # the node id of the server that claimed it
