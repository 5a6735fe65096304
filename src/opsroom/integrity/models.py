"""File integrity tables: the signed baseline per site, and the changes not yet accepted."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from opsroom.store.base import Base, now


class IntegrityBaselineRow(Base):
    """One site's accepted state of every watched file. `entries` is the exact canonical JSON the
    signature covers (a re-serialised copy could differ by a byte and never verify again);
    `texts` holds small text files for diffs, each bound to the signed sha256 of its entry."""

    __tablename__ = "integrity_baselines"
    site: Mapped[str] = mapped_column(String(128), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer)
    entries: Mapped[str] = mapped_column(Text)
    texts: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[float] = mapped_column(Float, default=now)
    updated_by: Mapped[str] = mapped_column(String(128))


class IntegrityChangeRow(Base):
    """A change seen and not accepted yet: it quarantines the runbooks whose files it touches.
    One row per (site, path); a later different change of the same path updates it."""

    __tablename__ = "integrity_changes"
    __table_args__ = (UniqueConstraint("site", "path_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(String(128))
    path_key: Mapped[str] = mapped_column(String(64))  # sha256 of the path: paths can outgrow an index
    path: Mapped[str] = mapped_column(Text)
    kinds: Mapped[list[str]] = mapped_column(JSON)
    old: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    new: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    first_at: Mapped[float] = mapped_column(Float, default=now)
    last_at: Mapped[float] = mapped_column(Float, default=now)
    event_uid: Mapped[str | None] = mapped_column(String(36), nullable=True)
