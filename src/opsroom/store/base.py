"""Declarative base shared by every domain's models.py."""

from __future__ import annotations

import time

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def now() -> float:
    """Times are stored as epoch seconds (float): same on SQLite and PostgreSQL, no tz surprises."""
    return time.time()


def import_models() -> None:
    """Import every models module so Base.metadata knows all tables (Alembic, tests)."""
    import opsroom.access.models
    import opsroom.alerts.models
    import opsroom.approvals.models
    import opsroom.audit.models
    import opsroom.automation.models
    import opsroom.chat.models
    import opsroom.checks.models
    import opsroom.cluster.models
    import opsroom.eventlog.models
    import opsroom.integrity.models
    import opsroom.outbox
    import opsroom.rooms.models
    import opsroom.runbooks.models
    import opsroom.workers.models  # noqa: F401
