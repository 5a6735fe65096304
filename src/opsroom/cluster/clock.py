"""The cluster's one clock: the database's.

Heartbeats and lease expiries are compared across hosts; their wall clocks may disagree by
seconds, the store's clock is one. SQLite serves one host, whose clock it is anyway.
"""

from __future__ import annotations

from sqlalchemy import Float, cast, func, literal_column
from sqlalchemy.sql.elements import ColumnElement


def db_now(dialect: str) -> ColumnElement[float]:
    """Seconds since the epoch by the store's clock, as an SQL expression."""
    if dialect == "postgresql":
        # clock_timestamp, not now(): now() is frozen at the start of the transaction.
        return cast(func.extract("epoch", func.clock_timestamp()), Float)
    return literal_column("((julianday('now') - 2440587.5) * 86400.0)", Float)
