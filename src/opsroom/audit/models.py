from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Dialect, Float, Integer, SmallInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from opsroom.store.base import Base


class CanonicalJSON(TypeDecorator[dict[str, Any]]):
    """A JSON column whose stored text is the RFC 8785 form of the value (chain.details_text), so
    verify hashes the text the store gives back as it is, with no parse and re-encode per row."""

    impl = JSON
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Any:
        from opsroom.audit.chain import details_text

        return lambda value: None if value is None else details_text(value)


class AuditRecordRow(Base):
    __tablename__ = "audit_records"
    # seq is assigned by the chain, not by the database: gaps would be tampering.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[float] = mapped_column(Float, index=True)
    actor: Mapped[str] = mapped_column(String(128), index=True)
    door: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(255))
    outcome: Mapped[str] = mapped_column(String(32))
    details: Mapped[dict[str, Any]] = mapped_column(CanonicalJSON, default=dict)
    correlation_id: Mapped[str | None] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # Which hashed form `hash` is of (audit/chain.py): records written before 0014 are v1.
    v: Mapped[int] = mapped_column(SmallInteger, server_default="1")


class AuditHeadRow(Base):
    """One row: the chain's tip. Locked FOR UPDATE so concurrent writers queue."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(Text)
